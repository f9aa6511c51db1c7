"""ClockWatch: the workflow worker's log line when an event was received a second or more
before Okta published it (the receiving host's clock is behind Okta's), at most once per
interval, with how many such events came since the last line."""

from __future__ import annotations

import logging

import pytest
from tests.payloads import shapes

from factorflow.domain.facts import Fact
from factorflow.okta.translate import to_fact
from factorflow.pipeline.clock import ClockWatch

RECEIVED = "2026-03-15T10:22:15.000000Z"


def fact(published: str, received: str | None = RECEIVED) -> Fact:
    event = shapes.enrollment_event()
    event["published"] = published
    return to_fact(event, org="emea", received_at=received)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [record.fields for record in caplog.records  # type: ignore[attr-defined]
            if record.message == "clock.behind_okta"]


def test_an_early_event_is_logged_once_per_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = ClockWatch(every=600.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="factorflow.pipeline.clock")
    # On time, a little late, within a second early, no receipt time: nothing to say.
    for published, received in (("2026-03-15T10:22:12.000Z", RECEIVED),
                                ("2026-03-15T10:22:15.900Z", RECEIVED),
                                ("2026-03-15T10:22:20.000Z", None)):
        assert not watch.check(fact(published, received))
    assert warnings(caplog) == []
    early = fact("2026-03-15T10:23:45.000Z")  # received 90 s before Okta published it
    assert watch.check(early)
    (first,) = warnings(caplog)
    assert first["event_uuid"] == early.uuid and first["org"] == "emea"
    assert first["delay_seconds"] == -90.0 and first["early_events"] == 1
    assert str(first["meaning"]).startswith("received 90 s before Okta published it: the "
                                            "receiving host's clock is behind Okta's")
    # Exactly a second early counts; within the interval it is only counted.
    clock.now += 599.0
    assert not watch.check(fact("2026-03-15T10:22:16.000Z"))
    assert not watch.check(fact("2026-03-15T10:22:30.000Z"))
    assert len(warnings(caplog)) == 1
    clock.now += 1.0
    assert watch.check(fact("2026-03-15T10:22:18.000Z"))
    second = warnings(caplog)[1]
    assert second["early_events"] == 3 and second["delay_seconds"] == -3.0
