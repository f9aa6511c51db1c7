"""Validating an OIDC ID token: an RS256 JWS, checked against the provider's JWKS, and its
claims (issuer, audience, expiry, nonce).

RS256 is RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 3.3): verifying it is one modular
exponentiation and a comparison with the expected encoding, written out here so the service
needs no cryptography package. No other algorithm is accepted (no ``none``, no HMAC).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

LEEWAY_SECONDS = 120
# DER prefix of a DigestInfo holding a SHA-256 digest (RFC 8017 9.2, note 1)
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


class InvalidToken(Exception):
    """Why an ID token was refused (safe to log: names no token content)."""


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise InvalidToken("not base64url") from exc


def split_token(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signed part, signature) of a compact JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a compact JWS (three dot-separated parts)")
    try:
        header = orjson.loads(b64url_decode(parts[0]))
        claims = orjson.loads(b64url_decode(parts[1]))
    except orjson.JSONDecodeError as exc:
        raise InvalidToken("header or claims are not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidToken("header and claims must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), b64url_decode(parts[2])


def rsa_key(jwk: Mapping[str, Any]) -> tuple[int, int]:
    """(n, e) of an RSA JWK, refusing keys under 2048 bits."""
    if jwk.get("kty") != "RSA":
        raise InvalidToken("the signing key is not an RSA key")
    n = int.from_bytes(b64url_decode(str(jwk.get("n", ""))), "big")
    e = int.from_bytes(b64url_decode(str(jwk.get("e", ""))), "big")
    if n.bit_length() < 2048 or e < 3:
        raise InvalidToken("the signing key is too weak")
    return n, e


def rs256_valid(n: int, e: int, signed: bytes, signature: bytes) -> bool:
    size = (n.bit_length() + 7) // 8
    if len(signature) != size:
        return False
    value = int.from_bytes(signature, "big")
    if value >= n:
        return False
    encoded = pow(value, e, n).to_bytes(size, "big")
    digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(signed).digest()
    expected = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    return hmac.compare_digest(encoded, expected)


def verify_id_token(
    token: str, *, keys: Sequence[Mapping[str, Any]], issuer: str, client_id: str,
    nonce: str, now: float,
) -> dict[str, Any]:
    """The claims of a valid token; InvalidToken naming the first problem otherwise."""
    header, claims, signed, signature = split_token(token)
    if header.get("alg") != "RS256":
        raise InvalidToken(f"algorithm {header.get('alg')!r} is not accepted (RS256 only)")
    kid = header.get("kid")
    candidates = [k for k in keys if kid is None or k.get("kid") == kid]
    candidates = [k for k in candidates if k.get("use", "sig") == "sig"]
    if not candidates:
        raise InvalidToken("no signing key of the provider matches the token's key id")
    if not any(rs256_valid(*rsa_key(k), signed, signature) for k in candidates):
        raise InvalidToken("the signature is not valid")
    check_claims(claims, issuer=issuer, client_id=client_id, nonce=nonce, now=now)
    return claims


def check_claims(claims: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str,
                 now: float) -> None:
    if claims.get("iss") != issuer:
        raise InvalidToken("the token was issued by another issuer")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise InvalidToken("the token is for another client")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise InvalidToken("the token has several audiences and another authorized party")
    expires, issued = claims.get("exp"), claims.get("iat")
    if not isinstance(expires, int | float) or expires + LEEWAY_SECONDS < now:
        raise InvalidToken("the token has expired")
    if not isinstance(issued, int | float) or issued - LEEWAY_SECONDS > now:
        raise InvalidToken("the token was issued in the future")
    if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(
        str(claims["nonce"]).encode(), nonce.encode()
    ):
        raise InvalidToken("the token's nonce does not match this sign-in")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidToken("the token names no subject")
