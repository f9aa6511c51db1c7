"""End to end: real ``factorflow serve`` processes, real SQLite and PostgreSQL, real HTTP.

The client plays Okta: the verification GET, deliveries of one or twenty events, redelivery of
whatever was not acknowledged with a 2xx. The server is stopped the hard way (SIGKILL) and the
graceful way (SIGTERM) while deliveries are in flight. What counts is the store, read back
through ``open_store`` on the same URL: every acknowledged event is there, exactly once, with
the JSON that was sent.
"""

from __future__ import annotations

import copy
import os
import queue
import random
import socket
import threading
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.acceptance.serverproc import (
    HOST,
    SAMPLE,
    SAMPLE_EVENT,
    Delivery,
    ServerProcess,
    stamp,
)
from tests.acceptance.serverproc import delivery as make_delivery

from factorflow.store.base import LedgerEntry, QuarantineEntry, StoredEvent
from factorflow.store.factory import open_store

pytestmark = pytest.mark.slow

# Distinctive, so that finding it in a log cannot be a coincidence.
SECRET_TOKEN = "e2eHookSecret-7f3a9c0d51b8e246"
SECRET = f"Bearer {SECRET_TOKEN}"
GRACEFUL_TIMEOUT = 20.0

BASE_TIME = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)


# -- building deliveries ------------------------------------------------------------------------


def make_event(uuid: str, n: int) -> dict[str, Any]:
    """The bundled sample event under another uuid, published ``n`` tenths of a second later."""
    event = copy.deepcopy(SAMPLE_EVENT)
    event["uuid"] = uuid
    event["published"] = stamp(BASE_TIME + timedelta(milliseconds=100 * n))
    event["transaction"]["id"] = f"txn{n:07d}"
    return event


def event_pool(count: int) -> dict[str, dict[str, Any]]:
    uuids = [str(uuidlib.uuid4()) for _ in range(count)]
    return {u: make_event(u, n) for n, u in enumerate(uuids)}


def result_counts(header: str) -> dict[str, int]:
    """``new=1 duplicate=0 quarantined=0`` -> {"new": 1, ...}"""
    return {key: int(value) for key, value in (part.split("=") for part in header.split())}


# -- reading the store --------------------------------------------------------------------------


@dataclass
class Snapshot:
    events: list[StoredEvent]
    ledger: list[LedgerEntry]
    quarantine: list[QuarantineEntry]

    def uuid_counts(self) -> Counter[str]:
        return Counter(e.uuid for e in self.events)


def read_store(url: str) -> Snapshot:
    store = open_store(url, migrate=False)
    try:
        counts = store.counts()
        return Snapshot(
            events=store.recent_events(counts["events"] + 1000),
            ledger=store.ledger(counts["deliveries"] + 1000),
            quarantine=store.quarantine(counts["quarantined"] + 1000),
        )
    finally:
        store.close()


def assert_stored_once(snapshot: Snapshot, expected: dict[str, dict[str, Any]]) -> None:
    """Every expected event is stored exactly once, with the JSON that was sent."""
    counts = snapshot.uuid_counts()
    assert all(counts[u] == 1 for u in expected), {u: counts[u] for u in expected if counts[u] != 1}
    by_uuid = {e.uuid: e for e in snapshot.events}
    for uuid, event in expected.items():
        assert orjson.loads(by_uuid[uuid].raw) == event


def assert_secret_not_logged(*servers: ServerProcess) -> None:
    for server in servers:
        text = server.log_text()
        assert "receiver.started" in text, "the server's output was not captured"
        assert SECRET_TOKEN not in text


# -- clients ------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    acked: dict[int, str] = field(default_factory=dict)  # delivery index -> result header
    refused: dict[int, int] = field(default_factory=dict)  # index -> status other than 204
    failed: list[int] = field(default_factory=list)  # transport error: no answer at all
    connect_errors: int = 0


def stream(
    server: ServerProcess,
    deliveries: list[Delivery],
    *,
    connections: int,
    until: Callable[[StreamResult], None] | None = None,
) -> StreamResult:
    """Send ``deliveries`` over several keep-alive connections, each taking the next one.

    A connection that gets a transport error (the server is gone) stops. ``until`` runs on this
    thread while the stream is going (it may kill the server); then the connections are joined.
    """
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(deliveries)):
        todo.put(index)
    result = StreamResult()
    lock = threading.Lock()

    def connection() -> None:
        with server.client() as client:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    answer = server.post(deliveries[index].body, client=client)
                except httpx.TransportError as exc:
                    with lock:
                        result.failed.append(index)
                        result.connect_errors += isinstance(exc, httpx.ConnectError)
                    return
                with lock:
                    if answer.status_code == 204:
                        result.acked[index] = answer.headers["factorflow-result"]
                    else:
                        result.refused[index] = answer.status_code

    threads = [threading.Thread(target=connection, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    if until is not None:
        until(result)
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a client connection hung"
    print(f"stream of {len(deliveries)}: {len(result.acked)} acknowledged, "
          f"{len(result.failed)} without an answer ({result.connect_errors} refused), "
          f"other answers {Counter(result.refused.values())}")
    return result


def send_concurrently(
    jobs: list[list[tuple[ServerProcess, Delivery]]],
) -> list[tuple[Delivery, int, str | None]]:
    """One thread per job, each sending its deliveries in order; (delivery, status, header)."""
    answers: list[tuple[Delivery, int, str | None]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(job: list[tuple[ServerProcess, Delivery]]) -> None:
        clients: dict[int, httpx.Client] = {}
        try:
            for server, delivery in job:
                if server.port not in clients:
                    clients[server.port] = server.client()
                client = clients[server.port]
                answer = server.post(delivery.body, client=client)
                with lock:
                    answers.append(
                        (delivery, answer.status_code, answer.headers.get("factorflow-result"))
                    )
        except BaseException as exc:
            errors.append(exc)
        finally:
            for client in clients.values():
                client.close()

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a client thread hung"
    assert not errors, errors
    return answers


def tally(answers: list[tuple[Delivery, int, str | None]]) -> Counter[str]:
    """The result headers of ``answers`` (each must have one), added up."""
    totals = Counter[str]()
    for _, _, header in answers:
        assert header is not None
        totals.update(result_counts(header))
    return totals


def refuses_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        return probe.connect_ex((HOST, port)) != 0


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None: the default SQLite file in the data dir; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start receivers in this test's tmp dir; whatever is still running is killed after."""
    servers: list[ServerProcess] = []

    def _launch(
        name: str = "server", *, store_url: str | None = None, start: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        server = ServerProcess(tmp_path, secret=SECRET, store_url=store_url, name=name, env=env)
        servers.append(server)
        if start:
            server.start()
        return server

    yield _launch
    for server in servers:
        server.close()


@pytest.fixture
def rng() -> random.Random:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"random seed: {seed}")  # shown with a failure, to replay the same kill points
    return random.Random(seed)


# -- 1. verification and one delivery -----------------------------------------------------------


def test_verification_then_sample_delivery_is_stored(
    store_url: str | None, launch: Callable[..., ServerProcess]
) -> None:
    server = launch(store_url=store_url)

    verified = server.verify("okta-challenge-Xy7")
    assert verified.status_code == 200
    assert verified.headers["content-type"] == "application/json"
    assert verified.json() == {"verification": "okta-challenge-Xy7"}

    delivered = server.post(SAMPLE)
    assert delivered.status_code == 204
    assert delivered.content == b""
    assert delivered.headers["factorflow-result"] == "new=1 duplicate=0 quarantined=0"

    wrong = server.post(SAMPLE, headers={"Authorization": SECRET + "x"})
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "unauthorized", "message": "authentication required"}

    snapshot = read_store(server.store_url)
    envelope = orjson.loads(SAMPLE)
    assert [e.uuid for e in snapshot.events] == [SAMPLE_EVENT["uuid"]]
    (stored,) = snapshot.events
    assert orjson.loads(stored.raw) == SAMPLE_EVENT
    assert stored.event_type == "user.mfa.factor.activate"
    assert stored.published == SAMPLE_EVENT["published"]
    assert stored.delivery_id == envelope["eventId"]
    assert stored.hook_id == "whoExampleHook0000001"
    assert (stored.org, stored.provenance) == ("default", "hook")
    assert [(e.delivery_id, e.events_new) for e in snapshot.ledger] == [(envelope["eventId"], 1)]
    assert snapshot.quarantine == []

    assert server.terminate() == 0
    assert_secret_not_logged(server)


# -- 2. redelivery after a restart --------------------------------------------------------------


def test_redelivery_after_restart_is_a_duplicate(
    store_url: str | None, launch: Callable[..., ServerProcess]
) -> None:
    server = launch(store_url=store_url)
    first = server.post(SAMPLE)
    assert first.status_code == 204
    assert first.headers["factorflow-result"] == "new=1 duplicate=0 quarantined=0"

    server.restart()
    again = server.post(SAMPLE)
    assert again.status_code == 204
    assert again.headers["factorflow-result"] == "new=0 duplicate=1 quarantined=0"

    snapshot = read_store(server.store_url)
    assert [e.uuid for e in snapshot.events] == [SAMPLE_EVENT["uuid"]]
    assert orjson.loads(snapshot.events[0].raw) == SAMPLE_EVENT
    # Newest first: the redelivery's ledger row counts a duplicate, the first one a new event.
    assert [(e.events_new, e.events_duplicate) for e in snapshot.ledger] == [(0, 1), (1, 0)]
    assert snapshot.quarantine == []

    assert server.terminate() == 0
    assert_secret_not_logged(server)


# -- 3. kill -9 in the middle of a stream -------------------------------------------------------


def _stream_deliveries(pool: dict[str, dict[str, Any]], rng: random.Random) -> list[Delivery]:
    """The pool as deliveries: some batches of 20 events, the rest one event each, shuffled."""
    uuids = list(pool)
    batched, single = uuids[: len(uuids) // 2], uuids[len(uuids) // 2 :]
    deliveries = [
        make_delivery([pool[u] for u in batched[i : i + 20]]) for i in range(0, len(batched), 20)
    ]
    deliveries += [make_delivery([pool[u]]) for u in single]
    rng.shuffle(deliveries)
    return deliveries


def test_kill9_mid_stream_loses_no_acknowledged_event(
    store_url: str | None, launch: Callable[..., ServerProcess], rng: random.Random
) -> None:
    rounds = 3
    pool = event_pool(240 * rounds)
    server = launch(store_url=store_url)
    all_deliveries = _stream_deliveries(pool, rng)
    fresh = [all_deliveries[r::rounds] for r in range(rounds)]  # new traffic for each round
    acked: set[Delivery] = set()
    pending: list[Delivery] = []  # sent but never acknowledged: Okta sends these again

    for round_no in range(rounds):
        if not server.running:
            server.start()
        redo = rng.sample(sorted(acked, key=lambda d: d.uuids), min(10, len(acked)))
        batch = pending + fresh[round_no] + redo
        kill_at = rng.randint(len(batch) // 10, len(batch) * 6 // 10)

        def kill_mid_stream(progress: StreamResult, kill_at: int = kill_at) -> None:
            deadline = time.monotonic() + 5.0
            while len(progress.acked) < kill_at and time.monotonic() < deadline:
                time.sleep(0.002)
            assert server.kill9() == -9

        result = stream(server, batch, connections=4, until=kill_mid_stream)

        assert result.refused == {}  # nothing but 204 before the kill
        now_acked = {batch[i] for i in result.acked}
        assert len(now_acked) < len(batch), "the kill came after the stream had finished"
        acked |= now_acked
        pending = [d for d in batch if d not in acked]

        # Every acknowledged event survived the kill, once, with its JSON intact.
        snapshot = read_store(server.store_url)
        assert_stored_once(snapshot, {u: pool[u] for d in acked for u in d.uuids})
        assert set(snapshot.uuid_counts()) <= set(pool)
        assert snapshot.quarantine == []

    # Okta's retry: everything not acknowledged, plus some that were, after a restart.
    server.start()
    redo = rng.sample(sorted(acked, key=lambda d: d.uuids), min(20, len(acked)))
    unsent = [d for d in all_deliveries if d not in acked and d not in pending]
    retry = pending + unsent + redo
    result = stream(server, retry, connections=4)
    assert sorted(result.acked) == list(range(len(retry)))
    for header in result.acked.values():
        counts = result_counts(header)
        assert counts["quarantined"] == 0
    assert server.terminate() == 0

    snapshot = read_store(server.store_url)
    assert_stored_once(snapshot, pool)
    assert len(snapshot.events) == len(pool)
    assert sum(e.events_new for e in snapshot.ledger) == len(pool)
    assert snapshot.quarantine == []
    assert_secret_not_logged(server)


# -- 4. many parallel, overlapping deliveries ---------------------------------------------------


def test_parallel_overlapping_deliveries_store_each_event_once(
    store_url: str | None, launch: Callable[..., ServerProcess], rng: random.Random
) -> None:
    pool = event_pool(300)
    uuids = list(pool)
    server = launch(store_url=store_url)
    jobs = [
        [(server, make_delivery([pool[u] for u in rng.sample(uuids, rng.randint(1, 5))]))
         for _ in range(100)]
        for _ in range(8)
    ]
    sent = Counter(u for job in jobs for _, d in job for u in d.uuids)

    answers = send_concurrently(jobs)

    assert Counter(status for _, status, _ in answers) == {204: 800}
    totals = tally(answers)
    assert totals["new"] == len(sent)
    assert totals["duplicate"] == sum(sent.values()) - len(sent)
    assert totals["quarantined"] == 0

    snapshot = read_store(server.store_url)
    assert_stored_once(snapshot, {u: pool[u] for u in sent})
    assert len(snapshot.events) == len(sent)
    assert len(snapshot.ledger) == 800
    assert sum(e.events_new for e in snapshot.ledger) == len(sent)
    assert sum(e.events_duplicate for e in snapshot.ledger) == sum(sent.values()) - len(sent)
    assert snapshot.quarantine == []

    assert server.terminate() == 0
    assert_secret_not_logged(server)


# -- 5. graceful shutdown with requests in flight -----------------------------------------------


def test_sigterm_finishes_requests_in_flight_then_refuses_connections(
    store_url: str | None, launch: Callable[..., ServerProcess], rng: random.Random
) -> None:
    pool = event_pool(1200)
    server = launch(
        store_url=store_url,
        env={"FACTORFLOW_SERVER__GRACEFUL_TIMEOUT_SECONDS": str(GRACEFUL_TIMEOUT)},
    )
    deliveries = _stream_deliveries(pool, rng)

    # One delivery whose body is only half sent when SIGTERM arrives: it is in flight.
    slow_events = event_pool(3)
    slow = make_delivery(list(slow_events.values()))
    half_sent, release = threading.Event(), threading.Event()
    slow_answer: list[httpx.Response | BaseException] = []

    def body() -> Iterator[bytes]:
        yield slow.body[: len(slow.body) // 2]
        half_sent.set()
        release.wait(30)
        yield slow.body[len(slow.body) // 2 :]

    def send_slow() -> None:
        headers = {**server.auth_headers(), "Content-Length": str(len(slow.body))}
        try:
            slow_answer.append(httpx.post(server.hook_url, content=body(), headers=headers,
                                          timeout=60.0))
        except BaseException as exc:
            slow_answer.append(exc)

    shut_down_at = rng.randint(20, 60)

    def shut_down_mid_stream(progress: StreamResult) -> None:
        deadline = time.monotonic() + 5.0
        while len(progress.acked) < shut_down_at and time.monotonic() < deadline:
            time.sleep(0.002)
        slow_thread.start()
        assert half_sent.wait(10)
        # The half request's headers are read before a later request on another connection.
        assert httpx.get(server.base_url + "/healthz", timeout=10.0).status_code == 200
        server.send_sigterm()
        deadline = time.monotonic() + 10.0
        while not refuses_connections(server.port) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert refuses_connections(server.port), "still accepting connections after SIGTERM"
        assert server.running  # still finishing the half request
        release.set()

    slow_thread = threading.Thread(target=send_slow, daemon=True)
    result = stream(server, deliveries, connections=4, until=shut_down_mid_stream)
    slow_thread.join(60)

    assert server.wait(GRACEFUL_TIMEOUT + 10) == 0
    (slow_result,) = slow_answer
    assert isinstance(slow_result, httpx.Response), slow_result
    assert slow_result.status_code == 204
    assert slow_result.headers["factorflow-result"] == "new=3 duplicate=0 quarantined=0"
    # Nobody got a 5xx: a delivery was either acknowledged or got no answer (the connection
    # was closed or refused), which Okta treats as a failure and sends again.
    assert result.refused == {}
    with pytest.raises(httpx.ConnectError):
        server.post(deliveries[0].body)

    acked = {u: pool[u] for i in result.acked for u in deliveries[i].uuids}
    snapshot = read_store(server.store_url)
    assert_stored_once(snapshot, {**acked, **slow_events})
    assert snapshot.quarantine == []

    # Okta sends again what was not acknowledged; in the end everything is there once.
    server.start()
    retry = [d for i, d in enumerate(deliveries) if i not in result.acked]
    assert len(retry) > 0
    again = stream(server, retry, connections=4)
    assert sorted(again.acked) == list(range(len(retry)))
    assert server.terminate() == 0
    snapshot = read_store(server.store_url)
    assert_stored_once(snapshot, {**pool, **slow_events})
    assert len(snapshot.events) == len(pool) + len(slow_events)
    assert sum(e.events_new for e in snapshot.ledger) == len(snapshot.events)
    assert_secret_not_logged(server)


# -- 6. two receivers on one PostgreSQL database ------------------------------------------------


def test_two_receivers_on_one_postgres_store_each_event_once(
    pg_url: str, launch: Callable[..., ServerProcess], rng: random.Random
) -> None:
    # Started together: both migrate the fresh database at the same time.
    first = launch("receiver-a", store_url=pg_url, start=False)
    second = launch("receiver-b", store_url=pg_url, start=False)
    first.start(wait=False)
    second.start(wait=False)
    first.wait_ready()
    second.wait_ready()

    pool = event_pool(200)
    uuids = list(pool)
    jobs = [
        [(rng.choice((first, second)),
          make_delivery([pool[u] for u in rng.sample(uuids, rng.randint(1, 8))]))
         for _ in range(60)]
        for _ in range(6)
    ]
    sent = Counter(u for job in jobs for _, d in job for u in d.uuids)

    answers = send_concurrently(jobs)

    assert Counter(status for _, status, _ in answers) == {204: 360}
    totals = tally(answers)
    assert totals["new"] == len(sent)
    assert totals["quarantined"] == 0

    snapshot = read_store(pg_url)
    assert_stored_once(snapshot, {u: pool[u] for u in sent})
    assert len(snapshot.events) == len(sent)
    assert len(snapshot.ledger) == 360
    assert sum(e.events_new for e in snapshot.ledger) == len(sent)
    assert snapshot.quarantine == []

    assert first.terminate() == 0
    assert second.terminate() == 0
    assert_secret_not_logged(first, second)


# -- 7. the secret stays out of the logs --------------------------------------------------------


def test_hook_secret_never_appears_in_server_output(
    launch: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """At DEBUG, through every path that logs: verification, wrong and missing credentials,
    rejected bodies, quarantined events, a stored delivery, shutdown, and a startup that fails
    on its configuration."""
    server = launch(env={"FACTORFLOW_LOG__LEVEL": "DEBUG"})
    assert server.verify("challenge-1").status_code == 200
    assert server.post(SAMPLE).status_code == 204
    near_miss = server.post(SAMPLE, headers={"Authorization": SECRET_TOKEN})
    assert near_miss.status_code == 401
    assert near_miss.json() == {"error": "unauthorized", "message": "authentication required"}
    missing = httpx.post(server.hook_url, content=SAMPLE,
                         headers={"Content-Type": "application/json",
                                  "X-Api-Key": SECRET}, timeout=30.0)
    assert missing.status_code == 401
    assert missing.json() == {"error": "unauthorized", "message": "authentication required"}
    garbage = server.post(b"{not json")
    assert garbage.status_code == 400
    assert garbage.json()["error"] == "invalid_json"
    assert garbage.json()["message"].startswith("body is not valid JSON")
    odd = orjson.loads(SAMPLE)
    odd["data"]["events"] = [{"uuid": "no-published", "eventType": "user.mfa.factor.activate"}]
    quarantined = server.post(orjson.dumps(odd))
    assert quarantined.status_code == 204
    assert quarantined.headers["factorflow-result"] == "new=0 duplicate=0 quarantined=1"
    assert server.terminate() == 0

    snapshot = read_store(server.store_url)  # the rejected requests changed nothing
    assert [e.uuid for e in snapshot.events] == [SAMPLE_EVENT["uuid"]]
    assert [q.reason_code for q in snapshot.quarantine] == ["missing_published"]

    log = server.log_text()
    for logged in ("hook.verified", "hook.auth_failed", "hook.rejected", "hook.stored",
                   "hook.quarantined", "receiver.stopped"):
        assert logged in log
    json_lines = [line for line in log.splitlines() if line.startswith("{")]
    assert all(isinstance(orjson.loads(line), dict) for line in json_lines)
    assert SECRET_TOKEN not in log

    # A configuration error names the keys, never the value.
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    broken = launch("broken", start=False,
                    env={"FACTORFLOW_HOOK__SECRET_FILE": str(secret_file)})
    broken.start(wait=False)
    assert broken.wait(30) == 1
    output = broken.log_text()
    assert "hook.secret and hook.secret_file are both set" in output
    assert SECRET_TOKEN not in output
