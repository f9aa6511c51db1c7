"""Shared fixtures: settings in a temporary data dir, the ASGI app under a test client, a fresh
PostgreSQL database per test, and the published Okta corpus."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from factorflow.bootstrap import build_app
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


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"factorflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
