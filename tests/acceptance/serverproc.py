"""Real factorflow child processes for end-to-end tests, and what drives them.

:class:`ServerProcess` starts the receiver the way an operator does (the CLI, settings from
``FACTORFLOW_*`` environment variables), on 127.0.0.1 and a free port, and waits until
``/readyz`` answers 200. :class:`WorkerProcess` starts ``factorflow worker`` and waits for its
banner. Everything a process prints goes to one log file, appended across restarts, so a test
can assert on what it logged. Either can be stopped the hard way (``kill9``: SIGKILL, nothing is
flushed) or the graceful way (``terminate``: SIGTERM and wait).

:class:`Installation` is one deployment's settings (shared by every process it starts, one data
dir), its processes, the CLI and a reader of its store; :func:`wait_until` polls for a state
with a bounded deadline; the event builders reshape the bundled sample delivery.

Usage::

    server = ServerProcess(tmp_path, secret="...", store_url=pg_url).start()
    answer = server.post(body)          # a delivery with the hook credential
    server.restart()                    # SIGTERM, then start again on the same port
    server.kill9()
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import httpx
import orjson
from dbos import DBOSClient, WorkflowStatus

from factorflow.errors import StoreUnavailable
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore

HOST = "127.0.0.1"
HOOK_PATH = "/hooks/okta"
DEADLINE = 90.0  # seconds an expected state may take to appear (a loaded 2-core machine)

T = TypeVar("T")


class ServerFailed(RuntimeError):
    """The server process did not become ready (its log tail is in the message)."""


def free_port() -> int:
    """A port nothing listens on right now (another process may still take it: ``start``
    retries on a new port if the bind fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], T], what: str,
               on_timeout: Callable[[], str] = lambda: "", *, timeout: float = DEADLINE) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and what
    ``on_timeout`` tells, e.g. a log tail) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{on_timeout()}")
        time.sleep(0.1)


class ChildProcess:
    """A ``factorflow`` CLI child process whose output is appended to ``<name>.log`` in
    ``workdir``; the lifecycle and the log that servers and workers share."""

    stop_timeout = 30.0  # how long ``terminate`` waits by default

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0  # where the current launch's output starts in the log file

    def _spawn(self, args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Run ``python -m factorflow.cli ARGS`` in ``workdir``, output to the log file."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.flush()
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "factorflow.cli", *args], cwd=self.workdir, env=dict(env),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )
        return self.proc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send_sigterm(self) -> None:
        """Ask for a graceful shutdown without waiting for it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end; its exit code (negative: killed by that signal)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float | None = None) -> int:
        """SIGTERM and wait for the process to end; its exit code."""
        self.send_sigterm()
        try:
            return self.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise

    def kill9(self) -> int:
        """SIGKILL: the process gets no chance to flush, commit or close anything."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def close(self) -> None:
        """Make sure nothing is left running; for test teardown."""
        if self.running:
            self.kill9()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- its output -----------------------------------------------------------------------

    def log_bytes(self) -> bytes:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def log_text(self) -> str:
        return self.log_bytes().decode("utf-8", errors="replace")

    def launch_output(self) -> str:
        """What the current launch printed so far."""
        return self.log_bytes()[self._log_offset:].decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines with this event name."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                record = orjson.loads(line)
                if record.get("event") == name:
                    records.append(record)
        return records


class ServerProcess(ChildProcess):
    """One receiver process; ``workdir`` holds its data dir (by default) and its log file."""

    def __init__(
        self,
        workdir: Path,
        *,
        secret: str,
        store_url: str | None = None,
        data_dir: Path | None = None,
        name: str = "server",
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(workdir, name)
        self.secret = secret
        self.data_dir = data_dir or workdir / "data"
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self._store_url = store_url
        self._extra_env = dict(env or {})
        self._extra_args = list(args)  # more ``serve`` options, e.g. ``--no-worker``

    # -- addresses and settings -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def hook_url(self) -> str:
        return self.base_url + HOOK_PATH

    @property
    def store_url(self) -> str:
        """The store this server writes to (the default SQLite file in its data dir)."""
        return self._store_url or f"sqlite:///{self.data_dir / 'factorflow.db'}"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": self.secret, "Content-Type": "application/json"}

    def environment(self) -> dict[str, str]:
        # Nothing of the caller's own factorflow configuration leaks into the child.
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith("FACTORFLOW_") or k == "FACTORFLOW_TEST_PG_URL"
        }
        env.update({
            "FACTORFLOW_DATA_DIR": str(self.data_dir),
            "FACTORFLOW_HOOK__SECRET": self.secret,
            "FACTORFLOW_LOG__FORMAT": "json",
        })
        if self._store_url is not None:
            env["FACTORFLOW_STORE__URL"] = self._store_url
        env.update(self._extra_env)
        return env

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> ServerProcess:
        """Launch the process; with ``wait``, return once /readyz answered 200."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._launch()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll /readyz until 200 (bounded); relaunch on a new port if the bind failed."""
        for _attempt in range(3):
            if self._poll_ready():
                return
            if "address already in use" not in self.launch_output():
                break
            self.port = free_port()
            self._launch()
        raise ServerFailed(f"{self.name} did not become ready:\n{self.log_tail()}")

    def _launch(self) -> None:
        self._spawn(["serve", "--host", HOST, "--port", str(self.port), *self._extra_args],
                    self.environment())

    def _poll_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.get(self.base_url + "/readyz").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.kill9()
        return False

    def restart(self, *, graceful: bool = True) -> ServerProcess:
        """Stop (SIGTERM, or SIGKILL if not ``graceful``) and start again on the same port."""
        if self.running:
            if graceful:
                self.terminate()
            else:
                self.kill9()
        return self.start()

    # -- talking to it --------------------------------------------------------------------

    def post(
        self,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        client: httpx.Client | None = None,
        timeout: float = 30.0,
    ) -> httpx.Response:
        """POST ``body`` to the hook path with the credential (``headers`` add or override)."""
        merged = {**self.auth_headers(), **(headers or {})}
        if client is not None:
            return client.post(self.hook_url, content=body, headers=merged)
        return httpx.post(self.hook_url, content=body, headers=merged, timeout=timeout)

    def verify(self, challenge: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """Okta's one-time verification GET."""
        merged = {
            "Authorization": self.secret, "X-Okta-Verification-Challenge": challenge,
            **(headers or {}),
        }
        return httpx.get(self.hook_url, headers=merged, timeout=30.0)

    def client(self, **kwargs: Any) -> httpx.Client:
        """A client with its own keep-alive connection to this server."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(**kwargs)


class WorkerProcess(ChildProcess):
    """``factorflow worker`` under its own executor id (``FACTORFLOW_WORKFLOWS__EXECUTOR_ID``)
    or, without one, the default (``local``); its output appended to ``<name>.log``, the name
    being the executor id unless given."""

    stop_timeout = 60.0

    def __init__(self, workdir: Path, env: Mapping[str, str], executor_id: str | None = None,
                 *, name: str | None = None, start_timeout: float = DEADLINE) -> None:
        super().__init__(workdir, name or executor_id or "worker")
        self.executor_id = executor_id or "local"
        self.env = dict(env)
        if executor_id is not None:
            self.env["FACTORFLOW_WORKFLOWS__EXECUTOR_ID"] = executor_id
        self.start_timeout = start_timeout

    def start(self) -> WorkerProcess:
        """Launch the worker; return once it logged that it is running."""
        proc = self._spawn(["worker"], self.env)
        banner = f"factorflow worker {self.executor_id} running"

        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {proc.returncode}:\n"
                                     f"{self.log_tail()}")
            return banner in self.launch_output()

        wait_until(started, f"{self.name} to start", self.log_tail, timeout=self.start_timeout)
        return self


# -- one installation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str
    store_url: str | None  # None: SQLite files in the installation's data dir (store and DBOS)
    system_url: str | None  # the workflow engine's system database


SQLITE = Backend("sqlite", None, None)


def write_rules(workdir: Path, text: str) -> Path:
    """``rules.yaml`` in ``workdir`` with ``text``; its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "rules.yaml"
    rules.write_text(text, encoding="utf-8")
    return rules


class Installation:
    """One factorflow installation: its settings (``FACTORFLOW_*`` variables shared by every
    process, one data dir in ``workdir``), its receivers and workers, the CLI, and a reader of
    its store and of the workflow engine's system database."""

    server_log_lines = 40  # how much of each process's log ``logs`` shows
    worker_log_lines = 40

    def __init__(self, workdir: Path, backend: Backend, *, secret: str,
                 settings: Mapping[str, str], deadline: float = DEADLINE) -> None:
        self.workdir = workdir
        self.backend = backend
        self.secret = secret
        self.deadline = deadline
        self.data_dir = workdir / "data"
        self.settings = {
            **({"FACTORFLOW_WORKFLOWS__SYSTEM_DATABASE_URL": backend.system_url}
               if backend.system_url else {}),
            **settings,
        }
        self.servers: list[ServerProcess] = []
        self.workers: list[WorkerProcess] = []
        self._reader: SqlEventStore | None = None
        self.env = self.server_process("probe").environment()

    # -- processes ---------------------------------------------------------------------------

    def server_process(self, name: str = "server", args: Sequence[str] = ()) -> ServerProcess:
        """A receiver of this installation, not started (nor closed with it)."""
        return ServerProcess(self.workdir, secret=self.secret, store_url=self.backend.store_url,
                             data_dir=self.data_dir, name=name, env=self.settings, args=args)

    def add_server(self, name: str = "server", args: Sequence[str] = ()) -> ServerProcess:
        """A receiver, not started, that ``close`` stops."""
        server = self.server_process(name, args)
        self.servers.append(server)
        return server

    def worker(self, executor_id: str | None = None) -> WorkerProcess:
        """A started worker (under ``executor_id``, or the default one)."""
        worker = WorkerProcess(self.workdir, self.env, executor_id, start_timeout=self.deadline)
        self.workers.append(worker)
        return worker.start()

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``factorflow ARGS`` the way an operator does, with this installation's settings
        (with ``ok``, it must succeed)."""
        done = subprocess.run(
            [sys.executable, "-m", "factorflow.cli", *args], cwd=self.workdir, env=self.env,
            capture_output=True, text=True, timeout=self.deadline, check=False,
        )
        if ok:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        for server in self.servers:
            server.close()
        if self._reader is not None:
            self._reader.close()

    def logs(self) -> str:
        parts = [f"--- {s.name} ---\n{s.log_tail(self.server_log_lines)}" for s in self.servers]
        parts += [f"--- {w.name} ---\n{w.log_tail(self.worker_log_lines)}" for w in self.workers]
        return "\n".join(parts)

    # -- reading the store and the workflow database -----------------------------------------

    @property
    def store_url(self) -> str:
        return self.backend.store_url or f"sqlite:///{self.data_dir / 'factorflow.db'}"

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._reader is None:
            self._reader = open_store(self.store_url, migrate=False)
        try:
            return [tuple(row) for row in self._reader.read(sql, params)]
        except StoreUnavailable:  # the database was restarted under the reader: once more
            return [tuple(row) for row in self._reader.read(sql, params)]

    def workflows(self) -> dict[str, WorkflowStatus]:
        """Every workflow in the engine's system database, by id."""
        url = self.backend.system_url or f"sqlite:///{self.data_dir / 'dbos.sqlite'}"
        client = DBOSClient(system_database_url=url)
        try:
            return {w.workflow_id: w for w in client.list_workflows(load_input=False)}
        finally:
            client.destroy()


# -- rules and settings ---------------------------------------------------------------------

# Every enrollment: an audit row, a signed webhook, a campaign checkpoint (in this order).
ENROLLMENT_RULES = """\
version: 1
match: all
rules:
  - id: enrolled
    description: Any MFA enrollment
    when:
      kind: [enrollment]
    actions:
      - id: log
        kind: audit
      - id: notify
        kind: webhook
        params:
          url: {url}
          secret: peer
          type: mfa.enrolled
      - id: done
        kind: checkpoint
        params:
          campaign: {campaign}
{more}"""

# No rule matches: every event gets the default action, one audit row.
AUDIT_ONLY_RULES = """\
version: 1
match: all
defaults:
  actions:
    - id: audit
      kind: audit
rules: []
"""


def enrollment_rules(url: str, campaign: str, more: str = "") -> str:
    """The rules of :data:`ENROLLMENT_RULES`, the webhook to ``url`` (``secret: peer``);
    ``more`` is appended to the rule (e.g. a ``suppress`` block)."""
    return ENROLLMENT_RULES.format(url=url, campaign=campaign, more=more)


def okta_audit_settings(workdir: Path, *, org_url: str, api_token: str,
                        reconcile_interval: float) -> dict[str, str]:
    """Settings of a receiver with its worker that looks users up in the Okta org at
    ``org_url`` and gives every event one audit row (:data:`AUDIT_ONLY_RULES`)."""
    return {
        "FACTORFLOW_PIPELINE__RULES_FILE": str(write_rules(workdir, AUDIT_ONLY_RULES)),
        "FACTORFLOW_OKTA__ORG_URL": org_url,
        "FACTORFLOW_OKTA__API_TOKEN": api_token,
        "FACTORFLOW_OKTA__RECONCILE_INTERVAL_SECONDS": str(reconcile_interval),
        "FACTORFLOW_WORKFLOWS__RELAY_INTERVAL_SECONDS": "0.2",
    }


# -- events ---------------------------------------------------------------------------------

SAMPLE = resources.files("factorflow").joinpath("examples/delivery-mfa-activate.json").read_bytes()
SAMPLE_EVENT: dict[str, Any] = orjson.loads(SAMPLE)["data"]["events"][0]


def stamp(moment: datetime) -> str:
    """Okta's ``published`` form: UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def enrollment_event(
    user_id: str, n: int, published: datetime, *,
    actor: dict[str, Any] | None = None,
    event_type: str | None = None,
    outcome: str = "SUCCESS",
    factor: tuple[str, str | None] | None = None,
    new_transaction: bool = True,
) -> dict[str, Any]:
    """The bundled enrollment event for user number ``n`` (id ``user_id``, login
    ``user{n}@example.com``), published at ``published``, under a fresh uuid and, with
    ``new_transaction``, a transaction id of its own. ``actor`` replaces the user as the actor;
    ``factor`` (authenticator, method) replaces the sample's enrolled factor (no method: no
    detail entry)."""
    event = copy.deepcopy(SAMPLE_EVENT)
    person = {"id": user_id, "type": "User", "alternateId": f"user{n}@example.com",
              "displayName": f"User {n}", "detailEntry": None}
    event["uuid"] = str(uuidlib.uuid4())
    if event_type is not None:
        event["eventType"] = event_type
    event["published"] = stamp(published)
    event["actor"] = actor or dict(person)
    event["target"][0] = person
    if factor is not None:
        authenticator, method = factor
        event["target"][1]["displayName"] = authenticator
        event["target"][1]["detailEntry"] = {"methodTypeUsed": method} if method else None
    event["outcome"] = {"result": outcome, "reason": None}
    if new_transaction:
        event["transaction"]["id"] = f"txn-{event['uuid'][:8]}"
    return event


def delivery_body(events: list[dict[str, Any]]) -> bytes:
    """The bundled delivery's envelope around ``events``, under a fresh delivery id."""
    envelope = orjson.loads(SAMPLE)
    envelope["eventId"] = str(uuidlib.uuid4())
    envelope["data"]["events"] = events
    return orjson.dumps(envelope)


@dataclass(frozen=True)
class Delivery:
    body: bytes
    uuids: tuple[str, ...]


def delivery(events: list[dict[str, Any]]) -> Delivery:
    """:func:`delivery_body` with the uuids of its events."""
    return Delivery(delivery_body(events), tuple(e["uuid"] for e in events))
