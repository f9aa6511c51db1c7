"""Fixtures for the dashboard: a site (settings with rules, a directory and a campaign), its
app under a test client on https://testserver (so Secure cookies travel), and signing in."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from factorflow.bootstrap import build_app
from factorflow.settings import Settings
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from tests.conftest import SECRET, WATCHED_SECRETS
from tests.ui.seed import site_settings

ADMIN_PASSWORD = "correct-horse-battery-staple-7"
SESSION_SECRET = "test-session-secret-0123456789abcdef"
BASE_URL = "https://testserver"
WATCHED_SECRETS.update({ADMIN_PASSWORD, SESSION_SECRET})


def ui_section(**overrides: Any) -> dict[str, Any]:
    return {"admin_password": ADMIN_PASSWORD, "session_secret": SESSION_SECRET, **overrides}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'factorflow.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def make_site(tmp_path: Path) -> Callable[..., Settings]:
    def _make(store_url: str | None = None, **sections: Any) -> Settings:
        ui = ui_section(**sections.pop("ui", {}))
        store = {"url": store_url} if store_url else {}
        return site_settings(tmp_path / "data", secret=SECRET, ui=ui, store=store, **sections)

    return _make


@pytest.fixture
def site(make_site: Callable[..., Settings]) -> Settings:
    """The site on SQLite."""
    return make_site()


def client_for(settings: Settings) -> TestClient:
    return TestClient(build_app(settings), base_url=BASE_URL, follow_redirects=False)


@pytest.fixture
def client(site: Settings) -> Iterator[TestClient]:
    with client_for(site) as test_client:
        yield test_client


@pytest.fixture
def reader(site: Settings) -> Iterator[SqlEventStore]:
    """A second connection to the site's store, to check what is stored."""
    store = open_store(site.store_url())
    yield store
    store.close()


def signin_token(page: str) -> str:
    found = re.search(r'name="signin_token" value="([^"]+)"', page)
    assert found is not None, page[:500]
    return found.group(1)


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, page[:500]
    return found.group(1)


def sign_in(client: TestClient, username: str = "admin", password: str = ADMIN_PASSWORD,
            next_path: str = "/ui/") -> httpx.Response:
    """Fill in and post the sign-in form as a browser would (same origin)."""
    form = client.get("/ui/signin")
    assert form.status_code == 200
    return client.post("/ui/signin", data={
        "username": username, "password": password, "signin_token": signin_token(form.text),
        "next": next_path,
    }, headers={"origin": BASE_URL})


@pytest.fixture
def admin(client: TestClient) -> TestClient:
    """The client, signed in as the local admin."""
    answer = sign_in(client)
    assert answer.status_code == 303, answer.text
    return client
