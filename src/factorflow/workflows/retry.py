"""Retry policy per action kind: exponential backoff with deterministic jitter.

The jitter is derived from the idempotency key and the attempt number, not from a random
generator, because a durable workflow must compute the same delay when it is replayed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_seconds: float = 2.0
    max_seconds: float = 600.0
    multiplier: float = 2.0

    def delay(self, attempt: int, key: str, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_seconds, self.initial_seconds * self.multiplier ** (attempt - 1))
        digest = hashlib.sha256(f"{key}:{attempt}".encode()).digest()
        jitter = 0.5 + int.from_bytes(digest[:4], "big") / 2**32  # [0.5, 1.5)
        delay = base * jitter
        if retry_after is not None:
            # The target said when: never earlier than that.
            delay = max(delay, retry_after)
        return round(delay, 3)


class RetryPolicies:
    def __init__(self, by_kind: Mapping[str, RetryPolicy], default: RetryPolicy) -> None:
        self._by_kind = dict(by_kind)
        self._default = default

    def for_kind(self, kind: str) -> RetryPolicy:
        return self._by_kind.get(kind, self._default)
