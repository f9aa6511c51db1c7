"""Structured logs: JSON lines by default, readable text for a terminal.

Call sites log a stable event name as the message and put the details in
``extra={"fields": {...}}``; nothing here ever formats a secret, because no call site passes one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Fields that name a person; with hashing on, their values are replaced by a keyed hash, so
# lines about one user can still be correlated without the log revealing who it is.
USER_FIELDS = frozenset({"user", "user_id", "user_login", "actor", "actor_id", "actor_login"})


class UserHasher:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, value: Any) -> str:
        digest = hmac.new(self._key, str(value).encode(), hashlib.sha256).hexdigest()
        return f"u-{digest[:16]}"


def _fields(record: logging.LogRecord, hasher: UserHasher | None) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if not isinstance(fields, dict):
        return {}
    if hasher is None:
        return fields
    return {
        key: hasher(value) if key in USER_FIELDS and value is not None else value
        for key, value in fields.items()
    }


class JsonFormatter(logging.Formatter):
    def __init__(self, hasher: UserHasher | None = None) -> None:
        super().__init__()
        self._hasher = hasher

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        entry.update(_fields(record, self._hasher))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, hasher: UserHasher | None = None) -> None:
        super().__init__()
        self._hasher = hasher

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self._hasher)
        details = ""
        if fields:
            details = " " + " ".join(f"{key}={value}" for key, value in fields.items())
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}{details}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    fmt: str = "json", level: str = "INFO", *, user_hash_key: bytes | None = None
) -> None:
    """Log to stderr; with ``user_hash_key``, user identifiers are logged as keyed hashes."""
    hasher = UserHasher(user_hash_key) if user_hash_key else None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(hasher) if fmt == "json" else TextFormatter(hasher))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own access log would print every request; its errors still come through.
    logging.getLogger("uvicorn.access").disabled = True
