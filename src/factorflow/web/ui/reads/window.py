"""Time windows for figures, and a small cache so a busy page does not recompute them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from factorflow.okta.payloads import format_utc

WINDOW_DAYS = (1, 7, 30, 90, 365)
DEFAULT_DAYS = 30
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Window:
    """``[since, until)`` in the store's timestamp form (fixed-width UTC text)."""

    days: int
    since: str
    until: str

    @classmethod
    def last(cls, days: int, now: datetime | None = None) -> Window:
        end = (now or datetime.now(UTC)).astimezone(UTC)
        start = datetime.combine(end.date() - timedelta(days=days - 1), datetime.min.time(), UTC)
        return cls(days, format_utc(start), format_utc(end + timedelta(microseconds=1)))

    def day_labels(self) -> list[str]:
        """Every calendar day (UTC) the window touches, oldest first."""
        first = date.fromisoformat(self.since[:10])
        last = date.fromisoformat(self.until[:10])
        return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def window_days(value: str | None) -> int:
    """A requested window length, or the default if it is not one of WINDOW_DAYS."""
    try:
        days = int(value) if value else DEFAULT_DAYS
    except ValueError:
        return DEFAULT_DAYS
    return days if days in WINDOW_DAYS else DEFAULT_DAYS


class FigureCache:
    """Values by key for ``seconds`` (0: no caching). Several threads may ask at once; the
    first computes, the others wait for its value."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T], *, fresh: bool = False) -> T:
        if self.seconds <= 0:
            return compute()
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            now = self._clock()
            held = self._values.get(key)
            if held is not None and held[0] > now and not fresh:
                value: T = held[1]
                return value
            value = compute()
            with self._guard:
                # Drop what expired, so keys that are asked for once do not pile up.
                for old in [k for k, (until, _) in self._values.items() if until <= now]:
                    del self._values[old]
                self._values[key] = (now + self.seconds, value)
            return value
