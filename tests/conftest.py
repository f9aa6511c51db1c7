"""Shared fixtures: settings in a temporary data dir, the ASGI app under a test client, a fresh
PostgreSQL database per test, and the published Okta corpus."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from factorflow.bootstrap import build_app
from factorflow.logs import JsonFormatter
from factorflow.settings import Settings

PAYLOADS = Path(__file__).parent / "payloads"
CORPUS = PAYLOADS / "corpus"
SECRET = "Basic dGVzdDpzdXBlcnNlY3JldA=="
PG_URL = os.environ.get(
    "FACTORFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def make_settings(data_dir: Path, **sections: Any) -> Settings:
    """Settings for a test: its own data dir and a known secret, plus any overrides."""
    hook = {"secret": SECRET, **sections.pop("hook", {})}
    return Settings(data_dir=data_dir, hook=hook, **sections)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": SECRET, "Content-Type": "application/json"}


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (its URL), dropped afterwards."""
    name = f"factorflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_pg_database() as url:
        yield url


# -- the suite-wide secret watch ------------------------------------------------------------
# Every log record emitted in the test process, at every level of factorflow's loggers, is
# checked for the secrets the tests use; one leak anywhere fails the run. (Server processes
# started by the acceptance tests are checked by those tests, on their captured output.)
WATCHED_SECRETS: set[str] = {SECRET}


class _SecretWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.leaks: list[str] = []
        self.seen = 0
        self._format = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        text = self._format.format(record)
        for secret in WATCHED_SECRETS:
            if secret in text:
                self.leaks.append(text[:400])


_WATCH = _SecretWatch()


def pytest_sessionstart(session: pytest.Session) -> None:
    logging.getLogger().addHandler(_WATCH)
    logging.getLogger("factorflow").setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(_WATCH)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if _WATCH.leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"SECRET LEAK: {len(_WATCH.leaks)} log line(s) contain a "
                                "test secret:", red=True)
            for line in _WATCH.leaks[:20]:
                reporter.write_line(f"  {line}")
    elif reporter is not None:
        reporter.write_line(f"secret watch: {_WATCH.seen} log records checked, no secret found")
