"""Okta's rate limits as a client sees them: one bucket per endpoint, read from the response.

Every Okta response carries ``X-Rate-Limit-Limit``, ``X-Rate-Limit-Remaining`` and
``X-Rate-Limit-Reset`` (UTC epoch seconds) for the bucket of the endpoint that answered. The
buckets are per endpoint template (``/api/v1/users/{id}``, ``/api/v1/logs`` ...), so the path is
normalised before it is used as a key. A 429 (``E0000047``) means the bucket is empty until the
reset.

:class:`RateLimiter` keeps the last state of every bucket and answers two questions:

* ``pace(bucket)``: how long to wait before the next request. Nothing while the bucket is well
  filled; once the remaining share drops under ``slowdown_below``, the remaining requests are
  spread evenly over the time left in the window; with nothing left, until the reset.
* ``retry_delay(headers, attempt)``: how long to wait after a 429: ``Retry-After`` if present,
  else the reset, else an exponential default.

Reset times are converted to the local clock through the response's ``Date`` header when there is
one, so a skewed local clock does not make the client wait too little or too long.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

# Path segments after which the next segment is an id (or a login) rather than a resource name.
_COLLECTIONS = frozenset({
    "users", "groups", "factors", "authenticator-enrollments", "authenticators", "apps",
    "eventHooks", "logStreams", "idps", "authorizationServers", "policies", "zones", "roles",
    "devices", "clients", "methods", "rules", "schemas",
})
ID_PLACEHOLDER = "{id}"
RESET_MARGIN_SECONDS = 1.0
DEFAULT_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0


def bucket_for(url_or_path: str) -> str:
    """The rate-limit bucket of a request: its path with ids replaced by ``{id}``.

    ``/api/v1/users/00u1abc/groups`` -> ``/api/v1/users/{id}/groups``;
    ``https://org.okta.com/api/v1/logs?after=...`` -> ``/api/v1/logs``.
    """
    path = urlsplit(url_or_path).path if "://" in url_or_path else url_or_path.split("?", 1)[0]
    segments = path.rstrip("/").split("/")
    normalised = [
        ID_PLACEHOLDER if index > 1 and segments[index - 1] in _COLLECTIONS and segment else segment
        for index, segment in enumerate(segments)
    ]
    return "/".join(normalised) or "/"


@dataclass(frozen=True, slots=True)
class RateLimitSnapshot:
    """What Okta last said about one bucket."""

    bucket: str
    limit: int
    remaining: int
    reset: int  # UTC epoch seconds, as Okta sent it


@dataclass(slots=True)
class _Bucket:
    limit: int
    remaining: int  # as last reported, minus the requests sent since
    reset: int  # Okta's epoch seconds
    reset_at: float  # the same instant on the local clock
    next_slot: float  # when the next paced request may go


class RateLimiter:
    """Per-bucket state, shared by every thread of one client."""

    def __init__(self, *, slowdown_below: float, clock: Callable[[], float]) -> None:
        if not 0.0 <= slowdown_below < 1.0:
            raise ValueError("slowdown_below must be in [0, 1)")
        self._slowdown_below = slowdown_below
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def pace(self, bucket: str) -> float:
        """Seconds to wait before sending one request to ``bucket`` (0: send now).

        A request that is told to go is counted against the bucket at once, so that threads
        sending at the same time see each other's requests before Okta's answer arrives.
        """
        now = self._clock()
        with self._lock:
            state = self._buckets.get(bucket)
            if state is None or now >= state.reset_at:
                return 0.0  # unknown, or a new window: Okta's answer will tell
            if state.remaining <= 0:
                return state.reset_at - now + RESET_MARGIN_SECONDS
            threshold = self._slowdown_below * state.limit
            if state.remaining > threshold:
                state.remaining -= 1
                return 0.0
            interval = (state.reset_at - now) / state.remaining
            slot = max(now, state.next_slot)
            state.next_slot = slot + interval
            state.remaining -= 1
            return slot - now

    def observe(self, bucket: str, headers: Mapping[str, str]) -> RateLimitSnapshot | None:
        """Record the rate-limit headers of a response from ``bucket``."""
        limit = _int_header(headers, "x-rate-limit-limit")
        remaining = _int_header(headers, "x-rate-limit-remaining")
        reset = _int_header(headers, "x-rate-limit-reset")
        if limit is None or remaining is None or reset is None:
            return None
        now = self._clock()
        reset_at = now + (reset - _server_now(headers, now))
        with self._lock:
            state = self._buckets.get(bucket)
            if state is not None and state.reset == reset:
                # The same window: answers to concurrent requests can arrive out of order, and
                # the lowest count is the latest.
                state.remaining = min(state.remaining, remaining)
                state.limit = limit
            elif state is None or reset > state.reset:
                self._buckets[bucket] = _Bucket(limit, remaining, reset, reset_at, now)
            # else: an answer from an older window arrived late; keep the newer state
        return RateLimitSnapshot(bucket, limit, remaining, reset)

    def retry_delay(self, headers: Mapping[str, str], attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th 429 (0-based) in a row."""
        retry_after = headers.get("retry-after")
        if retry_after is not None:
            seconds = _retry_after_seconds(retry_after, headers, self._clock())
            if seconds is not None:
                return seconds
        reset = _int_header(headers, "x-rate-limit-reset")
        if reset is not None:
            now = self._clock()
            return max(reset - _server_now(headers, now), 0.0) + RESET_MARGIN_SECONDS
        return min(DEFAULT_BACKOFF_SECONDS * 2.0**attempt, MAX_BACKOFF_SECONDS)

    def snapshot(self) -> dict[str, RateLimitSnapshot]:
        """The last state of every bucket seen (``remaining`` as Okta reported it, less the
        requests sent since)."""
        with self._lock:
            return {
                name: RateLimitSnapshot(name, state.limit, max(state.remaining, 0), state.reset)
                for name, state in self._buckets.items()
            }


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _server_now(headers: Mapping[str, str], local_now: float) -> float:
    """Okta's clock from the ``Date`` header (whole seconds), else ours."""
    value = headers.get("date")
    if value:
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            pass
    return local_now


def _retry_after_seconds(
    value: str, headers: Mapping[str, str], local_now: float
) -> float | None:
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        seconds = moment - _server_now(headers, local_now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(seconds, 0.0)
