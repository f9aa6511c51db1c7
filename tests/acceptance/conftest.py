"""Fixtures the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.acceptance.serverproc import SQLITE, Backend
from tests.conftest import fresh_pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """SQLite files in the data dir, or two fresh PostgreSQL databases (the store and the
    workflow engine's system database)."""
    if request.param == "sqlite":
        yield SQLITE
        return
    with fresh_pg_database() as store_url, fresh_pg_database() as system_url:
        yield Backend("postgres", store_url, system_url)
