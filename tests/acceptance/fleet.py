"""A scaled-out factorflow deployment for crash and outage tests: several receivers
(``factorflow serve --no-worker``) and workers (``factorflow worker``, each with its own stable
executor id) on one store and one workflow database, a client that plays Okta (it sends again
whatever was not acknowledged), and the checks that every event was stored once and every
action had its effect once.

Everything is a real process or a real server: SQLite files shared by the processes, or fresh
PostgreSQL databases (:func:`fresh_pg_database`); the ``webhook`` action goes to a
:class:`~tests.acceptance.webhook_peer.WebhookPeer` (through an :class:`OnOffProxy` when the
test takes the downstream system away). :class:`PostgresCluster` stops and restarts the local
PostgreSQL server itself. The processes and the installation they share come from
:mod:`tests.acceptance.serverproc`.
"""

from __future__ import annotations

import base64
import contextlib
import random
import socket
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import psycopg
from tests.acceptance import serverproc
from tests.acceptance.serverproc import (
    Backend,
    Delivery,
    Installation,
    ServerProcess,
    WorkerProcess,
    delivery,
    enrollment_event,
    enrollment_rules,
    write_rules,
)
from tests.acceptance.webhook_peer import WebhookPeer
from tests.conftest import PG_URL
from tests.conftest import fresh_pg_database as fresh_pg_database  # for the tests

HOOK_SECRET = "Bearer fleet-hook-secret-3b9d27c4"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"factorflow-crash-tests-key-32byte").decode()
CAMPAIGN = "mfa-rollout"
DEADLINE = 180.0  # seconds any expected state may take to appear (a loaded 2-core machine)
HEARTBEAT_SECONDS = 0.5
DEAD_AFTER_SECONDS = 3.0
WORKER_CONCURRENCY = 4
ACTION_IDS = ("done", "log", "notify")  # sorted
FINISHED = {"done", "already_done"}
EVENT_TYPE = "user.mfa.factor.activate"
BASE_TIME = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)

T = TypeVar("T")


# -- events -----------------------------------------------------------------------------------


def enrollment(user: int) -> dict[str, Any]:
    """The bundled enrollment event for user number ``user``, under a fresh uuid."""
    return enrollment_event(f"00uFleet{user:012d}", user, BASE_TIME + timedelta(seconds=user),
                            event_type=EVENT_TYPE)


def user_id(event: dict[str, Any]) -> str:
    return str(event["target"][0]["id"])


def deliveries_of(events: list[dict[str, Any]], rng: random.Random,
                  max_batch: int = 6) -> list[Delivery]:
    """The events in order, in deliveries of 1 to ``max_batch`` events."""
    out, start = [], 0
    while start < len(events):
        size = rng.randint(1, max_batch)
        out.append(delivery(events[start:start + size]))
        start += size
    return out


# -- waiting ----------------------------------------------------------------------------------


def wait_until(check: Callable[[], T], what: str, *, timeout: float = DEADLINE,
               on_timeout: Callable[[], str] = lambda: "") -> T:
    """:func:`serverproc.wait_until`, bounded by this module's ``DEADLINE`` by default."""
    return serverproc.wait_until(check, what, on_timeout, timeout=timeout)


# -- databases --------------------------------------------------------------------------------


class PostgresCluster:
    """The local PostgreSQL server (the newest version installed, cluster ``main``)."""

    def __init__(self) -> None:
        versions = [p.name for p in Path("/etc/postgresql").iterdir() if p.name.isdigit()]
        assert versions, "no local PostgreSQL cluster to stop and start"
        self.version = max(versions, key=int)

    def _ctl(self, action: str) -> None:
        done = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, "main", action],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, (action, done.stdout, done.stderr)

    def ready(self) -> bool:
        try:
            with psycopg.connect(PG_URL, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def restart(self) -> None:
        self._ctl("restart")
        wait_until(self.ready, "PostgreSQL to accept connections after the restart")

    def stop(self) -> None:
        self._ctl("stop")

    def start(self) -> None:
        self._ctl("start")
        wait_until(self.ready, "PostgreSQL to accept connections")

    def ensure_running(self) -> None:
        if not self.ready():
            with contextlib.suppress(AssertionError):
                self._ctl("start")
            wait_until(self.ready, "PostgreSQL to be running again")


# -- the deployment ---------------------------------------------------------------------------


class Fleet(Installation):
    """One deployment: its settings (``FACTORFLOW_*`` variables shared by every process, one
    data dir), its receivers (without a worker) and workers (each under its own executor id),
    and a reader of its store."""

    server_log_lines = 15
    worker_log_lines = 25

    def __init__(self, workdir: Path, peer: WebhookPeer, backend: Backend, *,
                 webhook_url: str | None = None, env: dict[str, str] | None = None) -> None:
        rules = write_rules(workdir, enrollment_rules(webhook_url or peer.url, CAMPAIGN))
        super().__init__(workdir, backend, secret=HOOK_SECRET, deadline=DEADLINE, settings={
            "FACTORFLOW_PIPELINE__RULES_FILE": str(rules),
            # Retries outlast a restart of the database: nothing may be dead-lettered by one.
            "FACTORFLOW_PIPELINE__RETRY": orjson.dumps({"default": {
                "max_attempts": 40, "initial_seconds": 0.1, "max_seconds": 1.0, "multiplier": 2,
            }}).decode(),
            "FACTORFLOW_ACTIONS__WEBHOOK_SECRETS": orjson.dumps({"peer": WEBHOOK_SECRET}).decode(),
            "FACTORFLOW_WORKFLOWS__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
            "FACTORFLOW_WORKFLOWS__QUEUE_POLLING_SECONDS": "0.1",
            "FACTORFLOW_WORKFLOWS__RELAY_INTERVAL_SECONDS": "0.2",
            "FACTORFLOW_WORKFLOWS__HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "FACTORFLOW_WORKFLOWS__DEAD_AFTER_SECONDS": str(DEAD_AFTER_SECONDS),
            "FACTORFLOW_SERVER__GRACEFUL_TIMEOUT_SECONDS": "10",
            "FACTORFLOW_UI__ENABLED": "false",
            **(env or {}),
        })
        self.peer = peer
        self.receivers = self.servers

    def receiver(self, name: str) -> ServerProcess:
        return self.add_server(name, ("--no-worker",)).start()

    # -- reading the store and the workflow database -----------------------------------------

    def in_flight(self, worker: WorkerProcess) -> list[str]:
        """The workflows ``worker`` is running (PENDING under its executor id)."""
        return sorted(wid for wid, w in self.workflows().items()
                      if w.status == "PENDING" and w.executor_id == worker.executor_id)

    def stored_counts(self) -> Counter[str]:
        return Counter({uuid: count for uuid, count in
                        self.rows("SELECT uuid, COUNT(*) FROM events GROUP BY uuid")})

    def results(self) -> dict[str, dict[str, tuple[str, str]]]:
        """event uuid -> action id -> (status, idempotency key)."""
        out: dict[str, dict[str, tuple[str, str]]] = {}
        for uuid, action, status, key in self.rows(
            "SELECT event_uuid, action_id, status, idempotency_key FROM action_results"
        ):
            out.setdefault(uuid, {})[action] = (status, key)
        return out

    def unfinished(self, uuids: list[str]) -> list[str]:
        """The events whose actions have not all finished, or whose workflow has not recorded
        its own end yet (it does so just after its last action's result)."""
        results = self.results()
        left = [u for u in uuids if tuple(sorted(results.get(u, {}))) != ACTION_IDS
                or not {status for status, _ in results[u].values()} <= FINISHED]
        if left:
            return left
        workflows = self.workflows()  # a client per call: only once the actions are done
        return [u for u in uuids
                if u not in workflows or workflows[u].status in ("PENDING", "ENQUEUED")]

    def wait_done(self, uuids: list[str], what: str = "every action of every event") -> None:
        def progress() -> str:
            left = self.unfinished(uuids)
            return f"{len(left)} unfinished, e.g. {left[:3]}\n{self.logs()}"

        wait_until(lambda: not self.unfinished(uuids), what, on_timeout=progress)

    def worker_rows(self) -> dict[str, tuple[Any, ...]]:
        """executor id -> (claimed_by, recovered_at, recovered_workflows, stopped_at)."""
        return {row[0]: row[1:] for row in self.rows(
            "SELECT executor_id, claimed_by, recovered_at, recovered_workflows, stopped_at "
            "FROM workers"
        )}


# -- the client playing Okta ------------------------------------------------------------------


@dataclass
class SendLog:
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    acked: list[str] = field(default_factory=list)  # event uuids, in the order acknowledged
    bad_answers: list[str] = field(default_factory=list)


class Sender:
    """Sends deliveries to the receivers (in turn) over a few keep-alive connections, each
    paced, and sends again (later, to the next receiver) every delivery that was not
    acknowledged with 204, until all are. Only 204 and 503 are acceptable answers. With
    ``more_to_come`` it keeps going until ``seal`` (deliveries may be added meanwhile)."""

    def __init__(self, receivers: list[ServerProcess], deliveries: list[Delivery], *,
                 connections: int = 3, pace: float = 0.05, more_to_come: bool = False) -> None:
        self._sealed = not more_to_come
        self.receivers = receivers
        self._todo: deque[Delivery] = deque(deliveries)
        self._open = len(deliveries)
        self._connections = connections
        self._pace = pace
        self._lock = threading.Lock()
        self._turn = 0
        self.log = SendLog()
        self._threads: list[threading.Thread] = []
        self.failure: BaseException | None = None

    def start(self) -> Sender:
        self._threads = [threading.Thread(target=self._connection, daemon=True,
                                          name=f"okta-{n}") for n in range(self._connections)]
        for thread in self._threads:
            thread.start()
        return self

    def add(self, more: Delivery) -> None:
        with self._lock:
            self._todo.append(more)
            self._open += 1

    def seal(self) -> None:
        """No more deliveries will be added."""
        with self._lock:
            self._sealed = True

    def acked(self) -> set[str]:
        with self._lock:
            return set(self.log.acked)

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._sealed and self._open == 0

    def join(self, timeout: float = DEADLINE) -> SendLog:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a sending connection did not finish"
        assert self.failure is None, self.failure
        return self.log

    def _next(self) -> tuple[Delivery | None, ServerProcess]:
        with self._lock:
            self._turn += 1
            target = self.receivers[self._turn % len(self.receivers)]
            if self._todo:
                return self._todo.popleft(), target
            return None, target

    def _connection(self) -> None:
        try:
            with httpx.Client(timeout=15.0) as client:
                while not self.finished:
                    item, target = self._next()
                    if item is None:
                        time.sleep(0.05)  # another connection may still put one back
                        continue
                    self._send(client, item, target)
                    time.sleep(self._pace)
        except BaseException as exc:
            self.failure = exc

    def _send(self, client: httpx.Client, item: Delivery, target: ServerProcess) -> None:
        try:
            answer = target.post(item.body, client=client)
        except httpx.TransportError:
            with self._lock:
                self.log.transport_errors += 1
                self._todo.append(item)
            time.sleep(0.1)
            return
        with self._lock:
            self.log.statuses[answer.status_code] += 1
            if answer.status_code == 204:
                header = answer.headers.get("factorflow-result", "")
                counts = dict(part.split("=") for part in header.split())
                if int(counts.get("quarantined", -1)) != 0 or (
                    int(counts["new"]) + int(counts["duplicate"]) != len(item.uuids)
                ):
                    self.log.bad_answers.append(f"204 with {header!r}")
                self.log.acked.extend(item.uuids)
                self._open -= 1
                return
            if answer.status_code != 503:
                self.log.bad_answers.append(f"{answer.status_code}: {answer.text[:200]}")
            self._todo.append(item)
        time.sleep(0.1)


# -- the downstream system, switched off and on -----------------------------------------------


class OnOffProxy:
    """A TCP relay on a fixed local port in front of the webhook peer. ``down()`` closes the
    listening socket and every open connection (a sender sees connection refused or reset);
    ``up()`` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.refused_while_down = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(source)
                self._conns.discard(sink)


# -- the verdict ------------------------------------------------------------------------------


def assert_every_action_once(fleet: Fleet, events: list[dict[str, Any]], *,
                             duplicate_requests_at_most: int) -> None:
    """Each event stored once; its three actions finished; one audit row per idempotency key,
    one checkpoint per user, one webhook effect per webhook-id (the peer applies a repeated
    message once), and no more repeated webhook requests than ``duplicate_requests_at_most``
    (requests that were in flight when a process was killed or the database went away)."""
    uuids = [e["uuid"] for e in events]
    stored = fleet.stored_counts()
    assert set(stored) == set(uuids), (len(stored), len(uuids))
    assert set(stored.values()) == {1}
    assert fleet.rows("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL") == [(0,)]
    assert fleet.rows("SELECT COUNT(*) FROM quarantine") == [(0,)]

    results = fleet.results()
    assert set(results) == set(uuids)
    keys = {action: {results[u][action][1]: u for u in uuids} for action in ACTION_IDS}
    for uuid in uuids:
        assert tuple(sorted(results[uuid])) == ACTION_IDS
        assert {status for status, _ in results[uuid].values()} <= FINISHED, results[uuid]

    audit = fleet.rows("SELECT idempotency_key, event_uuid FROM audit_log WHERE kind = ?",
                       (EVENT_TYPE,))
    assert Counter(key for key, _ in audit) == Counter(dict.fromkeys(keys["log"], 1))
    assert all(keys["log"][key] == uuid for key, uuid in audit)

    checkpoints = fleet.rows("SELECT user_id, event_uuid, idempotency_key FROM "
                             "campaign_checkpoints WHERE campaign = ?", (CAMPAIGN,))
    by_user = {user_id(e): e["uuid"] for e in events}
    assert Counter(user for user, _, _ in checkpoints) == Counter(dict.fromkeys(by_user, 1))
    assert all(by_user[user] == uuid and keys["done"][key] == uuid
               for user, uuid, key in checkpoints)

    sends = fleet.rows("SELECT idempotency_key FROM webhook_sends")
    assert Counter(key for (key,) in sends) == Counter(dict.fromkeys(keys["notify"], 1))
    received = fleet.peer.snapshot()
    assert all(r.signature_valid for r in received)
    assert fleet.peer.effect_counts() == Counter(dict.fromkeys(keys["notify"], 1))
    requests = Counter(r.webhook_id for r in received)
    assert set(requests) == set(keys["notify"])
    repeated = sum(requests.values()) - len(requests)
    print(f"{len(requests)} webhook messages, {repeated} sent again (at most "
          f"{duplicate_requests_at_most} allowed)")
    assert repeated <= duplicate_requests_at_most, (repeated, duplicate_requests_at_most)
    for request in received:
        assert request.json()["data"]["uuid"] == keys["notify"][request.webhook_id]

    assert fleet.rows("SELECT COUNT(*) FROM dead_letters") == [(0,)]
    decisions = fleet.rows("SELECT event_uuid, run_id FROM decisions")
    assert sorted(decisions) == sorted((u, u) for u in uuids)  # one decision, the first run
    workflows = fleet.workflows()
    assert sorted(workflows) == sorted(uuids)  # one workflow per event, under its uuid
    assert {w.status for w in workflows.values()} == {"SUCCESS"}


def assert_acked_are_stored(fleet: Fleet, acked: set[str]) -> None:
    """Nothing was acknowledged that the store does not hold."""
    stored = fleet.stored_counts()
    missing = [uuid for uuid in acked if stored[uuid] != 1]
    assert not missing, f"{len(missing)} acknowledged events are not stored once: {missing[:5]}"
