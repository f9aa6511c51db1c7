"""Authentication to Okta's management API: an SSWS API token, or an OAuth 2.0 service app.

The service app uses the client-credentials grant against the org authorization server
(``POST {org}/oauth2/v1/token``) with ``private_key_jwt``, the only client authentication Okta
accepts for Okta-scoped tokens. The client assertion is a JWT signed with the app's private key:
``iss`` = ``sub`` = the client id, ``aud`` = the token URL, a short ``exp`` (Okta allows at most
one hour), a fresh ``jti``, and the key id in the header when one is configured.

Access tokens live one hour; :class:`AccessTokenCache` keeps one until a margin before it runs
out, and drops it when Okta refuses it (401 ``invalid_token``) so the next request fetches another.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from factorflow.errors import ConfigError

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300
TOKEN_REFRESH_MARGIN_SECONDS = 300.0

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: PrivateKey
    algorithm: str  # RS256, ES256, ES384 or ES512
    key_id: str | None


def load_signing_key(
    path: Path, *, key_id: str | None = None, passphrase: bytes | None = None
) -> SigningKey:
    """The service app's private key from a PEM file (PKCS#8 or traditional) or a JWK (JSON, as
    the Okta Admin Console offers it for download; its ``kid`` is used unless ``key_id`` is set).
    RSA keys sign with RS256, EC keys with ES256/384/512 after their curve."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"okta private key {path}: cannot read: {exc.strerror}") from None
    if data.lstrip().startswith(b"{"):
        key, jwk_kid = _load_jwk(path, data)
        key_id = key_id or jwk_kid
    else:
        try:
            loaded = serialization.load_pem_private_key(data, password=passphrase)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"okta private key {path}: not a usable PEM private key ({exc})"
            ) from None
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigError(f"okta private key {path}: must be an RSA or EC key")
        key = loaded
    return SigningKey(key, _algorithm(key, path), key_id)


def _load_jwk(path: Path, data: bytes) -> tuple[PrivateKey, str | None]:
    try:
        document = json.loads(data)
        jwk = jwt.PyJWK(document)
    except (ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"okta private key {path}: not a usable JWK ({exc})") from None
    key = jwk.key
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"okta private key {path}: the JWK must hold an RSA or EC private key")
    kid = document.get("kid") if isinstance(document, dict) else None
    return key, kid if isinstance(kid, str) and kid else None


def _algorithm(key: PrivateKey, path: Path) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(f"okta private key {path}: RSA keys must have at least 2048 bits")
        return "RS256"
    algorithm = _CURVE_ALGORITHMS.get(key.curve.name)
    if algorithm is None:
        raise ConfigError(
            f"okta private key {path}: curve {key.curve.name} is not accepted by Okta "
            "(use P-256, P-384 or P-521)"
        )
    return algorithm


def client_assertion(
    signing: SigningKey, *, client_id: str, token_url: str, now: float,
    lifetime: int = ASSERTION_LIFETIME_SECONDS,
) -> str:
    """A signed ``private_key_jwt`` client assertion for one token request."""
    issued = int(now)
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": uuid.uuid4().hex,
    }
    headers = {"kid": signing.key_id} if signing.key_id else None
    return jwt.encode(claims, signing.key, algorithm=signing.algorithm, headers=headers)


class AccessTokenCache:
    """One access token for all threads, refreshed a margin before it expires."""

    def __init__(self, margin_seconds: float = TOKEN_REFRESH_MARGIN_SECONDS) -> None:
        self._margin = margin_seconds
        self._token: str | None = None
        self._refresh_at = 0.0
        # Held while a token is fetched, so that one thread fetches and the others wait for it.
        self.fetching = threading.Lock()

    def current(self, now: float) -> str | None:
        token = self._token
        if token is None or now >= self._refresh_at:
            return None
        return token

    def store(self, token: str, expires_in: float, now: float) -> None:
        # Refresh a margin before the end; for a short-lived token, halfway through.
        self._refresh_at = now + max(expires_in - self._margin, expires_in / 2)
        self._token = token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (refused by Okta) unless another thread already replaced it."""
        if self._token == token:
            self._token = None
