"""Receiver benchmark: the factorflow hook endpoint against the same HTTP stack answering 204.

Starts two real server processes on 127.0.0.1 with the uvicorn settings ``factorflow serve``
uses: the *ceiling* (bench/bare_app.py, drains the body and answers 204) and the *receiver*
(``factorflow serve`` on a fresh SQLite store in a temporary data dir). Then, in one run:

1. closed-loop maximum throughput (wrk, 64 connections, 1 thread; ceiling and receiver runs
   alternate so machine noise hits both) with ~2 KB single-event deliveries and with 20-event
   batches, every request carrying fresh event uuids so every request inserts rows;
2. open-loop latency at a fixed 1,000 deliveries/s (single-event), measured from each request's
   scheduled send time, so a stalled server is not hidden by a client that waits for it;
3. a store check: the events the receiver stored equal the events it acknowledged.

It prints a table with the ratios and PASS/MISS against the targets and writes
bench/results/receiver-<timestamp>.json. ``--quick`` is a smoke run of a few seconds.

    python bench/receiver.py            # about five and a half minutes
    python bench/receiver.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import orjson

from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from procmem import read_kib

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
LUA_SCRIPT = BENCH_DIR / "okta_delivery.lua"
BARE_APP = BENCH_DIR / "bare_app.py"

HOST = "127.0.0.1"
HOOK_PATH = "/hooks/okta"
MARKER = b"@@ID@@"
SECRET = "Bearer bench-" + secrets.token_urlsafe(24)

# Targets from the issue.
THROUGHPUT_RATIO_TARGET = 0.35
P99_TARGET_MS = 50.0
FIXED_RATE = 1000.0
BATCH_SIZES = (1, 20)


class BenchError(Exception):
    """The benchmark cannot produce a trustworthy figure (a server failed, errors appeared)."""


@dataclass(frozen=True)
class Profile:
    warmup_s: int
    measure_s: int
    repeats: int
    fixed_warmup_s: float
    fixed_s: float
    connections: int = 64
    fixed_connections: int = 32


FULL = Profile(warmup_s=2, measure_s=10, repeats=5, fixed_warmup_s=1.0, fixed_s=10.0)
QUICK = Profile(warmup_s=1, measure_s=2, repeats=1, fixed_warmup_s=0.5, fixed_s=2.0)


# -- payloads ---------------------------------------------------------------------------------


def delivery_template(events: int) -> bytes:
    """The bundled sample delivery, compact, with ``events`` copies of its event; every id to
    make unique (the envelope's eventId, then each event's uuid) is written as MARKER."""
    sample = resources.files("factorflow").joinpath("examples/delivery-mfa-activate.json")
    document = orjson.loads(sample.read_bytes())
    event = document["data"]["events"][0]
    document["eventId"] = MARKER.decode()
    document["data"]["events"] = [{**event, "uuid": MARKER.decode()} for _ in range(events)]
    return orjson.dumps(document)


def body_size(template: bytes) -> int:
    """The size of a delivery made from ``template`` (each marker becomes a 36-char id)."""
    return len(template) + (36 - len(MARKER)) * template.count(MARKER)


def make_id(run_id: str, thread: int, slot: int, counter: int) -> str:
    """The id layout the Lua script uses too: unique per run, thread, slot and request."""
    return f"{run_id}-{thread:04x}-{slot:04x}-8000-{counter:012x}"


class BodyMaker:
    """Fills a template with fresh ids, as okta_delivery.lua does, for the Python generator."""

    def __init__(self, template: bytes, run_id: str, thread: int = 0xFFFF) -> None:
        self.pieces = template.split(MARKER)
        self.run_id = run_id
        self.thread = thread
        self.counter = 0

    def next(self) -> bytes:
        self.counter += 1
        ids = [
            make_id(self.run_id, self.thread, slot, self.counter).encode()
            for slot in range(len(self.pieces) - 1)
        ]
        out = [self.pieces[0]]
        for ident, piece in zip(ids, self.pieces[1:], strict=True):
            out += (ident, piece)
        return b"".join(out)


_run_ids: set[str] = set()


def new_run_id() -> str:
    while True:
        run_id = secrets.token_hex(4)
        if run_id not in _run_ids:
            _run_ids.add(run_id)
            return run_id


# -- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int,
                 ready_path: str, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.ready_path = ready_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{HOOK_PATH}"

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.port}{self.ready_path}"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=1.0) as answer:
                    if answer.status in (200, 204):
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not become ready in {timeout:.0f} s\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name} is not running\n{self.log_tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far of the server process and of every process it
        started (the receiver's commit process), Linux only, else None."""
        if self.proc is None:
            return None
        ticks = _tree_cpu_ticks(self.proc.pid)
        return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> dict[str, int] | None:
        """Resident memory of the server and its commit process (Linux only, else None)."""
        if self.proc is None or not Path("/proc").is_dir():
            return None
        return _tree_memory_kib(self.proc.pid)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 20.0) -> None:
        """``sig``, then SIGKILL if the process has not ended after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text.splitlines()[-lines:])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (the receiver's commit process)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            child = _stat_fields(int(entry))
            if child is not None:
                parents.setdefault(int(child[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def _tree_cpu_ticks(pid: int) -> int | None:
    """CPU ticks of ``pid`` and its descendants: their own time plus that of their children
    that have ended (cutime, cstime)."""
    if _stat_fields(pid) is None:
        return None
    total = 0
    for current in _tree_pids(pid):
        stat = _stat_fields(current)
        if stat is not None:
            total += sum(int(value) for value in stat[11:15])
    return total


def _tree_memory_kib(pid: int) -> dict[str, int] | None:
    """Resident memory of ``pid`` and its descendants, summed: now (VmRSS) and each process's
    peak so far (VmHWM; their sum bounds the peak of the whole from above)."""
    readings = [r for r in map(read_kib, _tree_pids(pid)) if r is not None]
    if not readings:
        return None
    return {key: sum(r[key] for r in readings) for key in ("rss_kib", "peak_kib")}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def receiver_command() -> list[str]:
    script = Path(sys.executable).with_name("factorflow")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "factorflow.cli"]


def make_servers(
    workdir: Path, store_url: str | None, worker: bool
) -> tuple[Server, Server, str]:
    data_dir = workdir / "data"
    env = clean_env()
    env.update({
        "FACTORFLOW_DATA_DIR": str(data_dir),
        "FACTORFLOW_HOOK__SECRET": SECRET,
        "FACTORFLOW_HOOK__PATH": HOOK_PATH,
        "FACTORFLOW_LOG__LEVEL": "WARNING",
    })
    url = store_url or f"sqlite:///{data_dir / 'factorflow.db'}"
    if store_url:
        env["FACTORFLOW_STORE__URL"] = store_url
    ceiling_port, receiver_port = free_port(), free_port()
    ceiling = Server(
        "ceiling", [sys.executable, str(BARE_APP), "--host", HOST, "--port", str(ceiling_port)],
        clean_env(), ceiling_port, "/", workdir / "ceiling.log",
    )
    receiver = Server(
        "receiver",
        [*receiver_command(), "serve", "--host", HOST, "--port", str(receiver_port),
         "--worker" if worker else "--no-worker"],
        env, receiver_port, "/readyz", workdir / "receiver.log",
    )
    return ceiling, receiver, url


# -- load generators --------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One load run against one server."""

    server: str
    events_per_delivery: int
    phase: str  # "warmup", "measure", "fixed"
    generator: str
    duration_s: float
    requests: int  # answered with a 2xx
    sent: int  # requests written, answered or not
    errors: dict[str, int]
    acknowledged: int  # all 2xx answers, warm-up included (what the store must hold)
    latency_ms: dict[str, float]
    offered_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server, "events_per_delivery": self.events_per_delivery,
            "phase": self.phase, "generator": self.generator,
            "duration_s": round(self.duration_s, 3), "requests": self.requests,
            "sent": self.sent, "deliveries_per_s": round(self.rate, 1),
            "events_per_s": round(self.rate * self.events_per_delivery, 1),
            "errors": self.errors, "latency_ms": self.latency_ms,
            "offered_rate": self.offered_rate, **self.extra,
        }


def find_wrk(allow_install: bool) -> str | None:
    found = shutil.which("wrk")
    if found or not allow_install:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    print("wrk is not installed; installing the Debian package wrk ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)
    return shutil.which("wrk")


def run_wrk(wrk: str, server: Server, template: Path, events: int, seconds: int,
            connections: int, phase: str) -> LoadResult:
    argv = [
        wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(LUA_SCRIPT), server.url, "--", str(template), new_run_id(), SECRET,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next(
        (ln for ln in done.stdout.splitlines() if ln.startswith("BENCH-RESULT ")), None
    )
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH-RESULT "))
    errors = {k: int(v) for k, v in data["errors"].items()}
    lat = {k: round(float(v) / 1000.0, 3) for k, v in data["latency_us"].items()}
    answered = int(data["requests"])
    return LoadResult(
        server=server.name, events_per_delivery=events, phase=phase, generator="wrk",
        duration_s=data["duration_us"] / 1e6, requests=answered - errors["status"],
        sent=int(data["sent"]), errors=errors, acknowledged=answered - errors["status"],
        latency_ms=lat,
    )


def _request_head(port: int, length: int) -> bytes:
    return (
        f"POST {HOOK_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: {SECRET}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for this benchmark."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def post(self, port: int, body: bytes) -> tuple[int, dict[bytes, bytes]]:
        self.writer.write(_request_head(port, len(body)) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for raw in lines[1:]:
            if raw:
                name, _, value = raw.partition(b":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        if length:
            await self.reader.readexactly(length)
        return status, headers

    def close(self) -> None:
        self.writer.close()


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50": round(pick(0.50), 3), "p90": round(pick(0.90), 3), "p99": round(pick(0.99), 3),
        "max": round(ordered[-1], 3), "mean": round(statistics.fmean(ordered), 3),
    }


@dataclass
class OpenLoop:
    """One open-loop run over several receivers."""

    sent: int
    answered: int  # 2xx, warm-up included
    window_answered: int
    window_s: float
    latency_ms: dict[str, float]
    dispatch_lag_ms: dict[str, float]
    errors: dict[str, int]
    first_scheduled: float  # perf_counter of the first request's scheduled send time
    acked_bodies: list[int] = field(default_factory=list)  # indexes answered with 2xx

    @property
    def rate(self) -> float:
        return self.window_answered / self.window_s if self.window_s else 0.0


async def open_loop(ports: list[int], body: Callable[[int], bytes], rate: float, total: int,
                    measured_from: int, connections: int) -> OpenLoop:
    """Send ``total`` requests on a fixed schedule (``rate`` per second), request i to receiver
    i mod K, each over one of that receiver's keep-alive connections; each latency runs from
    the request's scheduled send time to its answer, so time spent waiting for a free
    connection counts too."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    per_port = max(1, connections // len(ports))
    idle: dict[int, asyncio.Queue[Connection]] = {}
    for port in ports:
        idle[port] = asyncio.Queue()
        for _ in range(per_port):
            idle[port].put_nowait(await Connection.open(port))
    latencies: list[float] = []
    lag: list[float] = []
    errors = {"status": 0, "timeout": 0, "connection": 0}
    acked: list[int] = []
    window_answered = 0
    last_done = 0.0
    start = clock() + 0.05

    async def one(index: int, scheduled: float, payload: bytes) -> None:
        nonlocal window_answered, last_done
        port = ports[index % len(ports)]
        conn = await idle[port].get()
        try:
            status, _ = await asyncio.wait_for(conn.post(port, payload), 10.0)
        except TimeoutError:
            errors["timeout"] += 1
            conn.close()
            conn = await Connection.open(port)
            return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors["connection"] += 1
            conn.close()
            conn = await Connection.open(port)
            return
        finally:
            idle[port].put_nowait(conn)
        finished = clock()
        if not 200 <= status < 300:
            errors["status"] += 1
            return
        acked.append(index)
        if index >= measured_from:
            window_answered += 1
            latencies.append((finished - scheduled) * 1000.0)
            last_done = max(last_done, finished)

    tasks: list[asyncio.Task[None]] = []
    index = 0
    while index < total:
        now = clock()
        while index < total and start + index / rate <= now:
            scheduled = start + index / rate
            lag.append((now - scheduled) * 1000.0)
            tasks.append(loop.create_task(one(index, scheduled, body(index))))
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, start + index / rate - clock()))
    await asyncio.gather(*tasks)
    for queue in idle.values():
        while not queue.empty():
            queue.get_nowait().close()
    window_start = start + measured_from / rate
    planned = (total - measured_from) / rate
    return OpenLoop(
        sent=total, answered=len(acked), window_answered=window_answered,
        window_s=max(planned, last_done - window_start), latency_ms=_percentiles(latencies),
        dispatch_lag_ms=_percentiles(lag), errors=errors, first_scheduled=start,
        acked_bodies=acked,
    )


async def _open_loop(server: Server, template: bytes, rate: float, warmup: float,
                     seconds: float, connections: int) -> LoadResult:
    """:func:`open_loop` against one server, as a load result (its first ``warmup`` seconds
    of requests not measured)."""
    maker = BodyMaker(template, new_run_id())
    total = int(rate * (warmup + seconds))
    run = await open_loop([server.port], lambda _index: maker.next(), rate, total,
                          int(rate * warmup), connections)
    return LoadResult(
        server=server.name, events_per_delivery=template.count(MARKER) - 1, phase="fixed",
        generator="python-open-loop", duration_s=max(seconds, run.window_s),
        requests=run.window_answered, sent=total, errors=run.errors, acknowledged=run.answered,
        latency_ms=run.latency_ms, offered_rate=rate,
        extra={"generator_dispatch_lag_ms": run.dispatch_lag_ms, "connections": connections},
    )


async def _closed_loop(server: Server, template: bytes, seconds: float,
                       connections: int, phase: str) -> LoadResult:
    """Fallback when wrk is unavailable: each connection sends its next request as soon as
    the previous one is answered. Slower than wrk; the client may be the bottleneck."""
    maker = BodyMaker(template, new_run_id())
    latencies: list[float] = []
    errors = {"status": 0, "timeout": 0, "connection": 0}
    answered = sent = 0
    conns = [await Connection.open(server.port) for _ in range(connections)]
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(conn: Connection) -> None:
        nonlocal answered, sent
        while time.perf_counter() < deadline:
            body = maker.next()
            sent += 1
            t0 = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(conn.post(server.port, body), 10.0)
            except TimeoutError:
                errors["timeout"] += 1
                return
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors["connection"] += 1
                return
            if 200 <= status < 300:
                answered += 1
                latencies.append((time.perf_counter() - t0) * 1000.0)
            else:
                errors["status"] += 1

    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return LoadResult(
        server=server.name, events_per_delivery=template.count(MARKER) - 1, phase=phase,
        generator="python-closed-loop", duration_s=elapsed, requests=answered, sent=sent,
        errors=errors, acknowledged=answered, latency_ms=_percentiles(latencies),
    )


def run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# -- the store check --------------------------------------------------------------------------


class StoreCheck:
    """Counts in the receiver's store before and after each load run against it."""

    def __init__(self, store: SqlEventStore) -> None:
        self.store = store
        self.checks: list[dict[str, Any]] = []

    def settled_counts(self, timeout: float = 10.0) -> dict[str, int]:
        """Counts once in-flight commits (requests wrk abandoned when it stopped) landed."""
        previous = self.store.counts()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            current = self.store.counts()
            if current == previous:
                return current
            previous = current
        return previous

    def record(self, before: dict[str, int], after: dict[str, int], run: LoadResult) -> None:
        n = run.events_per_delivery
        stored = after["events"] - before["events"]
        ledger = after["deliveries"] - before["deliveries"]
        acked, sent = run.acknowledged * n, run.sent * n
        ok = acked <= stored <= sent and run.acknowledged <= ledger <= run.sent
        ok = ok and after["quarantined"] == before["quarantined"]
        self.checks.append({
            "phase": run.phase, "events_per_delivery": n, "stored_events": stored,
            "acknowledged_events": acked, "sent_events": sent, "ledger_rows": ledger,
            "quarantined": after["quarantined"] - before["quarantined"], "ok": ok,
        })
        if not ok:
            raise BenchError(
                f"store check failed after a {run.phase} run: stored {stored} events, "
                f"acknowledged {acked}, sent {sent}; ledger rows {ledger}; "
                f"quarantined {after['quarantined'] - before['quarantined']}"
            )


# -- the run ----------------------------------------------------------------------------------


def _check_errors(run: LoadResult) -> None:
    if any(run.errors.values()):
        raise BenchError(
            f"{run.server} answered with errors during a {run.phase} run "
            f"({run.events_per_delivery}-event deliveries): {run.errors}; figures discarded"
        )


@dataclass
class Plan:
    profile: Profile
    wrk: str | None
    templates: dict[int, Path]
    bodies: dict[int, bytes]


def closed_loop(plan: Plan, server: Server, events: int, seconds: int, phase: str) -> LoadResult:
    profile = plan.profile
    cpu_before = server.cpu_seconds()
    if plan.wrk:
        run = run_wrk(plan.wrk, server, plan.templates[events], events, seconds,
                      profile.connections, phase)
    else:
        run = run_async(_closed_loop(server, plan.bodies[events], seconds,
                                     profile.connections, phase))
    cpu_after = server.cpu_seconds()
    if cpu_before is not None and cpu_after is not None and run.requests:
        run.extra["server_cpu_ms_per_delivery"] = round(
            (cpu_after - cpu_before) * 1000.0 / run.sent, 4
        )
        run.extra["server_cpu_share"] = round((cpu_after - cpu_before) / run.duration_s, 3)
    memory = server.memory_kib()
    if memory is not None:
        run.extra["server_memory_kib"] = memory
    return run


def measure(plan: Plan, ceiling: Server, receiver: Server, check: StoreCheck,
            progress: Callable[[str], None]) -> list[LoadResult]:
    profile = plan.profile
    runs: list[LoadResult] = []

    def against(server: Server, events: int, seconds: int, phase: str) -> LoadResult:
        server.check_alive()
        before = check.settled_counts() if server is receiver else None
        run = closed_loop(plan, server, events, seconds, phase)
        if before is not None:
            check.record(before, check.settled_counts(), run)
        _check_errors(run)
        runs.append(run)
        return run

    for repeat in range(profile.repeats):
        # Each repeat measures the two servers back to back, the order alternating so that
        # neither always runs on the warmer (or more tired) machine.
        order = (ceiling, receiver) if repeat % 2 == 0 else (receiver, ceiling)
        for events in BATCH_SIZES:
            for server in order:
                against(server, events, profile.warmup_s, "warmup")
                run = against(server, events, profile.measure_s, "measure")
                progress(
                    f"  closed loop #{repeat + 1} {server.name:<8} {events:>2}-event: "
                    f"{run.rate:>9,.0f} deliveries/s  p99 {run.latency_ms['p99']:.1f} ms"
                )
    for server in (ceiling, receiver):
        server.check_alive()
        before = check.settled_counts() if server is receiver else None
        run = run_async(_open_loop(
            server, plan.bodies[1], FIXED_RATE, profile.fixed_warmup_s, profile.fixed_s,
            profile.fixed_connections,
        ))
        if before is not None:
            check.record(before, check.settled_counts(), run)
        memory = server.memory_kib()
        if memory is not None:
            run.extra["server_memory_kib"] = memory
        _check_errors(run)
        runs.append(run)
        progress(
            f"  open loop {FIXED_RATE:,.0f}/s {server.name:<8}: achieved {run.rate:,.0f}/s  "
            f"p50 {run.latency_ms['p50']:.2f} ms  p99 {run.latency_ms['p99']:.2f} ms"
        )
    return runs


def measured_runs(runs: list[LoadResult], name: str, events: int) -> list[LoadResult]:
    """The measured (not warm-up) closed-loop runs against one server, in order."""
    return [r for r in runs
            if r.server == name and r.events_per_delivery == events and r.phase == "measure"]


def pair_ratios(runs: list[LoadResult], events: int) -> list[float]:
    """Receiver / ceiling deliveries per second for each repeat, the two runs of a repeat
    being adjacent in time."""
    return [
        receiver.rate / ceiling.rate
        for ceiling, receiver in zip(measured_runs(runs, "ceiling", events),
                                     measured_runs(runs, "receiver", events), strict=True)
        if ceiling.rate
    ]


def summarise(runs: list[LoadResult], checks: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"closed_loop": {}, "fixed_rate": {}, "targets": {}}
    for events in BATCH_SIZES:
        row: dict[str, Any] = {}
        for name in ("ceiling", "receiver"):
            measured = measured_runs(runs, name, events)
            row[name] = {
                "deliveries_per_s": round(statistics.median(r.rate for r in measured), 1),
                "events_per_s": round(
                    statistics.median(r.rate for r in measured) * events, 1
                ),
                "p50_ms": statistics.median(r.latency_ms["p50"] for r in measured),
                "p99_ms": statistics.median(r.latency_ms["p99"] for r in measured),
                "runs": [round(r.rate, 1) for r in measured],
                "cpu_ms_per_delivery": statistics.median(
                    r.extra.get("server_cpu_ms_per_delivery", 0.0) for r in measured
                ),
            }
        # The ratio of each ceiling run to the receiver run next to it, then their median:
        # the machine's speed drifts by tens of percent within minutes, much less within one
        # pair of adjacent runs. The ratio of the two medians is kept for comparison.
        pairs = pair_ratios(runs, events)
        ratio = statistics.median(pairs) if pairs else 0.0
        row["ratio"] = round(ratio, 4)
        row["pair_ratios"] = [round(r, 4) for r in pairs]
        ceiling_rate = row["ceiling"]["deliveries_per_s"]
        row["ratio_of_medians"] = (
            round(row["receiver"]["deliveries_per_s"] / ceiling_rate, 4) if ceiling_rate else 0.0
        )
        # Server CPU per delivery, ceiling / receiver: steadier than the rates on a busy machine.
        receiver_cpu = row["receiver"]["cpu_ms_per_delivery"]
        row["cpu_cost_ratio"] = (
            round(row["ceiling"]["cpu_ms_per_delivery"] / receiver_cpu, 4) if receiver_cpu else None
        )
        summary["closed_loop"][f"{events}-event"] = row
        summary["targets"][f"throughput_ratio_{events}_event"] = {
            "target": f">= {THROUGHPUT_RATIO_TARGET:.0%} of the ceiling",
            "value": round(ratio, 4), "pass": ratio >= THROUGHPUT_RATIO_TARGET,
        }
    for run in runs:
        if run.phase == "fixed":
            summary["fixed_rate"][run.server] = {
                "offered_per_s": run.offered_rate, "achieved_per_s": round(run.rate, 1),
                **{f"{k}_ms": v for k, v in run.latency_ms.items()},
                "generator_dispatch_lag_ms": run.extra.get("generator_dispatch_lag_ms"),
            }
    fixed = summary["fixed_rate"].get("receiver", {})
    kept_up = fixed.get("achieved_per_s", 0.0) >= 0.98 * FIXED_RATE
    p99 = fixed.get("p99_ms", float("inf"))
    summary["targets"]["receiver_p99_at_1000_per_s"] = {
        "target": f"p99 <= {P99_TARGET_MS:.0f} ms at {FIXED_RATE:,.0f} deliveries/s",
        "value_ms": p99, "achieved_per_s": fixed.get("achieved_per_s"),
        "pass": p99 <= P99_TARGET_MS and kept_up,
    }
    summary["memory"] = memory_summary(runs)
    summary["store_check"] = {
        "stored_events": sum(c["stored_events"] for c in checks),
        "acknowledged_events": sum(c["acknowledged_events"] for c in checks),
        "sent_events": sum(c["sent_events"] for c in checks),
        "ok": all(c["ok"] for c in checks),
    }
    return summary


def memory_summary(runs: list[LoadResult]) -> dict[str, Any]:
    """Resident memory of each server (with the receiver's commit process) after its first
    measured run and at the end, its peak, and the receiver's peak against the ceiling's."""
    summary: dict[str, Any] = {}
    for name in ("ceiling", "receiver"):
        seen = [(r, r.extra["server_memory_kib"]) for r in runs
                if r.server == name and "server_memory_kib" in r.extra]
        measured = [(r, m) for r, m in seen if r.phase == "measure"]
        if not measured:
            return {}
        first_run, first = measured[0]
        after_first = runs.index(first_run)
        served = sum(r.sent for r in runs[after_first + 1:] if r.server == name)
        last = seen[-1][1]
        summary[name] = {
            "after_first_run_mib": round(first["rss_kib"] / 1024, 1),
            "at_end_mib": round(last["rss_kib"] / 1024, 1),
            "peak_mib": round(max(m["peak_kib"] for _, m in seen) / 1024, 1),
            "deliveries_after_first_run": served,
        }
    summary["peak_ratio"] = round(
        summary["receiver"]["peak_mib"] / summary["ceiling"]["peak_mib"], 2
    )
    return summary


def render(summary: dict[str, Any], plan: Plan, meta: dict[str, Any]) -> str:
    profile = plan.profile
    generator = "wrk" if plan.wrk else "Python closed-loop generator (not wrk)"
    lines = [
        "",
        f"factorflow receiver benchmark - {meta['cpus']} CPUs, Python {meta['python']}, "
        f"uvicorn {meta['uvicorn']} ({meta['loop']}, {meta['http']}), store {meta['store']}, "
        f"workflow worker {'on' if meta['receiver_worker'] else 'off'}",
        f"closed loop: {generator}, {profile.connections} connections, "
        f"{profile.measure_s} s measured after {profile.warmup_s} s warm-up; "
        f"figures: median of {profile.repeats} runs; ratio: median of the "
        f"{profile.repeats} adjacent ceiling/receiver pairs",
        "",
        f"{'':<22}{'ceiling':>14}{'receiver':>14}{'ratio':>9}   target",
    ]
    for events in BATCH_SIZES:
        row = summary["closed_loop"][f"{events}-event"]
        target = summary["targets"][f"throughput_ratio_{events}_event"]
        size = body_size(plan.bodies[events]) / 1024
        lines.append(
            f"{f'{events}-event ({size:.1f} KB)':<22}"
            f"{row['ceiling']['deliveries_per_s']:>10,.0f} d/s"
            f"{row['receiver']['deliveries_per_s']:>10,.0f} d/s"
            f"{row['ratio']:>9.1%}   >= {THROUGHPUT_RATIO_TARGET:.0%} "
            f"{'PASS' if target['pass'] else 'MISS'}"
        )
        lines.append(
            f"{'  ratio per pair':<22}{'':>28}"
            + "  ".join(f"{r:.1%}" for r in row["pair_ratios"])
            + f"   (ratio of medians {row['ratio_of_medians']:.1%})"
        )
        lines.append(
            f"{'  p50 / p99 ms':<22}"
            f"{row['ceiling']['p50_ms']:>6.1f} / {row['ceiling']['p99_ms']:<5.1f}"
            f"{row['receiver']['p50_ms']:>7.1f} / {row['receiver']['p99_ms']:<5.1f}"
        )
        if events > 1:
            lines.append(
                f"{'  events/s':<22}{row['ceiling']['events_per_s']:>14,.0f}"
                f"{row['receiver']['events_per_s']:>14,.0f}"
            )
        if row["cpu_cost_ratio"]:
            lines.append(
                f"{'  server CPU ms/deliv.':<22}{row['ceiling']['cpu_ms_per_delivery']:>14.3f}"
                f"{row['receiver']['cpu_ms_per_delivery']:>14.3f}{row['cpu_cost_ratio']:>9.1%}"
                "   (CPU ceiling/receiver)"
            )
    lines += [
        "",
        f"open loop at {FIXED_RATE:,.0f} deliveries/s (1-event), {profile.fixed_s:g} s, "
        "latency from the scheduled send time:",
        f"{'':<12}{'achieved/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for name in ("ceiling", "receiver"):
        fixed = summary["fixed_rate"][name]
        lines.append(
            f"{name:<12}{fixed['achieved_per_s']:>11,.0f}{fixed['p50_ms']:>9.2f}"
            f"{fixed['p99_ms']:>9.2f}{fixed['max_ms']:>9.2f}"
        )
    target = summary["targets"]["receiver_p99_at_1000_per_s"]
    lines.append(
        f"receiver p99 <= {P99_TARGET_MS:.0f} ms at {FIXED_RATE:,.0f}/s: "
        f"{'PASS' if target['pass'] else 'MISS'}"
    )
    memory = summary.get("memory")
    if memory:
        ceiling, receiver = memory["ceiling"], memory["receiver"]
        lines += [
            "",
            "memory, MiB resident (the receiver with its commit process; peak: the sum of each "
            "process's peak):",
            f"{'':<12}{'peak':>8}{'after 1st run':>15}{'at the end':>12}",
            f"{'ceiling':<12}{ceiling['peak_mib']:>8.1f}{ceiling['after_first_run_mib']:>15.1f}"
            f"{ceiling['at_end_mib']:>12.1f}",
            f"{'receiver':<12}{receiver['peak_mib']:>8.1f}"
            f"{receiver['after_first_run_mib']:>15.1f}{receiver['at_end_mib']:>12.1f}"
            f"   ({receiver['deliveries_after_first_run']:,} deliveries between the two)",
            f"receiver / ceiling peak: {memory['peak_ratio']:.2f}x",
        ]
    check = summary["store_check"]
    lines += [
        "",
        f"store check: {check['stored_events']:,} events stored, "
        f"{check['acknowledged_events']:,} acknowledged "
        f"(+{check['sent_events'] - check['acknowledged_events']:,} sent but cut off when a "
        f"load run stopped): {'OK' if check['ok'] else 'FAILED'}",
        f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']} "
        "(a shared machine makes every figure noisy)",
        "CPU probe, us of CPU per iteration (lower is faster), before: "
        f"{_probe_text(meta.get('core_probe_before'))}; after: "
        f"{_probe_text(meta.get('core_probe_after'))}",
    ]
    return "\n".join(lines)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_result(result: dict[str, Any], output: Path | None, benchmark: str,
                 started: datetime) -> None:
    """The result as JSON to ``output``, by default a file named after the benchmark and its
    start time in ``RESULTS_DIR``."""
    if output is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        output = RESULTS_DIR / f"{benchmark}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresult written to {output}")


def _meta(store_url: str) -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    return {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "uvicorn": package_version("uvicorn"),
        "factorflow": package_version("factorflow"), "loop": loop, "http": http,
        "store": store_url.split(":", 1)[0],
    }


# A fixed piece of Python work (parse and write the 1-event delivery) run on one CPU at a time.
_CORE_PROBE = """
import os, sys, time, orjson
os.sched_setaffinity(0, {int(sys.argv[1])})
body = sys.stdin.buffer.read()
seconds = float(sys.argv[2])
rounds = 0
cpu, wall = time.process_time(), time.perf_counter()
while time.perf_counter() - wall < seconds:
    for _ in range(100):
        orjson.dumps(orjson.loads(body))
    rounds += 100
print(orjson.dumps({"cpu_us": (time.process_time() - cpu) / rounds * 1e6,
                    "wall_us": (time.perf_counter() - wall) / rounds * 1e6}).decode())
"""


def core_probe(body: bytes, seconds: float = 0.5) -> dict[str, dict[str, float]] | None:
    """How long the same piece of work takes on each CPU, one CPU at a time (microseconds
    of CPU and of wall-clock time per iteration), before and after the runs. On a virtual
    machine this changes within minutes (by half between a quick run's start and end), and the
    CPUs need not be alike: on a 2-CPU machine one took up to half as long again as the other,
    and which one was slower changed; a single-process ceiling that lands on the faster one is
    flattered, while the receiver's two processes use both. None where CPU affinity is not
    available (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    speeds: dict[str, dict[str, float]] = {}
    for cpu in sorted(os.sched_getaffinity(0)):
        done = subprocess.run(
            [sys.executable, "-c", _CORE_PROBE, str(cpu), str(seconds)],
            input=body, capture_output=True, timeout=60,
        )
        if done.returncode != 0:
            return None
        figures = json.loads(done.stdout)
        speeds[f"cpu{cpu}"] = {k: round(v, 2) for k, v in figures.items()}
    return speeds


def _probe_text(speeds: dict[str, dict[str, float]] | None) -> str:
    if not speeds:
        return "not measured"
    return ", ".join(f"{cpu} {v['cpu_us']:.1f}" for cpu, v in speeds.items())


def _wrk_version(wrk: str | None) -> str | None:
    if wrk is None:
        return None
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else None


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield
    finally:
        for server in servers:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Receiver throughput and latency against a bare 204 ceiling."
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--no-wrk", action="store_true",
                        help="use the Python closed-loop generator even if wrk is available")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install wrk when it is missing")
    parser.add_argument("--store-url", default=None,
                        help="receiver store URL (default: SQLite in a temporary data dir)")
    parser.add_argument("--worker", action="store_true",
                        help="run the workflow worker in the receiver process too, as a plain "
                        "`factorflow serve` does (default: the receiver alone)")
    parser.add_argument("--output", type=Path, default=None,
                        help="result JSON (default: bench/results/receiver-<timestamp>.json)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help="adjacent ceiling/receiver pairs per payload (default: 5, quick "
                        "1): more pairs give a steadier median on a noisy machine")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")

    profile = QUICK if args.quick else FULL
    if args.repeats is not None:
        profile = replace(profile, repeats=args.repeats)
    wrk = None if args.no_wrk else find_wrk(allow_install=not args.no_install)
    if wrk is None:
        print("NOTE: wrk is not available: closed-loop figures come from the Python generator, "
              "which may saturate before the ceiling does.", flush=True)
    started = datetime.now(UTC)
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    probe_before = core_probe(delivery_template(1))

    with tempfile.TemporaryDirectory(prefix="factorflow-bench-") as tmp:
        workdir = Path(tmp)
        templates: dict[int, Path] = {}
        bodies: dict[int, bytes] = {}
        for events in BATCH_SIZES:
            template = delivery_template(events)
            templates[events] = workdir / f"delivery-{events}.json"
            templates[events].write_bytes(template)
            bodies[events] = template
        plan = Plan(profile, wrk, templates, bodies)
        ceiling, receiver, store_url = make_servers(workdir, args.store_url, args.worker)
        meta = _meta(store_url)
        meta["receiver_worker"] = args.worker
        print(f"starting ceiling (port {ceiling.port}) and receiver (port {receiver.port}) ...",
              flush=True)
        try:
            with running(ceiling, receiver):
                store = open_store(store_url, migrate=False)
                check = StoreCheck(store)
                try:
                    runs = measure(plan, ceiling, receiver, check,
                                   lambda line: print(line, flush=True))
                    final_counts = check.settled_counts()
                except (OSError, asyncio.IncompleteReadError) as exc:
                    raise BenchError(f"load generator failed: {exc!r}") from exc
                finally:
                    store.close()
        except BenchError as exc:
            print(f"ABORTED: {exc}", file=sys.stderr)
            return 2
        finished = datetime.now(UTC)

    meta.update({
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "wrk": _wrk_version(wrk),
        "core_probe_before": probe_before,
        "core_probe_after": core_probe(delivery_template(1)),
    })
    summary = summarise(runs, check.checks)
    summary["store_check"]["final_counts"] = final_counts
    print(render(summary, plan, meta))

    result = {
        "benchmark": "receiver", "started": started.isoformat(), "finished": finished.isoformat(),
        "quick": args.quick, "machine": meta,
        "profile": {
            "warmup_s": profile.warmup_s, "measure_s": profile.measure_s,
            "repeats": profile.repeats, "connections": profile.connections,
            "fixed_rate": FIXED_RATE, "fixed_warmup_s": profile.fixed_warmup_s,
            "fixed_s": profile.fixed_s, "fixed_connections": profile.fixed_connections,
            "generator": "wrk" if wrk else "python",
        },
        "payload_bytes": {f"{n}-event": body_size(b) for n, b in bodies.items()},
        "summary": summary,
        "store_checks": check.checks,
        "runs": [run.as_json() for run in runs],
    }
    write_result(result, args.output, "receiver", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
