"""System Log reconciliation: find the events whose hook delivery never arrived.

Okta retries a failed hook delivery once and never replays it; the System Log keeps every event
for 90 days. The reconciler reads ``GET /api/v1/logs`` as a *polling* query (no ``until``) for the
subscribed event types plus ``event_hook.delivery`` (Okta's record of a failed delivery), pages
through the ``next`` links until a page comes back empty, and stores each page through
:class:`~factorflow.store.system_log.SystemLogLedger`: events the store lacks are inserted with
provenance ``log`` (the workflow relay then processes them like hook events, once), events it has
are confirmed (provenance ``both``).

Where to start:

1. the stored ``next`` link (Okta's opaque cursor), if it was made for the same filter;
2. after a change of the event types: ``okta.reconcile_lookback_hours`` back from now;
3. if Okta refuses the stored link: a little before the newest event read (``cursor_published``);
4. on the first run: ``okta.reconcile_lookback_hours`` back (at most Okta's 90 days).

Group membership events are never read, whatever ``pipeline.event_types`` says: factorflow's own
``okta_group`` actions write them, and reading them back would loop.

:class:`ReconcilePoller` runs the reconcilers of every org in a thread of the worker, one worker
at a time per org (a lease in ``reconciler_state``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from factorflow.errors import ActionError, StoreUnavailable
from factorflow.okta.payloads import format_utc
from factorflow.settings import Org, Settings
from factorflow.store.system_log import DELIVERY_FAILURE_TYPE, PageOutcome, SystemLogLedger

log = logging.getLogger(__name__)

# Never read back: factorflow's own group actions write these (the loop guard).
EXCLUDED_PREFIXES = ("group.user_membership.",)
# Re-read this much before the newest event seen when the cursor cannot be used.
RESTART_OVERLAP = timedelta(minutes=15)


class LogSource(Protocol):
    """The part of :class:`factorflow.okta.api.OktaClient` the reconciler uses."""

    def list_logs(
        self, since: datetime | str | None = None, until: datetime | str | None = None,
        filter: str | None = None, limit: int = 1000, after_url: str | None = None,
        q: str | None = None,
    ) -> Any: ...


def log_event_types(event_types: Iterable[str]) -> list[str]:
    """The event types to read: the subscribed ones without group membership events, plus
    ``event_hook.delivery``."""
    wanted = {t for t in event_types if not t.startswith(EXCLUDED_PREFIXES)}
    wanted.add(DELIVERY_FAILURE_TYPE)
    return sorted(wanted)


def log_filter(event_types: Iterable[str]) -> str:
    """Okta's SCIM filter for :func:`log_event_types`."""
    return " or ".join(f'eventType eq "{_quoted(t)}"' for t in log_event_types(event_types))


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


@dataclass
class ReconcileRun:
    """What one run did (the sums of its pages)."""

    org: str
    started_from: str  # cursor, since, lookback, restart
    since: str | None = None
    pages: int = 0
    read: int = 0
    recovered: int = 0
    confirmed: int = 0
    known: int = 0
    conflicts: int = 0
    quarantined: int = 0
    delivery_failures: int = 0
    error: str | None = None

    def add(self, page: PageOutcome) -> None:
        self.pages += 1
        for item in fields(page):
            setattr(self, item.name, getattr(self, item.name) + getattr(page, item.name))

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def line(self) -> str:
        text = (f"org {self.org}: {self.pages} page(s) from {self.started_from}"
                f"{' ' + self.since if self.since else ''}: read {self.read}, "
                f"recovered {self.recovered}, confirmed {self.confirmed}, "
                f"already known {self.known}, delivery failures {self.delivery_failures}")
        if self.conflicts or self.quarantined:
            text += f", quarantined {self.conflicts + self.quarantined}"
        if self.error:
            text += f"; stopped: {self.error}"
        return text


class Reconciler:
    """Reads one org's System Log into the store."""

    def __init__(
        self,
        org: str,
        client: LogSource,
        ledger: SystemLogLedger,
        *,
        event_types: Iterable[str],
        lookback_hours: float = 24.0,
        page_size: int = 1000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_new_events: Callable[[], None] | None = None,
    ) -> None:
        self.org = org
        self.client = client
        self.ledger = ledger
        self.filter = log_filter(event_types)
        self.lookback = timedelta(hours=lookback_hours)
        self.page_size = page_size
        self._clock = clock
        self._on_new_events = on_new_events

    def run(
        self, *, since: datetime | None = None, max_pages: int | None = None,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> ReconcileRun:
        """Read from where the last run stopped (or from ``since``) until an empty page, at most
        ``max_pages``, while ``keep_going()``. Okta and store errors end the run early; they are
        in ``error`` (and in ``reconciler_state.last_error``), and the next run resumes from the
        last page stored."""
        from factorflow.okta.api import OktaApiError, OktaAuthError

        state = self.ledger.state(self.org)
        run = ReconcileRun(self.org, "since" if since is not None else "cursor")
        try:
            if since is None and state is not None and state.next_url \
                    and state.filter == self.filter:
                try:
                    page = self.client.list_logs(after_url=state.next_url)
                except OktaApiError as exc:
                    # A cursor Okta no longer takes (400), or one for another origin (the org
                    # URL changed): start again a little before the newest event read.
                    if isinstance(exc, OktaAuthError) or not (
                        exc.status == 400 or exc.error_code == "foreign_link"
                    ):
                        raise
                    log.warning("reconcile.cursor_refused", extra={"fields": {
                        "org": self.org, "error": str(exc)[:300]}})
                    page = self._first_page(run, self._restart_point(state.cursor_published),
                                            "restart")
            else:
                start = since
                if start is None:
                    run.started_from = "lookback"
                    start = self._clock() - self.lookback
                page = self._first_page(run, start, run.started_from)
            while True:
                outcome = self.ledger.record_page(
                    self.org, page.events, next_url=page.next_url, filter=self.filter,
                    since=run.since if run.pages == 0 else None,
                )
                run.add(outcome)
                if outcome.recovered and self._on_new_events is not None:
                    self._on_new_events()
                if not page.events or page.next_url is None:
                    break
                if (max_pages is not None and run.pages >= max_pages) or not keep_going():
                    break
                page = self.client.list_logs(after_url=page.next_url)
        except (ActionError, StoreUnavailable) as exc:  # Okta's errors are ActionErrors
            run.error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, StoreUnavailable):
                with contextlib.suppress(StoreUnavailable):
                    self.ledger.record_error(self.org, run.error)
            log.warning("reconcile.failed", extra={"fields": {
                "org": self.org, "pages": run.pages, "error": run.error[:300]}})
        if run.read or run.error:
            log.info("reconcile.run", extra={"fields": run.to_dict()})
        return run

    def _first_page(self, run: ReconcileRun, start: datetime, started_from: str) -> Any:
        start = max(start, self._clock() - timedelta(days=90) + timedelta(minutes=1))
        run.started_from = started_from
        run.since = format_utc(start)
        return self.client.list_logs(since=start, filter=self.filter, limit=self.page_size)

    def _restart_point(self, cursor_published: str | None) -> datetime:
        if cursor_published:
            try:
                moment = datetime.fromisoformat(cursor_published.replace("Z", "+00:00"))
                return moment - RESTART_OVERLAP
            except ValueError:
                pass
        return self._clock() - self.lookback


def build_reconciler(
    settings: Settings, org: Org, client: LogSource, ledger: SystemLogLedger,
    on_new_events: Callable[[], None] | None = None,
) -> Reconciler:
    """The reconciler of ``org`` (which must have ``okta`` settings) as configured."""
    assert org.okta is not None
    return Reconciler(
        org.name, client, ledger, event_types=settings.pipeline.event_types,
        lookback_hours=org.okta.reconcile_lookback_hours,
        page_size=org.okta.reconcile_page_size, on_new_events=on_new_events,
    )


class ReconcilePoller:
    """A thread of the worker that runs each org's reconciler every ``interval_seconds``,
    holding a lease per org so that only one worker of a deployment reads an org at a time."""

    def __init__(
        self, reconcilers: Sequence[Reconciler], ledger: SystemLogLedger, *,
        interval_seconds: float, owner: str | None = None,
    ) -> None:
        self.reconcilers = list(reconcilers)
        self.ledger = ledger
        self.interval = interval_seconds
        self.owner = owner or self.default_owner()
        self.lease_seconds = max(3 * interval_seconds, 60.0)
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def default_owner() -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def start(self) -> None:
        if self._thread is not None or not self.reconcilers:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="factorflow-reconcile",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_seconds)
            self._thread = None
        for reconciler in self.reconcilers:
            with contextlib.suppress(StoreUnavailable):
                self.ledger.release_lease(reconciler.org, self.owner)

    def poll_once(self) -> list[ReconcileRun]:
        runs = []
        for reconciler in self.reconcilers:
            if self._stop.is_set():
                break
            try:
                if not self.ledger.take_lease(reconciler.org, self.owner, self.lease_seconds):
                    continue
            except StoreUnavailable as exc:
                log.warning("reconcile.store_unavailable", extra={"fields": {
                    "org": reconciler.org, "error": str(exc)}})
                continue
            org = reconciler.org
            runs.append(reconciler.run(keep_going=functools.partial(self._renew, org)))
        self.runs += 1
        return runs

    def _renew(self, org: str) -> bool:
        if self._stop.is_set():
            return False
        try:
            return self.ledger.take_lease(org, self.owner, self.lease_seconds)
        except StoreUnavailable:
            return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # never let the thread die: log, wait, try again
                log.exception("reconcile.crashed")
            self._stop.wait(self.interval)
