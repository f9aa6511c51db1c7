"""Resolving the hook credentials: configured values, files, or a generated secret."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from factorflow.errors import ConfigError
from factorflow.settings import Org, Settings

log = logging.getLogger(__name__)

GENERATED_SECRET_FILE = "hook-secret"  # noqa: S105 (a file name, not a secret)


@dataclass(frozen=True)
class HookCredentials:
    header: str
    accepted: tuple[bytes, ...]  # current first, then the previous one during a rotation
    generated_at: Path | None  # where a generated secret was kept, if it was generated

    def __repr__(self) -> str:  # never show the values
        return f"HookCredentials(header={self.header!r}, accepted=<{len(self.accepted)} hidden>)"


def resolve_credentials(
    settings: Settings, *, generate: bool = True, org: Org | None = None
) -> HookCredentials:
    """The accepted header values of ``org``'s hook (default: the first org). Without a
    configured secret, one is generated once and kept in the data directory, readable by its
    owner only: deliveries are never unauthenticated."""
    org = org or settings.org_list()[0]
    hook = org.hook
    current = read_secret(hook.secret, hook.secret_file, "hook.secret")
    previous = read_secret(hook.previous_secret, hook.previous_secret_file, "hook.previous_secret")
    if current is None and previous is not None:
        raise ConfigError("hook.previous_secret is set but hook.secret is not")
    generated_at: Path | None = None
    if current is None:
        path = settings.data_dir / org.secret_file_name
        if not path.exists() and not generate:
            raise ConfigError("no hook secret is configured and none was generated yet")
        current = _generated_secret(path)
        generated_at = path
    accepted = tuple(v.encode() for v in (current, previous) if v is not None)
    return HookCredentials(header=hook.auth_header, accepted=accepted, generated_at=generated_at)


def read_secret(value: SecretStr | None, path: Path | None, key: str) -> str | None:
    """A secret given directly or as a file named by ``<key>_file``: never both, never empty;
    errors name the key, never the value."""
    if value is not None and path is not None:
        raise ConfigError(f"{key} and {key}_file are both set; set one of them")
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file {path}: cannot read: {exc.strerror}") from None
        if not text:
            raise ConfigError(f"{key}_file {path} is empty")
        return text
    if value is not None:
        text = value.get_secret_value()
        if not text.strip():
            raise ConfigError(f"{key} is empty")
        return text
    return None


def _generated_secret(path: Path) -> str:
    value, created = keep_generated(path, secrets.token_urlsafe(32))
    if created:
        log.warning(
            "hook.secret_generated",
            extra={"fields": {"path": str(path), "hint": "configure this value in Okta"}},
        )
    if not value:  # an empty secret would accept an empty credential
        raise ConfigError(f"{path} is empty: delete it to generate a new hook secret")
    return value


def keep_generated(path: Path, value: str) -> tuple[str, bool]:
    """The secret kept in ``path`` (owner-only), and whether this call created the file with
    ``value``: if the file exists, or another process creates it first, what it holds.

    The file appears whole: the value is written to a private file next to it and linked into
    place, which fails if ``path`` exists. Creating ``path`` itself and then writing it let a
    process starting at the same moment (two receivers on one data directory) read it empty,
    and take an empty secret.
    """
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            return path.read_text(encoding="utf-8").strip(), False
        return value, True
    finally:
        draft.unlink(missing_ok=True)


USER_HASH_KEY_FILE = "log-user-hash-key"


def user_hash_key(settings: Settings) -> bytes | None:
    """The key for hashing user identifiers in logs, when ``log.hash_user_ids`` is on: kept in
    the data directory (owner-only) so every process sharing it hashes a user the same way."""
    if not settings.log.hash_user_ids:
        return None
    path = settings.data_dir / USER_HASH_KEY_FILE
    if not path.exists():
        return keep_generated(path, secrets.token_hex(32))[0].encode()
    return path.read_bytes().strip()
