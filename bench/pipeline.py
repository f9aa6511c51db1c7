"""Pipeline benchmark: stored events through normalise → rules → three actions, against a
trivial three-step DBOS workflow on the same kind of system database, in the same run.

For each backend (SQLite files, or fresh PostgreSQL databases) and each queue configuration,
three kinds of child process run, alternating, each on fresh databases of its own (DBOS is a
process-wide singleton, so every measured run is a process of its own):

* ``baseline``: DBOS configured as factorflow's engine configures it (the same worker
  concurrency, queue polling interval, executor threads, WAL for SQLite) running a workflow of
  three steps that each return their input plus one; N workflows are enqueued and run.
* ``two-step``: the same with two steps, the step count of factorflow's workflow for one event
  whose three actions succeed at once (``evaluate``: prepare, enrich and decide;
  ``act_in_order``: the actions' first attempts). Not part of the target: it separates what
  DBOS costs for that many steps from factorflow's own work.
* ``factorflow``: N distinct ``user.mfa.factor.activate`` events (one user each) are stored
  before the clock starts, by a process of its own (as the receiver stores them in production,
  and so that the measured process's memory does not start with what storing them left
  behind); a rules file with one rule matching every enrollment asks for three
  actions: ``audit``, ``checkpoint`` and ``webhook`` (to a local HTTP server answering 204, run
  by this parent process so that it does not share the child's interpreter). The workflow
  engine is built by ``build_engine`` and started; the clock runs from the relay's first
  hand-off until DBOS reports every event's workflow done.

Each reports events (workflows) per second and the CPU time of its process per event; the table
gives factorflow / baseline against the target (>= 50 %). Each also reports its process's
resident memory (Linux only): VmRSS when the clock starts and when it stops, the peak (VmHWM,
reset when the clock starts) in between and the stop/start ratio; a second table gives them,
with each kind's peak against the baseline's. After every factorflow run the store and the fake
are checked: each event processed exactly once (decided once, one audit row, one
checkpoint per user, one webhook request per idempotency key, no dead letters, audit chain
intact); a failed check aborts the run.

    python bench/pipeline.py              # SQLite and PostgreSQL, about five minutes
    python bench/pipeline.py --queue 16/0.05   # only the work-bound configuration
    python bench/pipeline.py --quick      # a smoke run of about a minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import orjson

from procmem import NOT_MEASURED, MemoryWatch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULT_PREFIX = "BENCH-RESULT "
RATIO_TARGET = 0.50
NOOP_QUEUE = "bench-noop"
EVENT_WORKFLOW = "factorflow.process_event"
WEBHOOK_SECRET = "whsec_" + "YmVuY2gtc2lnbmluZy1rZXktMDEyMzQ1Njc4OWFi"  # 30 bytes, base64
CAMPAIGN = "bench-campaign"
PROFILE_MODE = os.environ.get("BENCH_PYSPY", "--gil").split()


class BenchError(Exception):
    """The benchmark cannot produce a trustworthy figure."""


class ChildFailed(BenchError):
    """A measured process failed (as opposed to a check that failed)."""


@dataclass(frozen=True)
class Profile:
    events: int
    repeats: int
    timeout_s: float


FULL = Profile(events=300, repeats=2, timeout_s=600.0)
QUICK = Profile(events=100, repeats=1, timeout_s=180.0)


# -- the fake webhook target (runs in the parent, so it does not share the child's GIL) -------


class WebhookTarget:
    """A keep-alive HTTP server answering 204 to every POST; counts each ``webhook-id``."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                with target.lock:
                    target.received[self.headers.get("webhook-id") or ""] += 1
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/factorflow"

    def start(self) -> None:
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.received.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- databases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Databases:
    store_url: str
    system_url: str


@contextlib.contextmanager
def fresh_databases(backend: str, workdir: Path, admin_url: str) -> Iterator[Databases]:
    """A store and a DBOS system database nobody has used, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="run-", dir=workdir) as tmp:
            yield Databases(f"sqlite:///{Path(tmp) / 'factorflow.db'}",
                            f"sqlite:///{Path(tmp) / 'dbos.sqlite'}")
        return
    import psycopg

    stem = f"factorflow_bench_{secrets.token_hex(4)}"
    names = (f"{stem}_store", f"{stem}_dbos")
    base = admin_url.rsplit("/", 1)[0]
    deadline = time.monotonic() + 60.0  # the server may be restarting: wait a little
    while True:
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
                for name in names:
                    with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a retry
                        conn.execute(f'CREATE DATABASE "{name}"')
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"cannot reach {admin_url}: {exc}") from exc
            time.sleep(2.0)
        except psycopg.Error as exc:
            raise BenchError(f"cannot create the scratch databases on {admin_url}: {exc}") from exc
    try:
        yield Databases(f"{base}/{names[0]}", f"{base}/{names[1]}")
    finally:
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                for name in names:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error as exc:
            print(f"WARNING: could not drop {', '.join(names)}: {exc}", file=sys.stderr)


# -- the child processes -----------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CompletionWatch:
    """Counts finished workflows in the DBOS system database, on its own connection. Workflows
    are told apart by their name, whichever queue they were enqueued on."""

    def __init__(self, system_url: str) -> None:
        self.system_url = system_url
        if system_url.startswith("sqlite:///"):
            self._conn: Any = sqlite3.connect(system_url.removeprefix("sqlite:///"))
            self._table = "workflow_status"
            self._placeholder = "?"
        else:
            import psycopg

            self._conn = psycopg.connect(system_url, autocommit=True)
            self._table = "dbos.workflow_status"
            self._placeholder = "%s"

    def counts(self, workflow: str) -> dict[str, int]:
        rows = self._conn.execute(
            f"SELECT status, COUNT(*) FROM {self._table} "  # noqa: S608 (a constant name)
            f"WHERE name = {self._placeholder} GROUP BY status",
            (workflow,),
        ).fetchall()
        return {str(status): int(count) for status, count in rows}

    def wait(self, workflow: str, n: int, deadline: float,
             on_poll: Callable[[int], None] | None = None) -> tuple[float, dict[str, int]]:
        """Poll until n workflows named ``workflow`` succeeded; (the moment that was seen,
        counts). ``on_poll`` is given the number done so far at each poll."""
        while True:
            counts = self.counts(workflow)
            now = time.perf_counter()
            if counts.get("SUCCESS", 0) >= n:
                return now, counts
            if on_poll is not None:
                on_poll(counts.get("SUCCESS", 0))
            failed = {k: v for k, v in counts.items() if k not in ("SUCCESS", "ENQUEUED",
                                                                      "PENDING")}
            if failed:
                raise BenchError(f"workflows ended badly: {counts}")
            if now > deadline:
                raise BenchError(f"timed out waiting for {n} workflows: {counts}")
            time.sleep(0.05)

    def step_times(self, workflow: str) -> dict[str, Any]:
        """Median and p90 milliseconds of each step (by position in the workflow) and of the
        span from a workflow's first step to its last, from DBOS's own step records."""
        prefix = "dbos." if self._table.startswith("dbos.") else ""
        rows = self._conn.execute(
            f"SELECT o.workflow_uuid, o.function_id, o.function_name, "  # noqa: S608 (constant)
            f"o.started_at_epoch_ms, o.completed_at_epoch_ms FROM {prefix}operation_outputs o "
            f"JOIN {self._table} w ON w.workflow_uuid = o.workflow_uuid "
            f"WHERE w.name = {self._placeholder}",
            (workflow,),
        ).fetchall()
        steps: dict[tuple[int, str], list[float]] = {}
        spans: dict[str, list[float]] = {}
        for workflow, function_id, name, started, completed in rows:
            if started is None or completed is None:
                continue
            steps.setdefault((int(function_id), str(name)), []).append(float(completed - started))
            first_last = spans.setdefault(str(workflow), [float(started), float(completed)])
            first_last[0] = min(first_last[0], float(started))
            first_last[1] = max(first_last[1], float(completed))

        def stats(values: list[float]) -> dict[str, float]:
            ordered = sorted(values)
            return {"p50": ordered[len(ordered) // 2],
                    "p90": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]}

        return {
            "steps": [{"function_id": fid, "name": name, **stats(values)}
                      for (fid, name), values in sorted(steps.items())],
            "workflow_span_ms": stats([b - a for a, b in spans.values()]) if spans else {},
        }

    def close(self) -> None:
        self._conn.close()


def wait_for_queue_thread(queue: str, timeout: float = 10.0) -> None:
    """DBOS starts a queue's worker thread up to a second after the queue is registered; the
    clock must not run before it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t.name == f"queue-worker-{queue}" for t in threading.enumerate()):
            return
        time.sleep(0.02)
    raise BenchError(f"the DBOS worker thread for queue {queue} did not start")


# The no-op references: "baseline" is the trivial three-step workflow; "two-step" has the
# step count of factorflow's workflow for one event with three actions (prepare, enrich, decide
# and one step per action), which tells DBOS's cost per step apart from factorflow's own work.
NOOP_STEPS = {"baseline": 3, "two-step": 2}
NOOP_WORKFLOW = "bench.noop"
KINDS = ("baseline", "two-step", "factorflow")


def child_noop(args: argparse.Namespace) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig, SetWorkflowID

    from factorflow.workflows.engine import prefer_wal

    @DBOS.step(name="bench.add_one")
    def add_one(value: int) -> int:
        return value + 1

    @DBOS.workflow(name=NOOP_WORKFLOW)
    def noop(value: int, steps: int) -> int:
        for _ in range(steps):
            value = add_one(value)
        return value

    steps = NOOP_STEPS[args.child]
    prefer_wal(args.system_url)  # as the engine does: a fair baseline gets WAL too
    config: DBOSConfig = {  # as WorkflowEngine.start configures DBOS
        "name": "factorflow-bench", "system_database_url": args.system_url,
        "application_version": "1", "executor_id": "local", "log_level": "WARNING",
        "max_executor_threads": max(8, args.concurrency * 2),
    }
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(NOOP_QUEUE, worker_concurrency=args.concurrency,
                        polling_interval_sec=args.polling)
    wait_for_queue_thread(NOOP_QUEUE)
    watch = CompletionWatch(args.system_url)
    memory = MemoryWatch()
    try:
        memory.start()
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        for i in range(args.events):
            with SetWorkflowID(f"bench-{i:06d}"):
                DBOS.enqueue_workflow(NOOP_QUEUE, noop, i, steps)
        enqueued = time.perf_counter()
        t1, counts = watch.wait(NOOP_WORKFLOW, args.events, t0 + args.timeout, memory.sample)
        cpu1 = _cpu_seconds()
        memory_figures = memory.stop(args.events)
        timings = watch.step_times(NOOP_WORKFLOW)
        handle: Any = DBOS.retrieve_workflow("bench-000001")
        if handle.get_result() != 1 + steps:
            raise BenchError("the no-op workflow returned the wrong result")
    finally:
        watch.close()
        DBOS.destroy(workflow_completion_timeout_sec=5)
    return {
        "kind": args.child, "step_count": steps, "events": args.events, "seconds": t1 - t0,
        "enqueue_seconds": enqueued - t0, "cpu_seconds": cpu1 - cpu0,
        "memory": memory_figures, "status_counts": counts, **timings,
    }


def bench_events(n: int, run: str) -> list[bytes]:
    """Deliveries of the bundled sample event, each with a fresh uuid and its own user."""
    sample = resources.files("factorflow").joinpath("examples/delivery-mfa-activate.json")
    document = orjson.loads(sample.read_bytes())
    template = document["data"]["events"][0]
    bodies = []
    for i in range(n):
        user = {**template["actor"], "id": f"00ubench{i:012d}",
                "alternateId": f"user{i}@bench.example.com", "displayName": f"User {i}"}
        event = {
            **template,
            "uuid": f"{run}-{i >> 16:04x}-11f1-8000-{i:012x}",
            "actor": user,
            "target": [user, *template["target"][1:]],
        }
        bodies.append(orjson.dumps({**document, "eventId": f"delivery-{run}-{i}",
                                    "data": {"events": [event]}}))
    return bodies


def store_events(store: Any, n: int) -> list[str]:
    from factorflow.okta.payloads import format_utc, parse_delivery
    from factorflow.store.base import Receipt

    received_at = format_utc(datetime.now(UTC))
    receipts = []
    for body in bench_events(n, secrets.token_hex(4)):
        delivery = parse_delivery(body)
        receipts.append(Receipt(delivery.delivery_id, delivery.hook_id, received_at, "default",
                                delivery))
    for start in range(0, n, 200):
        outcomes = store.record(receipts[start:start + 200])
        if sum(o.new for o in outcomes) != len(outcomes):
            raise BenchError("the events were not all stored as new")
    return [r.delivery.events[0].uuid for r in receipts]


def store_events_apart(store_url: str, n: int) -> list[str]:
    """``store_events`` in a process of its own (spawned), as the receiver stores events in
    production: the measured process does not start with the memory that parsing and storing
    the N events left behind, which would grow its baseline with N."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_store_events_at, store_url, n).result()


def _store_events_at(store_url: str, n: int) -> list[str]:
    from factorflow.store.factory import open_store

    store = open_store(store_url)
    try:
        return store_events(store, n)
    finally:
        store.close()


def rules_file(path: Path, webhook_url: str) -> Path:
    path.write_text(
        "version: 1\n"
        "match: all\n"
        "rules:\n"
        "  - id: every-enrollment\n"
        "    when:\n"
        "      kind: [enrollment]\n"
        "    actions:\n"
        "      - id: audit\n"
        "        kind: audit\n"
        "      - id: checkpoint\n"
        "        kind: checkpoint\n"
        f"        params: {{campaign: {CAMPAIGN}}}\n"
        "      - id: notify\n"
        "        kind: webhook\n"
        f"        params: {{url: '{webhook_url}', secret: bench}}\n",
        encoding="utf-8",
    )
    return path


def child_factorflow(args: argparse.Namespace) -> dict[str, Any]:
    from factorflow.bootstrap import build_engine
    from factorflow.logs import configure_logging
    from factorflow.settings import Settings
    from factorflow.store.factory import open_store
    from factorflow.workflows.engine import ORG_QUEUE

    workdir = Path(args.workdir)
    settings = Settings(
        data_dir=workdir,
        store={"url": args.store_url},
        pipeline={"rules_file": rules_file(workdir / "rules.yaml", args.webhook_url)},
        actions={"webhook_secrets": {"bench": WEBHOOK_SECRET}},
        workflows={"system_database_url": args.system_url,
                   "worker_concurrency": args.concurrency,
                   "queue_polling_seconds": args.polling},
        log={"level": "WARNING"},
    )
    configure_logging(settings.log.format, settings.log.level)  # as `factorflow worker` does
    uuids = store_events_apart(settings.store_url(), args.events)
    store = open_store(settings.store_url())
    engine = build_engine(settings, store)
    engine.start(relay=False)
    wait_for_queue_thread(ORG_QUEUE)  # the queue the relay hands events to
    watch = CompletionWatch(args.system_url)
    sampler = start_profiler(args.profile_to)
    memory = MemoryWatch()  # this process only: not py-spy's, not the PostgreSQL server's
    try:
        memory.start()
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        # What the relay thread does, on this thread: hand every stored event to DBOS.
        while engine.relay_once():
            pass
        relayed = time.perf_counter()
        t1, counts = watch.wait(EVENT_WORKFLOW, args.events, t0 + args.timeout, memory.sample)
        cpu1 = _cpu_seconds()
        memory_figures = memory.stop(args.events)
        timings = watch.step_times(EVENT_WORKFLOW)
    finally:
        stop_profiler(sampler)
        watch.close()
        engine.stop(10)
    checks = verify_store(store, uuids)
    store.close()
    return {
        "kind": "factorflow", "events": args.events, "seconds": t1 - t0,
        "enqueue_seconds": relayed - t0, "cpu_seconds": cpu1 - cpu0,
        "memory": memory_figures, "status_counts": counts, "store_check": checks, **timings,
    }


def verify_store(store: Any, uuids: list[str]) -> dict[str, Any]:
    """Every event decided once and each of its three actions done once."""
    from factorflow.actions.audit import verify_audit

    n = len(uuids)

    def scalar(sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(store.read(sql, params)[0][0])

    found = {
        "facts_decided": scalar("SELECT COUNT(*) FROM facts WHERE status = 'decided'"),
        "decisions": scalar("SELECT COUNT(*) FROM decisions"),
        "actions_done": scalar("SELECT COUNT(*) FROM action_results WHERE status = 'done'"),
        "actions_total": scalar("SELECT COUNT(*) FROM action_results"),
        # The audit action's rows (the worker may audit other things, such as a takeover).
        "audit_rows": scalar("SELECT COUNT(*) FROM audit_log WHERE actor = ?",
                             ("rule:every-enrollment",)),
        "audit_events": scalar("SELECT COUNT(DISTINCT event_uuid) FROM audit_log "
                               "WHERE actor = ?", ("rule:every-enrollment",)),
        "checkpoints": scalar("SELECT COUNT(*) FROM campaign_checkpoints WHERE campaign = ?",
                              (CAMPAIGN,)),
        "webhook_sends": scalar("SELECT COUNT(*) FROM webhook_sends"),
        "dead_letters": scalar("SELECT COUNT(*) FROM dead_letters"),
        "undispatched": scalar("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL"),
    }
    expected = {
        "facts_decided": n, "decisions": n, "actions_done": 3 * n, "actions_total": 3 * n,
        "audit_rows": n, "audit_events": n, "checkpoints": n, "webhook_sends": n,
        "dead_letters": 0, "undispatched": 0,
    }
    audit = verify_audit(store)
    problems = [f"{k}: {found[k]} (expected {v})" for k, v in expected.items() if found[k] != v]
    if not audit.ok:
        problems.append(f"audit chain broken at row {audit.first_bad_seq}: {audit.reason}")
    return {"found": found, "audit_chain_ok": audit.ok, "problems": problems,
            "ok": not problems}


def start_profiler(path: str | None) -> Any:
    """py-spy (if installed) sampling this process's threads while the clock runs."""
    if not path:
        return None
    import shutil

    beside = Path(sys.executable).with_name("py-spy")
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        print("NOTE: --profile: py-spy is not installed; not profiling", file=sys.stderr)
        return None
    # Collapsed stacks; "--gil" (default) samples the thread holding the interpreter lock.
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(os.getpid()), "--rate", "200", *PROFILE_MODE,
         "--format", "raw", "--output", path, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop_profiler(sampler: Any) -> None:
    if sampler is None:
        return
    import signal

    sampler.send_signal(signal.SIGINT)
    sampler.wait(timeout=60)


def child_main(args: argparse.Namespace) -> int:
    try:
        result = child_factorflow(args) if args.child == "factorflow" else child_noop(args)
    except BenchError as exc:
        print(f"{RESULT_PREFIX}{json.dumps({'error': str(exc)})}", flush=True)
        return 2
    print(f"{RESULT_PREFIX}{json.dumps(result)}", flush=True)
    return 0


# -- the parent ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueConfig:
    """``workflows.worker_concurrency`` and ``workflows.queue_polling_seconds``, used by both
    the baseline and factorflow."""

    concurrency: int
    polling: float

    @property
    def name(self) -> str:
        return f"{self.concurrency}/{self.polling:g}"

    @property
    def slug(self) -> str:
        """The name, usable in a file name (two configurations may share a concurrency)."""
        return f"{self.concurrency}-{self.polling:g}"

    @property
    def ceiling(self) -> float:
        """Workflows/s the queue can start at most: DBOS dequeues once per polling interval,
        at most as many as the worker has free slots."""
        return self.concurrency / self.polling

    @classmethod
    def parse(cls, text: str) -> QueueConfig:
        concurrency, _, polling = text.partition("/")
        try:
            config = cls(int(concurrency), float(polling))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected CONCURRENCY/POLLING_SECONDS such as 16/0.05"
            ) from None
        if config.concurrency < 1 or config.polling <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: both must be positive")
        return config


# A queue that can start far more workflows per second than either side runs, so the figures
# measure the work and not the polling.
WORK_BOUND = QueueConfig(16, 0.05)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Slot:
    """One measured child: what it runs, on which backend, with which queue settings."""

    kind: str
    backend: str
    queue: QueueConfig
    repeat: int


def run_child(slot: Slot, dbs: Databases, workdir: Path, profile: Profile,
              webhook: WebhookTarget, profile_path: Path | None) -> dict[str, Any]:
    argv = [
        sys.executable, str(Path(__file__).resolve()), "--child", slot.kind,
        "--events", str(profile.events), "--concurrency", str(slot.queue.concurrency),
        "--polling", str(slot.queue.polling), "--timeout", str(profile.timeout_s),
        "--store-url", dbs.store_url, "--system-url", dbs.system_url,
        "--webhook-url", webhook.url, "--workdir", str(workdir),
    ]
    if profile_path is not None:
        argv += ["--profile-to", str(profile_path)]
    log = workdir / f"{slot.kind}.log"
    with log.open("wb") as out:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out, env=_clean_env(),
                              timeout=profile.timeout_s + 120, cwd=workdir)
    line = next((ln for ln in done.stdout.decode().splitlines()[::-1]
                 if ln.startswith(RESULT_PREFIX)), None)
    result: dict[str, Any] | None = (
        json.loads(line.removeprefix(RESULT_PREFIX)) if line else None)
    if done.returncode != 0 or result is None or "error" in result:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        reason = result.get("error") if result else f"exit {done.returncode}"
        raise ChildFailed(f"{slot.kind} child failed: {reason}\n{tail}")
    result.update({
        "backend": slot.backend, "queue": slot.queue.name, "repeat": slot.repeat,
        "events_per_s": result["events"] / result["seconds"],
        "cpu_ms_per_event": result["cpu_seconds"] * 1000.0 / result["events"],
    })
    return result


def check_webhooks(webhook: WebhookTarget, n: int) -> dict[str, Any]:
    with webhook.lock:
        received = dict(webhook.received)
    repeated = sum(1 for count in received.values() if count != 1)
    ok = len(received) == n and repeated == 0 and "" not in received
    return {"distinct_keys": len(received), "requests": sum(received.values()),
            "repeated_keys": repeated, "ok": ok}


def measure(slot: Slot, args: argparse.Namespace, profile: Profile, webhook: WebhookTarget,
            root: Path) -> dict[str, Any]:
    workdir = root / f"{slot.backend}-{slot.queue.slug}-{slot.kind}-{slot.repeat}"
    workdir.mkdir()
    webhook.reset()
    profile_path = None
    if args.profile and slot.kind == "factorflow" and slot.repeat == 0:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        profile_path = (
            RESULTS_DIR / f"pipeline-profile-{slot.backend}-{slot.queue.slug}.txt"
        ).resolve()
    for attempt in (1, 2):
        try:
            with fresh_databases(slot.backend, root, args.pg_url) as dbs:
                run = run_child(slot, dbs, workdir, profile, webhook, profile_path)
            break
        except ChildFailed as exc:
            # Once: a database server restarted by someone else is not a finding.
            if attempt == 2:
                raise
            print(f"  {slot.kind} run failed, running it again once: "
                  f"{str(exc).splitlines()[0]}", flush=True)
            webhook.reset()
    run["attempts"] = attempt
    if slot.kind == "factorflow":
        run["webhook_check"] = check_webhooks(webhook, profile.events)
        if not (run["store_check"]["ok"] and run["webhook_check"]["ok"]):
            raise BenchError(
                f"{slot.backend}: exactly-once check failed: {run['store_check']} "
                f"{run['webhook_check']}"
            )
    return run


def summarise(runs: list[dict[str, Any]], backends: list[str],
              queues: list[QueueConfig]) -> list[dict[str, Any]]:
    rows = []
    for queue in queues:
        for backend in backends:
            row: dict[str, Any] = {"backend": backend, "queue": queue.name,
                                   "worker_concurrency": queue.concurrency,
                                   "queue_polling_seconds": queue.polling,
                                   "queue_ceiling_per_s": round(queue.ceiling, 1)}
            for kind in KINDS:
                mine = [r for r in runs if r["backend"] == backend and r["kind"] == kind
                        and r["queue"] == queue.name]
                row[kind] = {
                    "events_per_s": round(statistics.median(r["events_per_s"] for r in mine), 1),
                    "cpu_ms_per_event": round(
                        statistics.median(r["cpu_ms_per_event"] for r in mine), 3),
                    "runs": [round(r["events_per_s"], 1) for r in mine],
                    "workflow_span_p50_ms": statistics.median(
                        r["workflow_span_ms"].get("p50", 0.0) for r in mine),
                    "step_p50_ms": _step_medians(mine),
                    "memory": _memory_medians(mine),
                }
            ours, baseline = row["factorflow"], row["baseline"]
            ratio = ours["events_per_s"] / baseline["events_per_s"]
            row["ratio"] = round(ratio, 4)
            row["ratio_to_two_step"] = round(ours["events_per_s"]
                                             / row["two-step"]["events_per_s"], 4)
            row["cpu_ratio"] = round(baseline["cpu_ms_per_event"] / ours["cpu_ms_per_event"], 4)
            row["memory_peak_ratio"] = (
                round(ours["memory"]["peak_mib"] / baseline["memory"]["peak_mib"], 3)
                if ours["memory"] and baseline["memory"] else None)
            # The baseline near the queue's ceiling: the figures measure the polling, not work.
            row["queue_bound"] = baseline["events_per_s"] >= 0.8 * queue.ceiling
            row["target"] = {"target": f">= {RATIO_TARGET:.0%} of the baseline's events/s",
                             "value": round(ratio, 4), "pass": ratio >= RATIO_TARGET}
            rows.append(row)
    return rows


def _memory_medians(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The median over the runs of each memory figure; None if a run has none."""
    if not runs or any(r.get("memory") is None for r in runs):
        return None
    memory = [r["memory"] for r in runs]
    figures: dict[str, Any] = {
        key: round(statistics.median(m[key] for m in memory), 3)
        for key in ("rss_before_mib", "rss_after_mib", "peak_mib", "growth_mib", "ratio")
    }
    figures["events"] = memory[0]["work"]
    figures["peak_since"] = ("baseline" if all(m["peak_since"] == "baseline" for m in memory)
                             else "process start")
    return figures


def _step_medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step's median duration, the median over the runs."""
    by_step: dict[tuple[int, str], list[float]] = {}
    for run in runs:
        for step in run["steps"]:
            by_step.setdefault((step["function_id"], step["name"]), []).append(step["p50"])
    return [{"function_id": fid, "name": name, "p50_ms": statistics.median(values)}
            for (fid, name), values in sorted(by_step.items())]


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "",
        f"factorflow pipeline benchmark - {meta['cpus']} CPUs, Python {meta['python']}, "
        f"DBOS {meta['dbos']}, {meta['events']} events per run, median of {meta['repeats']}",
        "queue: workflows.worker_concurrency/queue_polling_seconds, the same for all three; "
        "ceiling = concurrency / polling",
        "baseline: 3 no-op steps (the target's reference); 2-step: 2 no-op steps (factorflow's "
        "step count); ratio = factorflow / baseline",
        "",
        f"{'backend':<10}{'queue':<9}{'ceiling':>9}{'baseline':>11}{'2-step':>10}"
        f"{'factorflow':>12}{'ratio':>8}   target",
    ]
    for row in rows:
        verdict = "PASS" if row["target"]["pass"] else "MISS"
        lines.append(
            f"{row['backend']:<10}{row['queue']:<9}{row['queue_ceiling_per_s']:>7,.0f}/s"
            f"{row['baseline']['events_per_s']:>9,.1f}/s{row['two-step']['events_per_s']:>8,.1f}/s"
            f"{row['factorflow']['events_per_s']:>10,.1f}/s{row['ratio']:>8.1%}"
            f"   >= {RATIO_TARGET:.0%} {verdict}"
            + ("  (baseline at the queue's ceiling)" if row["queue_bound"] else "")
        )
        lines.append(
            f"{'':<10}{'CPU ms/event':<16}{row['baseline']['cpu_ms_per_event']:>11.2f}"
            f"{row['two-step']['cpu_ms_per_event']:>10.2f}"
            f"{row['factorflow']['cpu_ms_per_event']:>12.2f}{row['cpu_ratio']:>8.1%}"
            "   (CPU baseline/factorflow)"
        )
        lines.append(
            f"{'':<10}{'workflow p50 ms':<16}{row['baseline']['workflow_span_p50_ms']:>11.1f}"
            f"{row['two-step']['workflow_span_p50_ms']:>10.1f}"
            f"{row['factorflow']['workflow_span_p50_ms']:>12.1f}"
            "           (first step start to last step end)"
        )
        steps = " · ".join(
            f"{step['name'].removeprefix('factorflow.')} {step['p50_ms']:.0f}"
            for step in row["factorflow"]["step_p50_ms"]
        )
        lines.append(f"{'':<10}factorflow step p50 ms: {steps}")
    lines += render_memory(rows, meta)
    lines += [
        "",
        "exactly-once check after every factorflow run: each event decided once, one audit "
        "row (chain intact), one checkpoint and one webhook request each, no dead letters: OK",
        f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']} "
        "(a shared machine makes every figure noisy)",
    ]
    return "\n".join(lines)


def render_memory(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Resident memory of each kind's process: at the clock's start (the baseline), at its stop,
    the peak in between, and each kind's peak against the baseline kind's."""
    if not any(row["factorflow"]["memory"] for row in rows):
        return ["", f"memory: {NOT_MEASURED}"]
    since = {row[kind]["memory"]["peak_since"] for row in rows for kind in KINDS
             if row[kind]["memory"]}
    lines = [
        "",
        f"memory of the measured process, MiB resident: when the clock starts -> when it stops "
        f"({meta['events']} events later), the peak in between"
        + ("" if since == {"baseline"} else " (or since the process started)")
        + f", median of {meta['repeats']}",
        f"{'backend':<10}{'queue':<9}{'kind':<12}{'start':>8}{'stop':>8}{'peak':>8}"
        f"{'stop/start':>12}{'peak/baseline':>15}",
    ]
    for row in rows:
        first = True
        for kind in KINDS:
            memory = row[kind]["memory"]
            head = f"{row['backend']:<10}{row['queue']:<9}" if first else " " * 19
            first = False
            if memory is None:
                lines.append(f"{head}{kind:<12}not measured")
                continue
            ratio = memory["peak_mib"] / row["baseline"]["memory"]["peak_mib"] \
                if row["baseline"]["memory"] else None
            lines.append(
                f"{head}{kind:<12}{memory['rss_before_mib']:>8.1f}{memory['rss_after_mib']:>8.1f}"
                f"{memory['peak_mib']:>8.1f}{memory['ratio']:>11.2f}x"
                + (f"{ratio:>14.2f}x" if ratio is not None else "")
            )
    return lines


def _meta(profile: Profile) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "dbos": version("dbos"),
        "factorflow": version("factorflow"), "sqlalchemy": version("sqlalchemy"),
        "psycopg": version("psycopg"), "events": profile.events, "repeats": profile.repeats,
    }


def default_queues() -> list[QueueConfig]:
    from factorflow.settings import WorkflowSettings

    defaults = WorkflowSettings()
    configured = QueueConfig(defaults.worker_concurrency, defaults.queue_polling_seconds)
    return [configured, WORK_BOUND] if configured != WORK_BOUND else [configured]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pipeline events/s against a trivial three-step DBOS workflow."
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--backends", default="sqlite,postgres",
                        help="comma-separated: sqlite, postgres (default: both)")
    parser.add_argument("--events", type=int, default=None,
                        help=f"events (workflows) per run (default {FULL.events}, "
                        f"quick {QUICK.events})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"runs of each kind per configuration (default {FULL.repeats}, "
                        f"quick {QUICK.repeats})")
    parser.add_argument("--queue", type=QueueConfig.parse, action="append", default=None,
                        metavar="CONCURRENCY/POLLING",
                        help="worker concurrency and queue polling seconds for both, e.g. "
                        "16/0.05; repeatable (default: the settings' defaults and "
                        f"{WORK_BOUND.name})")
    parser.add_argument("--pg-url", default=PG_ADMIN_URL,
                        help="PostgreSQL server to create the scratch databases on")
    parser.add_argument("--profile", action="store_true",
                        help="sample the first factorflow run of each configuration with "
                        "py-spy, if installed (collapsed stacks in bench/results/)")
    parser.add_argument("--output", type=Path, default=None,
                        help="result JSON (default: bench/results/pipeline-<timestamp>.json)")
    # Internal: how the parent starts a measured child.
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--polling", type=float, default=0.2, help=argparse.SUPPRESS)
    for name in ("--store-url", "--system-url", "--webhook-url", "--workdir", "--profile-to"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=FULL.timeout_s, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    base = QUICK if args.quick else FULL
    profile = Profile(events=args.events or base.events, repeats=args.repeats or base.repeats,
                      timeout_s=base.timeout_s)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or not set(backends) <= {"sqlite", "postgres"}:
        print("--backends takes sqlite and/or postgres", file=sys.stderr)
        return 2
    queues = args.queue or default_queues()
    started = datetime.now(UTC)
    meta = _meta(profile)
    meta["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    webhook = WebhookTarget()
    webhook.start()
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="factorflow-bench-") as tmp:
            for queue in queues:
                for backend in backends:
                    print(f"{backend}, queue {queue.name}: {profile.events} events per run",
                          flush=True)
                    for repeat in range(profile.repeats):
                        # Alternate, so that machine noise hits both kinds.
                        for kind in KINDS:
                            run = measure(Slot(kind, backend, queue, repeat), args, profile,
                                          webhook, Path(tmp))
                            runs.append(run)
                            memory = run.get("memory")
                            print(f"  #{repeat + 1} {kind:<10} {run['events_per_s']:>8.1f} "
                                  f"events/s  ({run['seconds']:.2f} s, CPU "
                                  f"{run['cpu_ms_per_event']:.2f} ms/event"
                                  + (f", RSS {memory['rss_before_mib']:.1f} -> "
                                     f"{memory['rss_after_mib']:.1f} MiB, peak "
                                     f"{memory['peak_mib']:.1f}" if memory else "")
                                  + ")", flush=True)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"ABORTED: {exc}", file=sys.stderr)
        return 2
    finally:
        webhook.stop()
    finished = datetime.now(UTC)
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    rows = summarise(runs, backends, queues)
    print(render(rows, meta))
    result = {
        "benchmark": "pipeline", "started": started.isoformat(),
        "finished": finished.isoformat(), "quick": args.quick, "machine": meta,
        "summary": rows, "runs": runs,
    }
    output = args.output
    if output is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        output = RESULTS_DIR / f"pipeline-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresult written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
