"""Tells the operator, in the log, when the clock that stamps received events is behind Okta's.

An event's hook delay is its receipt time minus its ``published`` time. Okta publishes an event
before it delivers it, so a delay of ``-EARLY_SECONDS`` (a second) or less can only come from a
receiving host whose clock is behind Okta's. Such a clock skews every delay and audit time the
service records and breaks the delivery-gap roll-up's assumption that a change is committed
within five minutes of its stamp. The delivery-gap figures count such events
(``early_events``, ``clock_behind_seconds``); the workflow worker also logs
``clock.behind_okta`` when it meets one, at most once per :data:`WARN_EVERY_SECONDS` per
process, with how many it met since the last warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from factorflow.domain.facts import Fact
from factorflow.okta.payloads import EARLY_SECONDS

log = logging.getLogger(__name__)

WARN_EVERY_SECONDS = 600.0


class ClockWatch:
    def __init__(self, *, every: float = WARN_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()  # the worker runs steps on several threads
        self._warned_at: float | None = None
        self._early = 0  # early events met since the last warning

    def check(self, fact: Fact) -> bool:
        """Note ``fact`` if it was received early; True if that made a warning."""
        delay = fact.delay_seconds
        if delay is None or delay > -EARLY_SECONDS:
            return False
        with self._lock:
            self._early += 1
            now = self._clock()
            if self._warned_at is not None and now - self._warned_at < self._every:
                return False
            self._warned_at = now
            count, self._early = self._early, 0
        log.warning("clock.behind_okta", extra={"fields": {
            "event_uuid": fact.uuid, "org": fact.org, "published": fact.published,
            "received_at": fact.received_at, "delay_seconds": delay,
            "early_events": count,
            "meaning": f"received {-delay:g} s before Okta published it: the receiving "
                       "host's clock is behind Okta's by at least that; keep it in step (NTP)",
        }})
        return True
