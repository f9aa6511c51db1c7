"""The commit process: hook bodies parsed and committed in a child of the server.

What is checked: deliveries pass through it whole (large bodies, several orgs), a killed child
turns into 503s (never a lost acknowledgement) and is replaced, a child that cannot open its
store stops the server from starting with an error that holds no secret, a child whose server
was killed exits by itself, and the in-process ``thread`` intake answers the same way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient
from tests.acceptance.serverproc import ServerProcess, wait_until
from tests.conftest import SECRET, make_settings
from tests.integration.test_hook_endpoint import (
    HOOK,
    assert_error,
    delivery,
    okta_event,
    result_header,
    snapshot,
    store_of,
)

from factorflow.bootstrap import build_app
from factorflow.errors import StoreUnavailable
from factorflow.settings import Settings
from factorflow.store import commit_process
from factorflow.store.commit_process import ProcessIntake
from factorflow.store.factory import open_store


def child_of(client: TestClient) -> ProcessIntake:
    intake = client.app.intake  # type: ignore[attr-defined]
    assert isinstance(intake, ProcessIntake)
    return intake


@pytest.fixture
def slow_restart(monkeypatch: pytest.MonkeyPatch) -> float:
    """A restart delay long enough that the test sees the gap between death and restart."""
    delay = 3.0
    monkeypatch.setattr(commit_process, "RESTART_DELAY_SECONDS", delay)
    return delay


def test_the_default_intake_is_a_child_process(client: TestClient,
                                               auth: dict[str, str]) -> None:
    intake = child_of(client)
    assert intake.healthy
    pid = intake._process.pid  # type: ignore[union-attr]
    assert pid != os.getpid()
    response = client.post(HOOK, content=delivery([okta_event("through-the-child")]),
                           headers=auth)
    assert response.status_code == 204
    assert result_header(response) == "new=1 duplicate=0 quarantined=0"
    assert store_of(client).get_event("through-the-child") is not None
    assert intake.committed == 1


def test_a_large_delivery_passes_through_whole(tmp_path: Path, auth: dict[str, str]) -> None:
    """A body near the 1 MiB limit crosses the socket in many pieces and is parsed whole."""
    settings = make_settings(tmp_path)
    events = [okta_event(f"large-{n:04d}", displayMessage="x" * 2000) for n in range(400)]
    body = delivery(events, "large-delivery")
    assert 900_000 < len(body) < settings.hook.max_body_bytes
    with TestClient(build_app(settings)) as client:
        response = client.post(HOOK, content=body, headers=auth)
        assert response.status_code == 204
        assert result_header(response) == "new=400 duplicate=0 quarantined=0"
        store = store_of(client)
        assert store.counts()["events"] == 400
        stored = store.get_event("large-0399")
        assert stored is not None


def test_refusals_from_the_child_keep_their_status_and_message(
    client: TestClient, auth: dict[str, str]
) -> None:
    """The body is parsed in the child; its 400s reach the caller unchanged, and requests
    refused and accepted in one batch each get their own answer."""
    good = delivery([okta_event("batch-neighbour")], "good")

    async def all_at_once() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return list(await asyncio.gather(
                http.post(HOOK, content=b"{not json", headers=auth),
                http.post(HOOK, content=good, headers=auth),
                http.post(HOOK, content=b"[1, 2]", headers=auth),
            ))

    bad_json, accepted, not_object = client.portal.call(all_at_once)  # type: ignore[union-attr]
    assert bad_json.status_code == 400
    assert bad_json.json()["error"] == "invalid_json"
    assert bad_json.json()["message"].startswith("body is not valid JSON")
    assert accepted.status_code == 204
    assert_error(not_object, 400, "not_envelope",
                 "body is JSON but not an object: expected an Okta event hook")
    assert store_of(client).counts() == {"events": 1, "deliveries": 1, "quarantined": 0}


def test_a_killed_child_answers_503_and_is_replaced(
    client: TestClient, auth: dict[str, str], slow_restart: float
) -> None:
    first = client.post(HOOK, content=delivery([okta_event("before-crash")], "before"),
                        headers=auth)
    assert first.status_code == 204
    before = snapshot(store_of(client))
    intake = child_of(client)
    process = intake._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)

    body = delivery([okta_event("during-restart")], "during")
    refused = client.post(HOOK, content=body, headers=auth)
    assert_error(refused, 503, "store_unavailable", "events could not be stored; retry later")
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["receiver"] == "the commit process is restarting"

    wait_until(lambda: client.get("/readyz").status_code == 200, "a new commit process",
               timeout=slow_restart + 30)
    assert intake.restarts == 1
    assert intake._process is not None and intake._process.pid != process.pid
    retry = client.post(HOOK, content=body, headers=auth)
    assert retry.status_code == 204
    assert result_header(retry) == "new=1 duplicate=0 quarantined=0"
    after = snapshot(store_of(client))
    assert set(before["events"]) <= set(after["events"])
    assert after["counts"] == {"events": 2, "deliveries": 2, "quarantined": 0}


def test_a_child_that_cannot_open_its_store_stops_the_start_without_the_password() -> None:
    password = "not-a-real-password-5d1c"
    intake = ProcessIntake(f"postgresql://factorflow:{password}@127.0.0.1:1/none")

    async def start() -> None:
        await intake.start()

    with pytest.raises(StoreUnavailable) as refused:
        asyncio.run(start())
    message = str(refused.value)
    assert message.startswith("the commit process did not start: could not open the store: ")
    assert password not in message
    assert intake._process is None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path, secret=SECRET, args=["--no-worker"]) as proc:
        proc.start()
        yield proc


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_child_of_a_killed_server_exits_by_itself(server: ServerProcess) -> None:
    response = server.post(delivery([okta_event("acknowledged-before-kill")]))
    assert response.status_code == 204
    children = _children(server.pid)
    assert len(children) == 1, children
    server.kill9()
    wait_until(lambda: not _alive(children[0]), "the orphaned commit process to exit",
               timeout=20)


def test_a_graceful_stop_stops_the_child_too(server: ServerProcess) -> None:
    children = _children(server.pid)
    assert len(children) == 1, children
    assert server.terminate() == 0
    deadline = time.monotonic() + 10
    while _alive(children[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(children[0])


def test_ctrl_c_stops_server_and_child_cleanly(server: ServerProcess) -> None:
    """Ctrl-C reaches the whole process group: the server stops gracefully and exits 0 (not
    with "Aborted!" and 1), the child with it, and what was acknowledged is stored."""
    body = delivery([okta_event("before-ctrl-c")], "ctrl-c")
    assert server.post(body).status_code == 204
    children = _children(server.pid)
    assert len(children) == 1, children
    for pid in (server.pid, children[0]):  # what a terminal's Ctrl-C does to its group
        os.kill(pid, signal.SIGINT)
    assert server.wait(30) == 0, server.log_tail()
    wait_until(lambda: not _alive(children[0]), "the commit process to exit", timeout=10)
    assert "Aborted" not in server.log_tail()
    store = open_store(server.store_url)
    try:
        assert store.counts()["events"] == 1
    finally:
        store.close()


@pytest.fixture
def thread_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, store={"intake": "thread"})


def test_the_thread_intake_answers_like_the_process(
    thread_settings: Settings, auth: dict[str, str]
) -> None:
    with TestClient(build_app(thread_settings)) as client:
        assert not isinstance(client.app.intake, ProcessIntake)  # type: ignore[attr-defined]
        body = delivery([okta_event("in-thread"), okta_event("in-thread-bad", published="no")])
        stored = client.post(HOOK, content=body, headers=auth)
        assert stored.status_code == 204
        assert result_header(stored) == "new=1 duplicate=0 quarantined=1"
        again = client.post(HOOK, content=body, headers=auth)
        assert result_header(again) == "new=0 duplicate=1 quarantined=1"
        refused = client.post(HOOK, content=b"{", headers=auth)
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_json"
        assert store_of(client).counts() == {"events": 1, "deliveries": 2, "quarantined": 2}


def test_a_child_that_hangs_at_shutdown_is_killed_and_its_requests_get_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP stands for a commit that never returns (a disk that hangs): the server's stop
    must still end, and the request that was waiting is answered 503, not left hanging."""
    monkeypatch.setattr(commit_process, "STOP_TIMEOUT_SECONDS", 1.0)
    url = f"sqlite:///{tmp_path / 'events.db'}"
    open_store(url).close()  # migrated
    intake = ProcessIntake(url)
    body = delivery([okta_event("waits-on-a-hung-child")], "hung")

    async def main() -> BaseException | None:
        await intake.start()
        assert intake._process is not None
        os.kill(intake._process.pid, signal.SIGSTOP)
        waiting = asyncio.create_task(intake.store("default", time.time(), body))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await intake.close()
        assert time.monotonic() - started < 10
        (result,) = await asyncio.gather(waiting, return_exceptions=True)
        return result if isinstance(result, BaseException) else None

    outcome = asyncio.run(main())
    assert isinstance(outcome, StoreUnavailable), outcome
    assert str(outcome) == "the commit process stopped"
    check = open_store(url, migrate=False)
    try:
        assert check.get_event("waits-on-a-hung-child") is None
    finally:
        check.close()


def test_a_child_that_dies_while_starting_fails_the_start_and_is_not_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit_process, "CHILD_COMMAND",
                        (sys.executable, "-c", "import sys; sys.exit(3)"))
    url = f"sqlite:///{tmp_path / 'events.db'}"
    open_store(url).close()
    intake = ProcessIntake(url)

    async def main() -> None:
        with pytest.raises(StoreUnavailable) as refused:
            await intake.start()
        assert str(refused.value) == (
            "the commit process did not start: the commit process stopped"
        )
        await asyncio.sleep(commit_process.RESTART_DELAY_SECONDS + 0.5)
        assert intake.restarts == 0
        assert intake._process is None and not intake.healthy

    asyncio.run(main())


class _RecordingTransport:
    """Forwards to the real transport and keeps what was written, one entry per write."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def test_each_body_goes_to_the_child_as_soon_as_its_request_reaches_the_intake(
    tmp_path: Path,
) -> None:
    """Decision 17: also while the child is busy (SIGSTOP holds it mid-batch), every body is
    written to it when its request reaches the intake, not gathered until the event loop's
    iteration ends; the child still commits them all."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    open_store(url).close()
    intake = ProcessIntake(url)
    bodies = [delivery([okta_event(f"at-once-{n}")], f"at-once-{n}") for n in range(4)]

    async def main() -> list[commit_process.Stored]:
        await intake.start()
        assert intake._process is not None and intake._transport is not None
        recorder = _RecordingTransport(intake._transport)
        intake._transport = recorder  # type: ignore[assignment]
        pid = intake._process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            first = asyncio.create_task(intake.store("default", time.time(), bodies[0]))
            await asyncio.sleep(0)
            rest = [asyncio.create_task(intake.store("default", time.time(), body))
                    for body in bodies[1:]]
            await asyncio.sleep(0)  # the three run up to their wait, in one loop iteration
            sent = []
            for data in recorder.writes:
                kind, org_length, body_length, _ = commit_process._HEAD.unpack_from(data)
                assert len(data) == commit_process._HEAD.size + org_length + body_length
                sent.append((kind, data[commit_process._HEAD.size + org_length:]))
            assert sent == [(commit_process.DELIVERY, body) for body in bodies]
        finally:
            os.kill(pid, signal.SIGCONT)
        stored = await asyncio.gather(first, *rest)
        await intake.close()
        return stored

    stored = asyncio.run(main())
    assert [(s.delivery_id, s.outcome.new) for s in stored] == [
        (f"at-once-{n}", 1) for n in range(4)
    ]
    check = open_store(url, migrate=False)
    try:
        assert all(check.get_event(f"at-once-{n}") is not None for n in range(4))
    finally:
        check.close()
