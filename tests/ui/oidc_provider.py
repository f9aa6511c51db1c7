"""A small OpenID Connect provider for tests, over real HTTP on 127.0.0.1 (a thread of the test
process): discovery, an authorization endpoint that signs the configured person in at once
(or denies), a token endpoint that checks the client secret, the redirect URI and the PKCE
verifier, and a JWKS endpoint. ID tokens are RS256, signed with ``cryptography``.

Knobs for misbehaving: ``claims`` overrides ID token claims, ``header`` overrides the JWS
header, ``sign_with`` signs with a key that is not published, ``deny`` answers the
authorization request with ``error=access_denied``; ``rotate()`` switches to a new key id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HOST = "127.0.0.1"
PATH = "/oauth2/default"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes(3, "big"))}


def sign_jws(key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signed = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
    signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{b64url(signature)}"


@dataclass
class Person:
    sub: str
    username: str
    name: str
    groups: list[str] = field(default_factory=list)


class OidcProvider:
    def __init__(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.person = Person("00uOidcPerson00001", "pat.oidc@example.com", "Pat Oidc")
        self.key = new_key()
        self.kid = "key-1"
        self.claims: dict[str, Any] = {}
        self.header: dict[str, Any] = {}
        self.sign_with: rsa.RSAPrivateKey | None = None
        self.deny = False
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.jwks_requests = 0
        self._codes: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.base + PATH

    def __enter__(self) -> OidcProvider:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def rotate(self) -> None:
        with self._lock:
            self.key, self.kid = new_key(), f"key-{secrets.token_hex(4)}"

    # -- what it answers -------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/v1/authorize",
                "token_endpoint": f"{self.issuer}/v1/token", "jwks_uri": f"{self.issuer}/v1/keys",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"]}

    def _authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.authorize_requests.append(query)
        if (query.get("client_id") != self.client_id
                or query.get("redirect_uri") != self.redirect_uri
                or query.get("response_type") != "code"
                or query.get("code_challenge_method") != "S256"):
            return 400, {}, b"bad authorization request"
        if self.deny:
            target = f"{self.redirect_uri}?" + urlencode(
                {"error": "access_denied", "state": query.get("state", "")})
            return 302, {"Location": target}, b""
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = {"nonce": query.get("nonce", ""),
                                 "challenge": query.get("code_challenge", "")}
        target = f"{self.redirect_uri}?" + urlencode({"code": code, "state": query["state"]})
        return 302, {"Location": target}, b""

    def _token(self, form: dict[str, str], authorization: str | None) -> tuple[int, Any]:
        self.token_requests.append(form)
        expected = "Basic " + base64.b64encode(
            f"{self.client_id}:{self.client_secret}".encode()).decode()
        if not authorization or not hmac.compare_digest(authorization, expected):
            return 401, {"error": "invalid_client"}
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        if (grant is None or form.get("grant_type") != "authorization_code"
                or form.get("redirect_uri") != self.redirect_uri
                or b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]):
            return 400, {"error": "invalid_grant"}
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "sub": self.person.sub,
                  "preferred_username": self.person.username, "name": self.person.name,
                  "groups": self.person.groups, "iat": now, "exp": now + 3600,
                  "nonce": grant["nonce"], **self.claims}
        header = {"alg": "RS256", "kid": self.kid, "typ": "JWT", **self.header}
        token = sign_jws(self.sign_with or self.key, header, claims)
        return 200, {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                     "expires_in": 3600, "id_token": token, "scope": "openid"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, value: Any) -> None:
                self._send(status, orjson.dumps(value), {"Content-Type": "application/json"})

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == f"{PATH}/.well-known/openid-configuration":
                    self._json(200, provider._metadata())
                elif parts.path == f"{PATH}/v1/keys":
                    provider.jwks_requests += 1
                    self._json(200, {"keys": [jwk(provider.key, provider.kid)]})
                elif parts.path == f"{PATH}/v1/authorize":
                    status, headers, body = provider._authorize(query)
                    self._send(status, body, headers)
                else:
                    self._send(404, b"not found", {})

            def do_POST(self) -> None:
                if urlsplit(self.path).path != f"{PATH}/v1/token":
                    self._send(404, b"not found", {})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                status, body = provider._token(form, self.headers.get("Authorization"))
                self._json(status, body)

        return Handler
