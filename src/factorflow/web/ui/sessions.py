"""Signed cookies: the session, the sign-in form's token, the OIDC round trip's state.

A value is ``base64url(JSON) "." base64url(HMAC-SHA256)``, keyed with the session secret and
bound to a purpose (a state cookie cannot be replayed as a session) and to an expiry. Sessions
are not stored server-side: signing out clears the cookie, and changing the session secret
ends every session at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

VIEWER = "viewer"
OPERATOR = "operator"  # may also retry and discard dead letters


@dataclass(frozen=True, slots=True)
class Session:
    user: str  # recorded in the audit log: the local admin's name, or the OIDC login/email
    name: str  # shown in the page header
    role: str
    method: str  # "local" or "oidc"
    csrf: str  # the token every state-changing form must send back
    expires_at: int

    @property
    def can_operate(self) -> bool:
        return self.role == OPERATOR


class Signer:
    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must have at least 16 bytes")
        self._key = hashlib.sha256(b"factorflow-ui-cookie:" + secret).digest()
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    def sign(self, purpose: str, data: dict[str, Any], max_age: int) -> str:
        body = orjson.dumps({"p": purpose, "x": self.now() + max_age, "d": data})
        text = _b64(body)
        return f"{text}.{_b64(self._mac(text))}"

    def unsign(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        """The data, or None if the value is missing, altered, expired or for another use."""
        body = self._verified(purpose, value)
        return body["d"] if body is not None else None

    def _verified(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        if not value or value.count(".") != 1 or len(value) > 8192:
            return None
        text, mac = value.split(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(text)):
                return None
            body = orjson.loads(_unb64(text))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(body, dict) or body.get("p") != purpose:
            return None
        expires = body.get("x")
        if not isinstance(expires, int) or expires <= self.now():
            return None
        return body if isinstance(body.get("d"), dict) else None

    def _mac(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode(), hashlib.sha256).digest()

    # -- sessions --------------------------------------------------------------------------

    def new_session(
        self, *, user: str, name: str, role: str, method: str, max_age: int
    ) -> tuple[Session, str]:
        session = Session(user, name, role, method, secrets.token_urlsafe(32),
                          self.now() + max_age)
        value = self.sign("session", {"u": user, "n": name, "r": role, "m": method,
                                      "c": session.csrf}, max_age)
        return session, value

    def session(self, value: str | None) -> Session | None:
        body = self._verified("session", value)
        if body is None:
            return None
        data = body["d"]
        user, name, role, method, csrf = (data.get(k) for k in ("u", "n", "r", "m", "c"))
        if role not in (VIEWER, OPERATOR) or not all(
            isinstance(v, str) and v for v in (user, name, method, csrf)
        ):
            return None
        return Session(str(user), str(name), str(role), str(method), str(csrf), body["x"])


def tokens_match(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
