"""Who may sign in: the local admin (a name and a password) and, through an
:class:`IdentityProvider`, people of an OIDC provider such as Okta."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from factorflow.web.ui.passwords import verify_password
from factorflow.web.ui.sessions import OPERATOR, VIEWER


class SignInFailed(Exception):
    """The provider did not sign the person in; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A person an identity provider vouched for."""

    subject: str
    username: str  # login or email: recorded in the audit log
    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """What the browser carries to the provider and back (kept in a signed cookie)."""

    url: str  # where to send the browser
    state: str
    nonce: str
    code_verifier: str


class IdentityProvider(Protocol):
    """Sign-in through an external provider (the authorization code flow)."""

    label: str  # "Okta": shown on the sign-in button

    def start(self, redirect_uri: str) -> AuthorizationRequest:
        """A fresh authorization request (state, nonce and PKCE verifier included)."""
        ...

    def finish(self, code: str, redirect_uri: str, request: AuthorizationRequest) -> Identity:
        """Exchange the code and validate the ID token; raise SignInFailed if anything is
        wrong."""
        ...


def role_for(groups: Sequence[str], viewer_groups: Sequence[str],
             operator_groups: Sequence[str]) -> str | None:
    """The role a provider's user gets: operator if in an operator group, viewer if in a
    viewer group (or if no viewer groups are configured), else None (not allowed in)."""
    mine = {g.casefold() for g in groups}
    if any(g.casefold() in mine for g in operator_groups):
        return OPERATOR
    if not viewer_groups or any(g.casefold() in mine for g in viewer_groups):
        return VIEWER
    return None


class LocalAdmin:
    """One local operator, for the embedded default and as a break-glass account."""

    def __init__(self, username: str, *, password: str | None = None,
                 password_hash: str | None = None) -> None:
        if (password is None) == (password_hash is None):
            raise ValueError("give a password or a password hash")
        self.username = username
        self._password = password
        self._hash = password_hash
        self._key = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"LocalAdmin(username={self.username!r}, password=<hidden>)"

    def check(self, username: str, password: str) -> bool:
        """Constant effort whether the name, the password or both are wrong."""
        name_ok = hmac.compare_digest(self._digest(username), self._digest(self.username))
        if self._hash is not None:
            password_ok = verify_password(password, self._hash)
        else:
            assert self._password is not None
            password_ok = hmac.compare_digest(self._digest(password),
                                              self._digest(self._password))
        return name_ok and password_ok

    def _digest(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode(), hashlib.sha256).digest()


class SignInThrottle:
    """After ``failures`` failed sign-ins from one address within ``window`` seconds, that
    address waits ``lockout`` seconds before it may try again."""

    def __init__(self, failures: int = 5, window: float = 300.0, lockout: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.window, self.lockout = failures, window, lockout
        self._clock = clock
        self._seen: dict[str, list[float]] = {}
        self._locked: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, address: str) -> float:
        """How long ``address`` must wait before trying again (0: it may try now)."""
        with self._lock:
            until = self._locked.get(address, 0.0)
            return max(until - self._clock(), 0.0)

    def failed(self, address: str) -> None:
        with self._lock:
            now = self._clock()
            recent = [t for t in self._seen.get(address, []) if now - t < self.window]
            recent.append(now)
            if len(recent) >= self.failures:
                self._locked[address] = now + self.lockout
                recent = []
            self._seen[address] = recent
            if len(self._seen) > 10_000:  # forget the oldest addresses
                for old in list(self._seen)[:5_000]:
                    del self._seen[old]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._seen.pop(address, None)
            self._locked.pop(address, None)
