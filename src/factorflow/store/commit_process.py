"""The commit process: parsing and the group commit of hook deliveries in a child process.

``factorflow serve`` starts one child (``python -m factorflow.store.commit_process``) and talks
to it over a socket pair. The event loop writes each request's body (with its org and receipt
time) to the socket as soon as it has read it; the child reads whatever has arrived (at most
``max_batch`` bodies), parses each body, commits the events of all of them in one
transaction, and writes one answer for the whole batch: per delivery, what was stored, why the
body was refused (400), or that the commit failed (503). Answers come back in the order the
requests were sent. While the child commits, the next requests are read and queue up in the
socket, so each commit takes what arrived during the one before it.

Each body is written on its own, at once, rather than gathered into one write per loop
iteration: a body held back until the end of a busy iteration (one that answers a batch and
reads the next requests) kept the child waiting for work it could have started. One write
per request costs the loop little, and the child's batches still form while it commits
(decision 17).

Why a process (decision 14): in one process the commit thread's Python code and the event loop
share the interpreter lock, and each SQLite statement gives the lock up and must wait to get it
back; the loop sat idle a third of the time waiting for commits that were themselves waiting for
the lock. In its own process the commit runs on the other core.

Failure handling: if the child dies, every request waiting on it is answered 503 (Okta retries)
and a new child is started; a request that arrives meanwhile gets 503 at once. A commit that
the child finished after the server died is harmless: nothing was acknowledged, and Okta's retry
is recognised as a duplicate. The child exits when its socket closes (the server is gone).

Frames, parent to child: ``<BHId`` (kind, org length, body length, receipt time in seconds
since the epoch) and the two byte strings; kind 1 is a delivery, 2 asks the child to answer
what it has and exit, 3 carries the child's configuration (JSON) and comes first. Child to
parent: ``<I`` length and
a JSON array: ``["ready"]`` once the store is open, ``["failed", message]`` if it could not be
opened, then one array per batch with one entry per delivery: ``[0, delivery_id, total, new,
duplicate, quarantined]``, ``[1, status, code, message]`` (refused), ``[2, message]`` (commit
failed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson

from factorflow.errors import RejectedDelivery, StoreUnavailable
from factorflow.okta.payloads import parse_delivery
from factorflow.store.base import DeliveryOutcome, Receipt
from factorflow.store.group_commit import record_each
from factorflow.store.intake import ReceiptClock, Stored

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<BHId")
_LENGTH = struct.Struct("<I")
DELIVERY, STOP, CONFIG = 1, 2, 3
OK, REFUSED, FAILED = 0, 1, 2
START_TIMEOUT_SECONDS = 60.0
RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 30.0
CHILD_COMMAND = (sys.executable, "-m", "factorflow.store.commit_process")  # + the socket's fd
_READ_SIZE = 1 << 20


def _frame(kind: int, org: bytes, body: bytes, received: float = 0.0) -> bytes:
    return _HEAD.pack(kind, len(org), len(body), received) + org + body


# -- the event loop's side ------------------------------------------------------------------


class _Answers(asyncio.Protocol):
    """Reads the child's answer frames and hands each decoded array to ``on_answer``."""

    def __init__(self, on_answer: Callable[[list[Any]], None],
                 on_lost: Callable[[], None]) -> None:
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + size
            if len(buffer) < end:
                break
            self._on_answer(orjson.loads(memoryview(buffer)[start + _LENGTH.size:end]))
            start = end
        if start:
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()


class ProcessIntake:
    """Hands bodies to the commit process and waits for their answers (see the module doc)."""

    def __init__(
        self,
        store_url: str,
        *,
        max_batch: int = 32,
        on_new_events: Callable[[], None] | None = None,
        log_format: str = "json",
        log_level: str = "INFO",
    ) -> None:
        self._config = orjson.dumps({
            "store_url": store_url, "max_batch": max_batch,
            "log_format": log_format, "log_level": log_level,
        })
        self._on_new_events = on_new_events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._ready: asyncio.Future[None] | None = None
        self._closing = False
        self._restart: asyncio.TimerHandle | None = None
        self._started = False  # the current child reported its store open
        self._running = False  # start() succeeded and close() has not been called
        self._orgs: dict[str, bytes] = {}
        self.committed = 0
        self.restarts = 0

    @property
    def healthy(self) -> bool:
        return self._transport is not None and self._started

    async def start(self) -> None:
        """Start the child and wait until its store is open; StoreUnavailable if it fails."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._running = False
        await self._spawn()
        self._running = True  # from now on a lost child is replaced

    async def _spawn(self) -> None:
        assert self._loop is not None
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [*CHILD_COMMAND, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._ready = self._loop.create_future()
        self._waiting.clear()
        self._waiting.append(self._ready)
        transport, _ = await self._loop.create_unix_connection(
            lambda: _Answers(self._answered, self._lost), sock=ours
        )
        self._transport = transport
        transport.write(_frame(CONFIG, b"", self._config))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_SECONDS)
        except (TimeoutError, StoreUnavailable) as exc:
            self._stop_child()
            raise StoreUnavailable(f"the commit process did not start: {exc}") from None

    async def store(self, org: str, received: float, body: bytes) -> Stored:
        transport = self._transport
        if transport is None or self._closing or not self._started:
            raise StoreUnavailable("the commit process is not running")
        loop = self._loop
        assert loop is not None
        done: asyncio.Future[Stored] = loop.create_future()
        name = self._orgs.get(org)
        if name is None:
            name = self._orgs[org] = org.encode()
        transport.write(_frame(DELIVERY, name, body, received))  # at once: see the module doc
        self._waiting.append(done)
        return await done

    def _answered(self, answer: list[Any]) -> None:
        if answer and isinstance(answer[0], str):  # "ready" or "failed"
            ready = self._waiting.popleft()
            if answer[0] == "ready":
                self._started = True
                ready.set_result(None)
            else:
                ready.set_exception(StoreUnavailable(str(answer[1])))
            return
        new = False
        for entry in answer:
            done = self._waiting.popleft()
            kind = entry[0]
            if kind == OK:
                outcome = DeliveryOutcome(entry[2], entry[3], entry[4], entry[5])
                new = new or outcome.new > 0
                self.committed += 1
                if not done.done():
                    done.set_result(Stored(entry[1], outcome))
            elif done.done():  # the request went away meanwhile
                continue
            elif kind == REFUSED:
                done.set_exception(RejectedDelivery(entry[1], entry[2], entry[3]))
            else:
                done.set_exception(StoreUnavailable(entry[1]))
        if new and self._on_new_events is not None:
            self._on_new_events()

    def _lost(self) -> None:
        deliberate = self._transport is None  # closed by _stop_child or close()
        self._transport = None
        self._started = False
        waiting, self._waiting = self._waiting, collections.deque()
        for done in waiting:
            if not done.done():
                done.set_exception(StoreUnavailable("the commit process stopped"))
        if self._closing or deliberate or not self._running:
            return
        code = self._process.poll() if self._process is not None else None
        log.error("store.commit_process_lost", extra={"fields": {
            "exit_code": code, "pending": len(waiting),
            "restart_in_seconds": RESTART_DELAY_SECONDS,
        }})
        self._stop_child()
        if self._loop is not None and self._restart is None:
            self._restart = self._loop.call_later(RESTART_DELAY_SECONDS, self._respawn)

    def _respawn(self) -> None:
        assert self._loop is not None
        self._restart = None
        if self._closing:
            return
        self.restarts += 1
        task = self._loop.create_task(self._spawn())

        def started(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is not None:
                log.error("store.commit_process_restart_failed", extra={"fields": {
                    "error": None if task.cancelled() else str(task.exception()),
                }})
                if not self._closing and self._loop is not None and self._restart is None:
                    self._restart = self._loop.call_later(RESTART_DELAY_SECONDS, self._respawn)
            else:
                log.info("store.commit_process_restarted")

        task.add_done_callback(started)

    async def close(self) -> None:
        """Let the child commit and answer what it was sent, then stop it. A child that has
        not finished within STOP_TIMEOUT_SECONDS is killed; what it had not answered gets 503."""
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT_SECONDS
        if self._transport is not None:
            pending = [done for done in self._waiting if not done.done()]
            self._transport.write(_frame(STOP, b"", b""))
            if pending:
                await asyncio.wait(pending, timeout=STOP_TIMEOUT_SECONDS)
        process = self._process
        if process is not None:
            try:
                await asyncio.wait_for(loop.run_in_executor(None, process.wait),
                                       max(0.1, deadline - loop.time()))
            except TimeoutError:
                log.error("store.commit_process_killed", extra={"fields": {
                    "reason": f"not stopped within {STOP_TIMEOUT_SECONDS:g} s"}})
                process.kill()
                await loop.run_in_executor(None, process.wait)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._process = None
        self._started = False

    def _stop_child(self) -> None:
        self._started = False
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


# -- the child ------------------------------------------------------------------------------


_Frame = tuple[int, str, float, bytes]  # kind, org, receipt time, body


class _Child:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        # recv() would allocate (and the allocator map and unmap) a fresh megabyte per call.
        self._read = memoryview(bytearray(_READ_SIZE))
        self._store: Any = None
        self._max_batch = 32
        self._clock = ReceiptClock()
        self._orgs: dict[bytes, str] = {}

    def _send(self, answer: list[Any]) -> None:
        data = orjson.dumps(answer)
        self._sock.sendall(_LENGTH.pack(len(data)) + data)

    def _frames(self) -> list[_Frame] | None:
        """The complete frames now in the buffer (at most max_batch); blocks until there is
        at least one. None once the socket is closed."""
        frames: list[_Frame] = []
        buffer = self._buffer
        while True:
            start = 0
            with memoryview(buffer) as view:  # slices of a view are copied once, not twice
                while len(frames) < self._max_batch and len(buffer) - start >= _HEAD.size:
                    kind, org_len, body_len, received = _HEAD.unpack_from(buffer, start)
                    begin = start + _HEAD.size
                    end = begin + org_len + body_len
                    if len(buffer) < end:
                        break
                    name = bytes(view[begin:begin + org_len])
                    org = self._orgs.get(name)
                    if org is None:
                        org = self._orgs[name] = name.decode()
                    frames.append((kind, org, received, bytes(view[begin + org_len:end])))
                    start = end
            if start:
                del buffer[:start]
            if frames:
                return frames
            size = self._sock.recv_into(self._read)
            if not size:
                return None
            buffer += self._read[:size]

    def run(self) -> int:
        # Ctrl-C and SIGTERM reach the whole process group; the server handles them and then
        # tells this process to finish (STOP), so that requests in flight are still answered.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        frames = self._frames()
        if not frames or frames[0][0] != CONFIG:
            return 2
        config = orjson.loads(frames[0][3])
        from factorflow.logs import configure_logging

        configure_logging(config["log_format"], config["log_level"])
        self._max_batch = int(config["max_batch"])
        try:
            from factorflow.store.factory import open_store

            self._store = open_store(config["store_url"], migrate=False)
            self._store.check_writable()
        except StoreUnavailable as exc:  # told to the parent, which refuses to start
            self._send(["failed", f"could not open the store: {exc}"])
            return 1
        except Exception as exc:
            self._send(["failed", f"could not open the store: {type(exc).__name__}"])
            return 1
        self._send(["ready"])
        rest: list[_Frame] | None = frames[1:]
        try:
            while rest is not None:
                deliveries = [frame for frame in rest if frame[0] == DELIVERY]
                if deliveries:
                    self._send(self._commit(deliveries))
                if any(frame[0] == STOP for frame in rest):
                    break
                rest = self._frames()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server is gone; nobody waits for an answer
        finally:
            self._store.close()
        return 0

    def _commit(self, frames: list[_Frame]) -> list[list[Any]]:
        """One answer per frame, in order: refused bodies answered at once, the others after
        their batch's commit."""
        answers: list[list[Any]] = []
        receipts: list[Receipt] = []
        positions: list[int] = []  # where each receipt's answer goes
        for _, org, received, body in frames:
            try:
                delivery = parse_delivery(body)
            except RejectedDelivery as refused:
                answers.append([REFUSED, refused.status, refused.code, refused.message])
                continue
            except Exception:  # a bug in parsing: answer 503, keep serving the others
                log.exception("store.parse_crashed")
                answers.append([FAILED, "internal error while parsing"])
                continue
            positions.append(len(answers))
            answers.append([])
            receipts.append(Receipt(
                delivery_id=delivery.delivery_id, hook_id=delivery.hook_id,
                received_at=self._clock.format(received), org=org, delivery=delivery,
            ))
        if receipts:
            results = record_each(self._store, receipts)
            for position, receipt, result in zip(positions, receipts, results, strict=True):
                answers[position] = (
                    [OK, receipt.delivery_id, result.total, result.new, result.duplicate,
                     result.quarantined]
                    if isinstance(result, DeliveryOutcome) else [FAILED, str(result)]
                )
        return answers


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    try:
        return _Child(sock).run()
    finally:
        sock.close()


if __name__ == "__main__":
    raise SystemExit(main())
