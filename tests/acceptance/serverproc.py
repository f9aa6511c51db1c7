"""A real ``factorflow serve`` child process for end-to-end tests.

:class:`ServerProcess` starts the receiver the way an operator does (the CLI, settings from
``FACTORFLOW_*`` environment variables), on 127.0.0.1 and a free port, and waits until
``/readyz`` answers 200. Everything the process prints goes to one log file, appended across
restarts, so a test can assert on what the server logged. It can be stopped the hard way
(``kill9``: SIGKILL, nothing is flushed) or the graceful way (``terminate``: SIGTERM and wait).

Usage::

    server = ServerProcess(tmp_path, secret="...", store_url=pg_url).start()
    answer = server.post(body)          # a delivery with the hook credential
    server.restart()                    # SIGTERM, then start again on the same port
    server.kill9()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

HOST = "127.0.0.1"
HOOK_PATH = "/hooks/okta"


class ServerFailed(RuntimeError):
    """The server process did not become ready (its log tail is in the message)."""


def free_port() -> int:
    """A port nothing listens on right now (another process may still take it: ``start``
    retries on a new port if the bind fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class ServerProcess:
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
        self.workdir = workdir
        self.secret = secret
        self.data_dir = data_dir or workdir / "data"
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._store_url = store_url
        self._extra_env = dict(env or {})
        self._extra_args = list(args)  # more ``serve`` options, e.g. ``--no-worker``
        self._log: IO[bytes] | None = None
        self._log_offset = 0  # where the current launch's output starts in the log file

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
            if "address already in use" not in self.log_text()[self._log_offset:]:
                break
            self.port = free_port()
            self._launch()
        raise ServerFailed(f"{self.name} did not become ready:\n{self.log_tail()}")

    def _launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log_offset = len(self.log_text())
        command = [
            sys.executable, "-m", "factorflow.cli", "serve",
            "--host", HOST, "--port", str(self.port), *self._extra_args,
        ]
        self.proc = subprocess.Popen(
            command, cwd=self.workdir, env=self.environment(),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )

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

    def send_sigterm(self) -> None:
        """Ask for a graceful shutdown without waiting for it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end; its exit code (negative: killed by that signal)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the process to end; its exit code."""
        self.send_sigterm()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise

    def kill9(self) -> int:
        """SIGKILL: the process gets no chance to flush, commit or close anything."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Make sure nothing is left running; for test teardown."""
        if self.running:
            self.kill9()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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

    # -- its output -----------------------------------------------------------------------

    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
