"""The local admin's password: PBKDF2-HMAC-SHA256 hashes.

Make a hash for ``ui.admin_password_hash`` with ``python -m factorflow.web.ui.passwords``
(it asks for the password twice and prints the hash).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import secrets
import sys

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
MIN_ITERATIONS = 10_000


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}${iterations}${_b64(salt)}${_b64(digest)}"


def check_hash_format(encoded: str) -> None:
    """Raise ValueError saying what is wrong with a stored hash."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != ALGORITHM:
        raise ValueError(f"expected {ALGORITHM}$<iterations>$<salt>$<hash>")
    if not parts[1].isdigit() or int(parts[1]) < MIN_ITERATIONS:
        raise ValueError(f"iterations must be a number of at least {MIN_ITERATIONS}")
    try:
        _unb64(parts[2])
        if len(_unb64(parts[3])) != 32:
            raise ValueError("the hash part must be 32 bytes")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"salt and hash must be base64: {exc}") from None


def verify_password(password: str, encoded: str) -> bool:
    _, iterations, salt, digest = encoded.split("$")
    computed = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    return hmac.compare_digest(computed, _unb64(digest))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def main() -> int:
    first = getpass.getpass("password: ")
    if len(first) < 12:
        print("use at least 12 characters", file=sys.stderr)
        return 1
    if getpass.getpass("again: ") != first:
        print("the two entries differ", file=sys.stderr)
        return 1
    print(hash_password(first))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
