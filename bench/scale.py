"""Scale-out benchmark: K receivers and M workers on PostgreSQL against one ``factorflow serve``
on SQLite, in the same run.

Two deployments, each started from nothing (fresh databases, fresh processes) on 127.0.0.1:

* **A** (the baseline): one ``factorflow serve`` with its in-process workflow worker on a fresh
  SQLite data dir, as a single-machine user runs it;
* **B**: K ``factorflow serve --no-worker`` receivers and M ``factorflow worker`` processes
  (distinct executor ids) on two fresh PostgreSQL databases (store and workflow system
  database), created for the run and dropped after it.

Every event runs three actions: ``audit``, ``report`` and ``webhook`` (signed, to a small HTTP
server in a process of its own that answers 200 and counts each ``webhook-id``). For each
deployment the benchmark measures

1. ack latency at a fixed offered rate (single-event deliveries), open loop, spread
   round-robin over the receivers, each latency measured from the request's scheduled send time
   (no coordinated omission);
2. closed-loop ack throughput of single-event deliveries (wrk, one per receiver, the
   connections split between them).

   Both run while the workers chew through the backlog these deliveries create (far more
   than the workers keep up with), as they would during a burst;
3. the sustained end-to-end rate, on a fresh start of the deployment: a short burst calibrates
   what the workers keep up with, then N events (each with its own user) are sent at a steady
   rate a bit above it, and the clock runs from the first delivery until the store records all
   three actions of every event done.

Checks (a failed one aborts the run): after 1 and 2 the store holds every acknowledged event
and nothing more than was sent (the open loop: exactly the acknowledged ones), nothing
quarantined; after 3 every event is stored once, decided once, has its three actions done once
(one audit row, one webhook send recorded, one request per ``webhook-id`` at the webhook
server), the audit chain is intact, no dead letters, and every workflow succeeded.

    python bench/scale.py              # about four minutes
    python bench/scale.py --quick      # about a minute and a quarter
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from pipeline import PG_ADMIN_URL, WEBHOOK_SECRET, Databases, fresh_databases
from pipeline import BenchError as PipelineBenchError
from receiver import (
    HOOK_PATH,
    HOST,
    SECRET,
    BenchError,
    BodyMaker,
    LoadResult,
    Server,
    StoreCheck,
    _closed_loop,
    _tree_cpu_ticks,
    clean_env,
    delivery_template,
    find_wrk,
    free_port,
    new_run_id,
    open_loop,
    package_version,
    receiver_command,
    run_async,
    run_wrk,
    write_result,
)

RULE_ID = "every-enrollment"
ACTIONS = ("audit", "notify", "report")
EVENT_TYPE = "user.mfa.factor.activate"
WORKFLOW = "factorflow.process_event"


@dataclass(frozen=True)
class Profile:
    warmup_s: int  # closed loop
    measure_s: int
    repeats: int
    connections: int  # closed loop, split between the receivers
    fixed_warmup_s: float  # open loop
    fixed_s: float
    fixed_connections: int
    calibration_events: int  # end to end: the burst that estimates the workers' rate
    e2e_seconds: float  # end to end: how long the steady sending lasts
    timeout_s: float


FULL = Profile(warmup_s=2, measure_s=10, repeats=2, connections=64, fixed_warmup_s=1.0,
               fixed_s=10.0, fixed_connections=32, calibration_events=200, e2e_seconds=40.0,
               timeout_s=300.0)
QUICK = Profile(warmup_s=1, measure_s=3, repeats=1, connections=64, fixed_warmup_s=0.5,
                fixed_s=3.0, fixed_connections=32, calibration_events=80, e2e_seconds=8.0,
                timeout_s=120.0)
E2E_HEADROOM = 1.25  # offered end-to-end rate = this x the calibrated rate
CALIBRATION_BURST_RATE = 400.0  # deliveries/s while sending the calibration burst
RULES = """\
version: 1
match: all
rules:
  - id: {rule}
    description: Every enrollment, three actions
    when:
      kind: [enrollment]
    actions:
      - id: audit
        kind: audit
      - id: report
        kind: report
      - id: notify
        kind: webhook
        params:
          url: {url}
          secret: bench
          type: mfa.enrolled
"""


# -- the webhook target: a process of its own, so it competes with nobody's interpreter -------


def serve_webhook_target() -> int:
    """Internal mode: answer 200 to every POST and count its ``webhook-id``; ``GET /counts``
    returns the counts. Prints ``PORT <n>`` once listening; stops on SIGTERM."""
    received: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with lock:
                received[self.headers.get("webhook-id") or ""] += 1
            self._answer(200, b"{}")

        def do_GET(self) -> None:
            with lock:
                body = orjson.dumps(dict(received))
            self._answer(200, body)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    class Quiet(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A worker stopped mid-request at a teardown; nothing to report.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Quiet((HOST, 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


class WebhookTarget:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--webhook-target"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise BenchError(f"the webhook target did not start: {line!r}")
        self.port = int(line.split()[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/factorflow"

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/counts", timeout=30) as answer:
            counts: dict[str, int] = orjson.loads(answer.read())
        return counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- processes ----------------------------------------------------------------------------


class WorkerProc(Server):
    """``factorflow worker``: no HTTP, ready once it printed its banner."""

    def __init__(self, executor_id: str, env: dict[str, str], log_path: Path,
                 nice: int = 0) -> None:
        prefix = ["nice", "-n", str(nice)] if nice else []
        super().__init__(executor_id, [*prefix, *receiver_command(), "worker"], env, 0, "",
                         log_path)

    def wait_ready(self, timeout: float = 60.0) -> None:
        banner = f"factorflow worker {self.name} running"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if banner in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not start in {timeout:.0f} s\n{self.log_tail()}")


@dataclass
class Deployment:
    name: str  # "A" or "B"
    label: str
    backend: str  # "sqlite" or "postgres"
    store_url: str
    system_url: str
    receivers: list[Server]
    workers: list[WorkerProc]  # empty for A: its worker runs in the receiver's process
    pg_databases: tuple[str, ...] = ()  # B: the store and the system database

    @property
    def processes(self) -> list[Server]:
        return [*self.receivers, *self.workers]

    def start(self) -> None:
        """The first process alone (it migrates both databases), then the others at once."""
        first, *others = self.processes
        first.start()
        first.wait_ready()
        for proc in others:
            proc.start()
        for proc in others:
            proc.wait_ready()

    def check_alive(self) -> None:
        for proc in self.processes:
            proc.check_alive()

    def stop(self) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(self.processes))) as pool:
            list(pool.map(_stop_quickly, self.processes))


def _stop_quickly(proc: Server) -> None:
    """SIGTERM, then SIGKILL after 15 s (the data is thrown away; a backlog may be left)."""
    proc.stop(signal.SIGTERM, timeout=15)


def base_env(workdir: Path, webhook: WebhookTarget) -> dict[str, str]:
    rules = workdir / "rules.yaml"
    rules.write_text(RULES.format(rule=RULE_ID, url=webhook.url), encoding="utf-8")
    env = clean_env()
    env.update({
        "FACTORFLOW_DATA_DIR": str(workdir / "data"),
        "FACTORFLOW_HOOK__SECRET": SECRET,
        "FACTORFLOW_HOOK__PATH": HOOK_PATH,
        "FACTORFLOW_LOG__LEVEL": "WARNING",
        "FACTORFLOW_UI__ENABLED": "false",
        "FACTORFLOW_PIPELINE__RULES_FILE": str(rules),
        "FACTORFLOW_ACTIONS__WEBHOOK_SECRETS": orjson.dumps({"bench": WEBHOOK_SECRET}).decode(),
        "FACTORFLOW_SERVER__GRACEFUL_TIMEOUT_SECONDS": "3",
    })
    return env


def deployment_a(workdir: Path, webhook: WebhookTarget) -> Deployment:
    env = base_env(workdir, webhook)
    port = free_port()
    serve = Server("serve", [*receiver_command(), "serve", "--host", HOST, "--port", str(port),
                             "--worker"], env, port, "/readyz", workdir / "serve.log")
    data = workdir / "data"
    return Deployment("A", "1 serve + in-process worker, SQLite", "sqlite",
                      f"sqlite:///{data / 'factorflow.db'}", f"sqlite:///{data / 'dbos.sqlite'}",
                      [serve], [])


def deployment_b(workdir: Path, webhook: WebhookTarget, dbs: Databases, receivers: int,
                 workers: int, nice: int = 0) -> Deployment:
    env = base_env(workdir, webhook)
    env["FACTORFLOW_STORE__URL"] = dbs.store_url
    env["FACTORFLOW_WORKFLOWS__SYSTEM_DATABASE_URL"] = dbs.system_url
    servers = []
    for i in range(receivers):
        port = free_port()
        servers.append(Server(
            f"receiver-{i + 1}",
            [*receiver_command(), "serve", "--host", HOST, "--port", str(port), "--no-worker"],
            {**env, "FACTORFLOW_WORKFLOWS__EXECUTOR_ID": f"scale-receiver-{i + 1}"},
            port, "/readyz", workdir / f"receiver-{i + 1}.log",
        ))
    procs = [
        WorkerProc(f"scale-worker-{i + 1}",
                   {**env, "FACTORFLOW_WORKFLOWS__EXECUTOR_ID": f"scale-worker-{i + 1}"},
                   workdir / f"scale-worker-{i + 1}.log", nice)
        for i in range(workers)
    ]
    names = tuple(url.rsplit("/", 1)[1] for url in (dbs.store_url, dbs.system_url))
    label = f"{receivers} receivers + {workers} workers, PostgreSQL" + (
        f", workers at nice {nice}" if nice else "")
    return Deployment("B", label, "postgres", dbs.store_url, dbs.system_url, servers, procs,
                      names)


@contextlib.contextmanager
def running(make: Callable[[Path, WebhookTarget, Databases | None], Deployment], root: Path,
            backend: str, pg_url: str) -> Iterator[tuple[Deployment, WebhookTarget]]:
    """A deployment started from nothing (fresh databases and webhook target), torn down and
    its databases dropped afterwards."""
    with tempfile.TemporaryDirectory(prefix="session-", dir=root) as tmp:
        webhook = WebhookTarget()
        try:
            dbs_context: contextlib.AbstractContextManager[Databases | None] = (
                fresh_databases(backend, Path(tmp), pg_url) if backend == "postgres"
                else contextlib.nullcontext()
            )
            with dbs_context as dbs:
                deployment = make(Path(tmp), webhook, dbs)
                try:
                    deployment.start()
                    yield deployment, webhook
                finally:
                    deployment.stop()
        finally:
            webhook.stop()


# -- CPU accounting -----------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and the processes it started (a receiver's commit process)."""
    ticks = _tree_cpu_ticks(pid)
    return 0.0 if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def _postgres_cpu(databases: tuple[str, ...]) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving one of ``databases`` (a backend's
    process title names its database), by pid. The server's shared processes (WAL writer,
    checkpointer) and backends of other databases are left out."""
    found: dict[int, float] = {}
    if not databases:
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not title.startswith("postgres: ") or not any(
                f" {name} " in title for name in databases
            ):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(values[:8])
    idle = values[3] + values[4]
    return (total - idle) / tick, total / tick


class CpuMeter:
    """CPU used by each role of a deployment (and by PostgreSQL, and by the whole machine)
    between ``start`` and ``stop``, in cores (CPU seconds per second)."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self._start: dict[str, float] = {}
        self._backends: dict[int, float] = {}
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        d = self.deployment
        pids_r = [p.proc.pid for p in d.receivers if p.proc is not None]
        pids_w = [p.proc.pid for p in d.workers if p.proc is not None]
        busy, total = _machine_busy()
        backends = _postgres_cpu(d.pg_databases)
        # A backend that started during the run counts from zero; one that ended is lost.
        postgres = sum(cpu - self._backends.get(pid, 0.0) for pid, cpu in backends.items())
        self._backends = backends
        return {
            "receivers": sum(_proc_cpu(pid) for pid in pids_r),
            "workers": sum(_proc_cpu(pid) for pid in pids_w),
            "postgres": postgres,
            "machine_busy": busy, "machine_total": total,
        }

    def start(self) -> None:
        self._backends = {}
        self._start = self._sample()
        self._start["postgres"] = 0.0
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        end = self._sample()
        seconds = time.perf_counter() - self._t0
        delta = {k: end[k] - self._start[k] for k in end}
        roles = ("receivers", "workers", "postgres")
        out: dict[str, Any] = {k: round(delta[k] / seconds, 3) for k in roles}
        out["machine_busy_share"] = round(delta["machine_busy"] / delta["machine_total"], 3) \
            if delta["machine_total"] else 0.0
        out["seconds"] = round(seconds, 2)
        out["cpu_seconds"] = {k: round(delta[k], 2) for k in roles}
        return out


# -- load ---------------------------------------------------------------------------------


def _no_errors(errors: dict[str, int], what: str) -> None:
    if any(errors.values()):
        raise BenchError(f"{what}: errors {errors}; figures discarded")


def closed_loop(deployment: Deployment, wrk: str | None, template: Path, body: bytes,
                seconds: int, connections: int, phase: str) -> LoadResult:
    """wrk against every receiver at once (the connections split between them); one combined
    result: the rates add up, the latency percentiles are the worst receiver's."""
    receivers = deployment.receivers
    per = max(1, connections // len(receivers))
    if wrk is not None:
        with ThreadPoolExecutor(max_workers=len(receivers)) as pool:
            runs = list(pool.map(
                lambda server: run_wrk(wrk, server, template, 1, seconds, per, phase),
                receivers,
            ))
    else:
        async def together() -> list[LoadResult]:
            return list(await asyncio.gather(*(
                _closed_loop(server, body, seconds, per, phase) for server in receivers
            )))

        runs = run_async(together())
    errors: Counter[str] = Counter()
    for run in runs:
        errors.update(run.errors)
        _no_errors(run.errors, f"closed loop against {run.server}")
    duration = statistics.fmean(r.duration_s for r in runs)
    requests = sum(r.requests for r in runs)
    return LoadResult(
        server=deployment.name, events_per_delivery=1, phase=phase, generator=runs[0].generator,
        duration_s=duration, requests=requests, sent=sum(r.sent for r in runs),
        errors=dict(errors), acknowledged=sum(r.acknowledged for r in runs),
        latency_ms={k: max(r.latency_ms[k] for r in runs) for k in ("p50", "p90", "p99", "max")},
        extra={"per_receiver": [r.as_json() for r in runs]},
    )


# -- phases 1 and 2: acknowledgements ----------------------------------------------------


def measure_acks(deployment: Deployment, profile: Profile, wrk: str | None, template: Path,
                 body: bytes, rate: float, say: Callable[[str], None]) -> dict[str, Any]:
    store = open_store(deployment.store_url, migrate=False)
    check = StoreCheck(store)
    try:
        deployment.check_alive()
        before = check.settled_counts()
        meter = CpuMeter(deployment)
        meter.start()
        fixed = run_async(open_loop(
            [r.port for r in deployment.receivers], _filler(body), rate,
            int(rate * (profile.fixed_warmup_s + profile.fixed_s)),
            int(rate * profile.fixed_warmup_s), profile.fixed_connections,
        ))
        cpu = meter.stop()
        _no_errors(fixed.errors, f"{deployment.name} open loop")
        synthetic = LoadResult(
            server=deployment.name, events_per_delivery=1, phase="fixed",
            generator="python-open-loop", duration_s=fixed.window_s,
            requests=fixed.window_answered, sent=fixed.sent, errors=fixed.errors,
            acknowledged=fixed.answered, latency_ms=fixed.latency_ms,
        )
        check.record(before, check.settled_counts(), synthetic)
        if check.checks[-1]["stored_events"] != fixed.answered:
            raise BenchError("open loop: the store does not hold exactly the acknowledged events")
        say(f"  {deployment.name} open loop {rate:,.0f}/s: achieved {fixed.rate:,.0f}/s  "
            f"p50 {fixed.latency_ms['p50']:.1f} ms  p99 {fixed.latency_ms['p99']:.1f} ms")
        runs = []
        for repeat in range(profile.repeats):
            for phase, seconds in (("warmup", profile.warmup_s), ("measure", profile.measure_s)):
                deployment.check_alive()
                before = check.settled_counts()
                meter = CpuMeter(deployment)
                meter.start()
                run = closed_loop(deployment, wrk, template, body, seconds,
                                  profile.connections, phase)
                run.extra["cpu"] = meter.stop()
                check.record(before, check.settled_counts(), run)
                if phase == "measure":
                    runs.append(run)
                    say(f"  {deployment.name} closed loop #{repeat + 1}: {run.rate:>8,.0f} "
                        f"deliveries/s  p99 {run.latency_ms['p99']:.1f} ms")
    finally:
        store.close()
    rates = [r.rate for r in runs]
    return {
        "closed_loop": {
            "deliveries_per_s": round(statistics.median(rates), 1),
            "runs": [round(r, 1) for r in rates],
            "p50_ms": statistics.median(r.latency_ms["p50"] for r in runs),
            "p99_ms": statistics.median(r.latency_ms["p99"] for r in runs),
            "connections": profile.connections, "seconds": profile.measure_s,
            "cpu": [r.extra["cpu"] for r in runs],
            # Receiver processes' CPU per delivery (A: its worker's work included).
            "receiver_cpu_ms_per_delivery": statistics.median(
                r.extra["cpu"]["cpu_seconds"]["receivers"] * 1000.0 / r.sent for r in runs
            ),
            "detail": [r.as_json() for r in runs],
        },
        "open_loop": {
            "offered_per_s": rate, "achieved_per_s": round(fixed.rate, 1),
            "kept_up": fixed.rate >= 0.98 * rate,
            **{f"{k}_ms": v for k, v in fixed.latency_ms.items()},
            "generator_dispatch_lag_ms": fixed.dispatch_lag_ms,
            "connections": profile.fixed_connections, "seconds": profile.fixed_s, "cpu": cpu,
        },
        "store_checks": check.checks,
    }


def _filler(template: bytes) -> Callable[[int], bytes]:
    maker = BodyMaker(template, new_run_id())
    return lambda _index: maker.next()


# -- phase 3: end to end ------------------------------------------------------------------


def e2e_bodies(n: int, run: str) -> tuple[list[bytes], list[str]]:
    """Single-event deliveries of the bundled sample, each with a fresh uuid and its own user."""
    sample = resources.files("factorflow").joinpath("examples/delivery-mfa-activate.json")
    document = orjson.loads(sample.read_bytes())
    template = document["data"]["events"][0]
    bodies, uuids = [], []
    for i in range(n):
        user = {**template["actor"], "id": f"00uscale{run}{i:08d}",
                "alternateId": f"user{i}-{run}@bench.example.com", "displayName": f"User {i}"}
        uuid = f"{run}-{i >> 16:04x}-11f1-8000-{i:012x}"
        event = {**template, "uuid": uuid, "actor": user,
                 "target": [user, *template["target"][1:]]}
        bodies.append(orjson.dumps({**document, "eventId": f"delivery-{run}-{i}",
                                    "data": {"events": [event]}}))
        uuids.append(uuid)
    return bodies, uuids


class DonePoller:
    """Samples (time, actions done) from the store on a thread of its own."""

    def __init__(self, store_url: str, interval: float = 0.2) -> None:
        self.store = open_store(store_url, migrate=False)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="done-poller")

    def done(self) -> int:
        return int(self.store.read(
            "SELECT COUNT(*) FROM action_results WHERE status = 'done'", ())[0][0])

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.done()
            self.samples.append((time.perf_counter(), value))
            self._stop.wait(self.interval)

    def start(self) -> DonePoller:
        self._thread.start()
        return self

    def wait_for(self, actions: int, deadline: float, deployment: Deployment) -> float:
        """The first sample time at which ``actions`` were done."""
        while True:
            samples = list(self.samples)
            if samples and samples[-1][1] >= actions:
                return next(t for t, v in samples if v >= actions)
            if time.perf_counter() > deadline:
                last = samples[-1][1] if samples else 0
                raise BenchError(f"{deployment.name}: {last} of {actions} actions done before "
                                 "the timeout")
            deployment.check_alive()
            time.sleep(self.interval / 2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.store.close()


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Events/s from the samples between 30 % and 100 % of ``total`` actions done (the start,
    while the first workflows are picked up, is left out)."""
    start = next((s for s in samples if s[1] >= 0.3 * total), None)
    end = next((s for s in samples if s[1] >= total), None)
    if start is None or end is None or end[0] <= start[0]:
        raise BenchError("calibration: not enough samples to estimate the workers' rate")
    return (end[1] - start[1]) / 3 / (end[0] - start[0])


def measure_e2e(deployment: Deployment, webhook: WebhookTarget, profile: Profile,
                say: Callable[[str], None]) -> dict[str, Any]:
    ports = [r.port for r in deployment.receivers]
    poller = DonePoller(deployment.store_url).start()
    try:
        # Calibration: a burst; the rate at which its tail is done.
        c = profile.calibration_events
        bodies, uuids = e2e_bodies(c, os.urandom(4).hex())
        burst = run_async(open_loop(ports, bodies.__getitem__, CALIBRATION_BURST_RATE, c, 0, 16))
        _no_errors(burst.errors, f"{deployment.name} calibration burst")
        poller.wait_for(3 * c, time.perf_counter() + profile.timeout_s, deployment)
        calibrated = steady_rate([s for s in poller.samples if s[0] >= burst.first_scheduled],
                                 3 * c)
        offered = max(2.0, E2E_HEADROOM * calibrated)
        n = max(20, round(offered * profile.e2e_seconds))
        say(f"  {deployment.name} end to end: calibrated {calibrated:.1f} events/s; sending "
            f"{n} events at {offered:.1f}/s")

        # The measured run: N events at a steady rate; first delivery -> all actions done.
        e2e, e2e_uuids = e2e_bodies(n, os.urandom(4).hex())
        meter = CpuMeter(deployment)
        meter.start()
        sent = run_async(open_loop(ports, e2e.__getitem__, offered, n, 0,
                                   max(8, 2 * len(ports))))
        sending_done = time.perf_counter()
        _no_errors(sent.errors, f"{deployment.name} end-to-end sending")
        backlog = n - (poller.done() - 3 * c) // 3
        done_at = poller.wait_for(3 * (c + n), time.perf_counter() + profile.timeout_s,
                                  deployment)
        cpu = meter.stop()
    finally:
        poller.close()
    elapsed = done_at - sent.first_scheduled
    rate = n / elapsed
    cpu_ms = {role: round(cpu["cpu_seconds"][role] * 1000.0 / n, 2)
              for role in ("receivers", "workers", "postgres")}
    say(f"  {deployment.name} end to end: {n} events in {elapsed:.1f} s = {rate:.1f} events/s "
        f"(offered {offered:.1f}/s; {backlog} not done when sending ended)")
    checks = verify(deployment, webhook, uuids + e2e_uuids)
    return {
        "calibration": {"events": c, "events_per_s": round(calibrated, 2)},
        "events": n, "offered_per_s": round(offered, 2),
        "sending_s": round(sending_done - sent.first_scheduled, 2),
        "elapsed_s": round(elapsed, 2), "events_per_s": round(rate, 2),
        "offered_bound": rate >= 0.95 * offered,
        "backlog_when_sending_ended": backlog,
        "ack_latency_ms": sent.latency_ms, "cpu": cpu, "cpu_ms_per_event": cpu_ms,
        "checks": checks,
    }


def workflow_counts(system_url: str) -> dict[str, int]:
    """Event workflows by status, read from the workflow engine's system database."""
    sql = ("SELECT status, COUNT(*) FROM {table} WHERE name = {mark} GROUP BY status")
    if system_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(system_url.removeprefix("sqlite:///"))) as conn:
            rows = conn.execute(sql.format(table="workflow_status", mark="?"),
                                (WORKFLOW,)).fetchall()
    else:
        import psycopg

        with psycopg.connect(system_url) as pg:
            rows = pg.execute(sql.format(table="dbos.workflow_status", mark="%s"),
                              (WORKFLOW,)).fetchall()
    return {str(status): int(count) for status, count in rows}


def verify(deployment: Deployment, webhook: WebhookTarget, uuids: list[str]) -> dict[str, Any]:
    """Every event stored once and decided once, its three actions done once; a failed check
    aborts the run (a figure with lost or doubled work is no figure)."""
    from factorflow.actions.audit import verify_audit

    n = len(uuids)
    store: SqlEventStore = open_store(deployment.store_url, migrate=False)
    try:
        def scalar(sql: str, params: tuple[Any, ...] = ()) -> int:
            return int(store.read(sql, params)[0][0])

        stored = {str(u) for (u,) in store.read("SELECT uuid FROM events", ())}
        per_event = Counter(
            str(u) for (u,) in store.read(
                "SELECT event_uuid FROM action_results WHERE status = 'done'", ())
        )
        found = {
            "events": scalar("SELECT COUNT(*) FROM events"),
            "undispatched": scalar("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL"),
            "quarantined": scalar("SELECT COUNT(*) FROM quarantine"),
            "facts_decided": scalar("SELECT COUNT(*) FROM facts WHERE status = 'decided'"),
            "decisions": scalar("SELECT COUNT(*) FROM decisions"),
            "actions_total": scalar("SELECT COUNT(*) FROM action_results"),
            "events_with_three_done": sum(1 for u in uuids if per_event[u] == len(ACTIONS)),
            "audit_rows": scalar("SELECT COUNT(*) FROM audit_log WHERE actor = ?",
                                 (f"rule:{RULE_ID}",)),
            "audit_events": scalar("SELECT COUNT(DISTINCT event_uuid) FROM audit_log "
                                   "WHERE actor = ?", (f"rule:{RULE_ID}",)),
            "webhook_sends": scalar("SELECT COUNT(*) FROM webhook_sends"),
            "dead_letters": scalar("SELECT COUNT(*) FROM dead_letters"),
        }
        audit_ok = verify_audit(store)
        keys = {str(k) for (k,) in store.read(
            "SELECT idempotency_key FROM action_results WHERE action_id = 'notify'", ())}
    finally:
        store.close()
    expected = {
        "events": n, "undispatched": 0, "quarantined": 0, "facts_decided": n, "decisions": n,
        "actions_total": len(ACTIONS) * n, "events_with_three_done": n, "audit_rows": n,
        "audit_events": n, "webhook_sends": n, "dead_letters": 0,
    }
    problems = [f"{k}: {found[k]} (expected {v})" for k, v in expected.items() if found[k] != v]
    if stored != set(uuids):
        problems.append(f"stored uuids differ from those sent ({len(stored ^ set(uuids))})")
    if not audit_ok.ok:
        problems.append(f"audit chain broken at row {audit_ok.first_bad_seq}")
    received = webhook.counts()
    repeated = sum(1 for count in received.values() if count != 1)
    if set(received) != keys or repeated:
        problems.append(f"webhook target: {len(received)} webhook-ids for {len(keys)} "
                        f"recorded sends, {repeated} received more than once")
    workflows = workflow_counts(deployment.system_url)
    if workflows != {"SUCCESS": n}:
        problems.append(f"workflows: {workflows} (expected {{'SUCCESS': {n}}})")
    result = {"found": found, "webhook_ids": len(received), "webhook_repeats": repeated,
              "workflows": workflows, "audit_chain_ok": audit_ok.ok, "problems": problems,
              "ok": not problems}
    if problems:
        raise BenchError(f"{deployment.name}: exactly-once check failed: {'; '.join(problems)}")
    return result


# -- the run ------------------------------------------------------------------------------


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    a, b = results["A"], results["B"]

    def ratio(x: float, y: float) -> float | None:
        return round(x / y, 3) if y else None

    return {
        "ack_throughput_per_s": {
            "A": a["closed_loop"]["deliveries_per_s"], "B": b["closed_loop"]["deliveries_per_s"],
            "B/A": ratio(b["closed_loop"]["deliveries_per_s"],
                         a["closed_loop"]["deliveries_per_s"]),
        },
        "ack_p99_ms_at_fixed_rate": {
            "A": a["open_loop"]["p99_ms"], "B": b["open_loop"]["p99_ms"],
            "B/A": ratio(b["open_loop"]["p99_ms"], a["open_loop"]["p99_ms"]),
            "offered_per_s": a["open_loop"]["offered_per_s"],
            "kept_up": {"A": a["open_loop"]["kept_up"], "B": b["open_loop"]["kept_up"]},
        },
        "end_to_end_events_per_s": {
            "A": a["end_to_end"]["events_per_s"], "B": b["end_to_end"]["events_per_s"],
            "B/A": ratio(b["end_to_end"]["events_per_s"], a["end_to_end"]["events_per_s"]),
        },
    }


def render(results: dict[str, dict[str, Any]], summary: dict[str, Any],
           meta: dict[str, Any]) -> str:
    a, b = results["A"], results["B"]
    w = 22

    def row(label: str, va: str, vb: str, r: float | None = None, note: str = "") -> str:
        ratio = f"{r:>7.2f}" if r is not None else " " * 7
        return f"{label:<34}{va:>{w}}{vb:>{w}}{ratio}  {note}".rstrip()

    def cpu(phase: dict[str, Any]) -> str:
        return (f"r {phase['receivers']:.2f} w {phase['workers']:.2f} "
                f"pg {phase['postgres']:.2f}")

    s = summary
    ca, cb = a["closed_loop"], b["closed_loop"]
    oa, ob = a["open_loop"], b["open_loop"]
    ea, eb = a["end_to_end"], b["end_to_end"]
    lines = [
        "",
        f"factorflow scale-out benchmark - {meta['cpus']} CPUs, Python {meta['python']}, "
        f"DBOS {meta['dbos']}, worker_concurrency {meta['worker_concurrency']}, "
        f"queue polling {meta['queue_polling_seconds']} s",
        f"A: {a['label']}",
        f"B: {b['label']}",
        "",
        f"{'':<34}{'A':>{w}}{'B':>{w}}{'B/A':>7}",
        row("ack throughput, closed loop", f"{ca['deliveries_per_s']:,.0f} d/s",
            f"{cb['deliveries_per_s']:,.0f} d/s", s["ack_throughput_per_s"]["B/A"],
            f"({ca['connections']} connections, "
            f"{'wrk' if meta['wrk'] else 'Python generator'})"),
        row("  p50 / p99 ms (closed loop)", f"{ca['p50_ms']:.1f} / {ca['p99_ms']:.1f}",
            f"{cb['p50_ms']:.1f} / {cb['p99_ms']:.1f}"),
        row("  CPU, cores (r/w/pg)", cpu(ca["cpu"][-1]), cpu(cb["cpu"][-1])),
        row("  receiver CPU ms/delivery", f"{ca['receiver_cpu_ms_per_delivery']:.2f}",
            f"{cb['receiver_cpu_ms_per_delivery']:.2f}", None, "(A: its worker included)"),
        row(f"ack p99 at {oa['offered_per_s']:,.0f}/s, open loop", f"{oa['p99_ms']:.1f} ms",
            f"{ob['p99_ms']:.1f} ms", s["ack_p99_ms_at_fixed_rate"]["B/A"],
            "(lower is better)"),
        row("  achieved / p50 ms", f"{oa['achieved_per_s']:,.0f}/s / {oa['p50_ms']:.1f}",
            f"{ob['achieved_per_s']:,.0f}/s / {ob['p50_ms']:.1f}"),
        row("sustained end to end", f"{ea['events_per_s']:.1f} ev/s",
            f"{eb['events_per_s']:.1f} ev/s", s["end_to_end_events_per_s"]["B/A"],
            "(delivered -> 3 actions done)"),
        row("  offered / events", f"{ea['offered_per_s']:.1f}/s / {ea['events']}",
            f"{eb['offered_per_s']:.1f}/s / {eb['events']}"),
        row("  CPU ms/event (r/w/pg)",
            "{receivers:.0f}/{workers:.0f}/{postgres:.0f}".format(**ea["cpu_ms_per_event"]),
            "{receivers:.0f}/{workers:.0f}/{postgres:.0f}".format(**eb["cpu_ms_per_event"])),
        row("  machine busy", f"{ea['cpu']['machine_busy_share']:.0%}",
            f"{eb['cpu']['machine_busy_share']:.0%}"),
    ]
    for name, e in (("A", ea), ("B", eb)):
        if e["offered_bound"]:
            lines.append(f"NOTE: {name}'s end-to-end rate reached the offered rate: it is a "
                         "lower bound of what the workers sustain")
    lines += [
        "",
        "r = receiver processes (A: the serve process, its worker included), w = worker "
        "processes, pg = the PostgreSQL backends serving B's databases",
        "checks: acknowledged events stored (closed and open loop); end to end: every event "
        "stored, decided and its 3 actions done exactly once, webhook-ids once each: OK",
        f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']} "
        "(a shared machine makes every figure noisy)",
    ]
    return "\n".join(lines)


def _meta(args: argparse.Namespace, wrk: str | None) -> dict[str, Any]:
    from factorflow.settings import WorkflowSettings

    defaults = WorkflowSettings()
    return {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "dbos": package_version("dbos"),
        "factorflow": package_version("factorflow"), "psycopg": package_version("psycopg"),
        "uvicorn": package_version("uvicorn"), "wrk": wrk is not None,
        "worker_concurrency": defaults.worker_concurrency,
        "queue_polling_seconds": defaults.queue_polling_seconds,
        "relay_interval_seconds": defaults.relay_interval_seconds,
        "receivers": args.receivers, "workers": args.workers, "worker_nice": args.worker_nice,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="K receivers + M workers on PostgreSQL against one serve on SQLite."
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 75 s)")
    parser.add_argument("--receivers", "-k", type=int, default=2,
                        help="receivers in deployment B (default 2)")
    parser.add_argument("--workers", "-m", type=int, default=2,
                        help="workers in deployment B (default 2)")
    parser.add_argument("--worker-nice", type=int, default=0, metavar="N",
                        help="run B's workers under `nice -n N` (lower CPU priority than the "
                        "receivers; default 0)")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="offered deliveries/s of the open-loop latency run (default 500)")
    parser.add_argument("--pg-url", default=PG_ADMIN_URL,
                        help="PostgreSQL server to create the scratch databases on")
    parser.add_argument("--no-wrk", action="store_true",
                        help="use the Python closed-loop generator even if wrk is available")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install wrk when it is missing")
    parser.add_argument("--output", type=Path, default=None,
                        help="result JSON (default: bench/results/scale-<timestamp>.json)")
    parser.add_argument("--webhook-target", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receivers < 1 or args.workers < 1 or args.rate <= 0:
        parser.error("--receivers and --workers must be at least 1, --rate positive")
    if not 0 <= args.worker_nice <= 19:
        parser.error("--worker-nice takes 0 to 19")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.webhook_target:
        return serve_webhook_target()
    profile = QUICK if args.quick else FULL
    wrk = None if args.no_wrk else find_wrk(allow_install=not args.no_install)
    if wrk is None:
        print("NOTE: wrk is not available: closed-loop figures come from the Python generator, "
              "which may saturate before the receivers do.", flush=True)
    started = datetime.now(UTC)
    meta = _meta(args, wrk)

    def say(line: str) -> None:
        print(line, flush=True)

    results: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="factorflow-scale-") as tmp:
            root = Path(tmp)
            template = root / "delivery-1.json"
            body = delivery_template(1)
            template.write_bytes(body)

            def make_a(path: Path, webhook: WebhookTarget, _dbs: Databases | None) -> Deployment:
                return deployment_a(path, webhook)

            def make_b(path: Path, webhook: WebhookTarget, dbs: Databases | None) -> Deployment:
                assert dbs is not None
                return deployment_b(path, webhook, dbs, args.receivers, args.workers,
                                    args.worker_nice)

            for name, make, backend in (("A", make_a, "sqlite"), ("B", make_b, "postgres")):
                say(f"{name}: acknowledgements (open loop at {args.rate:,.0f}/s, then closed "
                    "loop)")
                with running(make, root, backend, args.pg_url) as (deployment, _webhook):
                    results[name] = {"label": deployment.label,
                                     **measure_acks(deployment, profile, wrk, template, body,
                                                    args.rate, say)}
                say(f"{name}: end to end (fresh start)")
                with running(make, root, backend, args.pg_url) as (deployment, webhook):
                    results[name]["end_to_end"] = measure_e2e(deployment, webhook, profile, say)
    except (BenchError, PipelineBenchError, OSError, asyncio.IncompleteReadError) as exc:
        print(f"ABORTED: {exc}", file=sys.stderr)
        return 2
    finished = datetime.now(UTC)
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarise(results)
    print(render(results, summary, meta))
    result = {
        "benchmark": "scale", "started": started.isoformat(), "finished": finished.isoformat(),
        "quick": args.quick, "machine": meta,
        "profile": {k: getattr(profile, k) for k in profile.__dataclass_fields__},
        "summary": summary, "deployments": results,
    }
    write_result(result, args.output, "scale", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
