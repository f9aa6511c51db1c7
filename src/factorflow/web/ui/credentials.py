"""The dashboard's secrets: configured values, files, or values generated once into the data
directory (owner-only), like the hook secret."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from factorflow.errors import ConfigError
from factorflow.secrets_source import keep_generated, read_secret
from factorflow.settings import Settings
from factorflow.web.ui.passwords import check_hash_format
from factorflow.web.ui.signin import LocalAdmin

log = logging.getLogger(__name__)

SESSION_SECRET_FILE = "ui-session-secret"  # noqa: S105 (a file name, not a secret)
ADMIN_PASSWORD_FILE = "ui-admin-password"  # noqa: S105 (a file name, not a secret)


@dataclass(frozen=True)
class UiCredentials:
    session_secret: bytes
    admin: LocalAdmin | None  # None: local sign-in is off
    generated_password: Path | None  # where a generated admin password is kept
    oidc_client_secret: str | None

    def __repr__(self) -> str:  # never show the values
        return (f"UiCredentials(admin={self.admin!r}, "
                f"generated_password={self.generated_password})")


def oidc_configured(settings: Settings) -> bool:
    oidc = settings.ui.oidc
    return bool(oidc.issuer and oidc.client_id)


def resolve_ui_credentials(settings: Settings, *, generate: bool = True) -> UiCredentials:
    """Raise ConfigError naming the setting if something configured cannot be used.

    The local admin signs in with ``ui.admin_password``/``_file``/``_hash``; with none of them
    and no OIDC provider, a password is generated into ``<data_dir>/ui-admin-password``. With an
    OIDC provider and no configured password, local sign-in is off. Without ``generate``
    nothing is written: a value still to be generated is a random stand-in.
    """
    ui = settings.ui
    secret = read_secret(ui.session_secret, ui.session_secret_file, "ui.session_secret")
    if secret is None:
        secret = _generated(settings.data_dir / SESSION_SECRET_FILE, "ui.session_secret",
                            generate)
    elif len(secret.encode()) < 16:
        raise ConfigError("ui.session_secret must be at least 16 characters")
    password = read_secret(ui.admin_password, ui.admin_password_file, "ui.admin_password")
    hashed = ui.admin_password_hash.get_secret_value().strip() if ui.admin_password_hash else None
    if password is not None and hashed:
        raise ConfigError("ui.admin_password and ui.admin_password_hash are both set; set one")
    if hashed:
        try:
            check_hash_format(hashed)
        except ValueError as exc:
            raise ConfigError(f"ui.admin_password_hash: {exc}") from None
    generated = None
    if password is None and not hashed and not oidc_configured(settings):
        generated = settings.data_dir / ADMIN_PASSWORD_FILE
        password = _generated(generated, "ui.admin_password", generate)
    admin = None
    if password is not None or hashed:
        admin = LocalAdmin(ui.admin_username, password=password, password_hash=hashed or None)
    client_secret = None
    if oidc_configured(settings):
        oidc = settings.ui.oidc
        client_secret = read_secret(oidc.client_secret, oidc.client_secret_file,
                                    "ui.oidc.client_secret")
        issuer = oidc.issuer or ""
        if not issuer.startswith("https://") and not (
            oidc.allow_http_issuer and _loopback_http(issuer)
        ):
            raise ConfigError("ui.oidc.issuer must be an https:// URL (an http:// issuer on a "
                              "loopback address needs ui.oidc.allow_http_issuer)")
    return UiCredentials(secret.encode(), admin, generated, client_secret)


def _loopback_http(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def _generated(path: Path, key: str, generate: bool) -> str:
    if not path.exists() and not generate:
        return secrets.token_urlsafe(24)
    text, created = keep_generated(path, secrets.token_urlsafe(24))
    if created:
        log.warning("ui.secret_generated", extra={"fields": {
            "setting": key, "path": str(path), "hint": "readable by its owner only",
        }})
    if not text:
        raise ConfigError(f"{path} is empty: delete it to generate a new {key}")
    return text


def describe_ui(settings: Settings) -> list[str]:
    """What ``factorflow config check`` can say about the dashboard; raises ConfigError as
    ``serve`` would, and writes nothing."""
    ui = settings.ui
    if not ui.enabled:
        return ["ui: off (ui.enabled = false)"]
    found = resolve_ui_credentials(settings, generate=False)
    if found.admin is None:
        local = "local sign-in off"
    elif found.generated_password is not None:
        state = "kept in" if found.generated_password.exists() else "will be generated into"
        local = f"local admin {ui.admin_username!r} (password {state} {found.generated_password})"
    else:
        local = f"local admin {ui.admin_username!r} (password configured)"
    oidc = (f"OIDC {ui.oidc.issuer} client {ui.oidc.client_id}" if oidc_configured(settings)
            else "OIDC off")
    return [f"ui: /ui, {local}, {oidc}, {len(settings.campaigns)} campaign(s)"]
