"""The simulator's notion of now: the wall clock, or a manual one for deterministic tests.

A :class:`ManualClock` is shared by the simulator and the client under test: the client's
``sleep`` advances it, so rate-limit windows, token lifetimes and waits play out in full without
any real waiting, and the waits can be asserted exactly.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...


class WallClock:
    def time(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; ``sleep`` moves it and records the wait."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def time(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)
