"""What the dashboard refuses, checked three ways: the status, the message shown, and that
the dead letters, the audit log and the events are as they were, read back from the store.

(The refusals that test_auth.py and test_pages.py already check all three ways are not
repeated here: unauthenticated requests, CSRF tokens and origins, the viewer's posts, a retry
the workflow engine cannot take, wrong passwords and the sign-in throttle.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from factorflow.settings import Settings
from factorflow.store.sql import SqlEventStore
from factorflow.web.ui.guard import MAX_FORM_BYTES
from factorflow.web.ui.sessions import VIEWER, Signer
from tests.ui.conftest import (
    ADMIN_PASSWORD,
    BASE_URL,
    SESSION_SECRET,
    client_for,
    csrf_token,
    signin_token,
)
from tests.ui.test_auth import COOKIE, dead_letter, session_cookie


def stored(reader: SqlEventStore) -> dict[str, Any]:
    """What a refused request must leave as it was."""
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in reader.read(sql)]

    return {
        "dead_letters": rows("SELECT id, status, retries, resolved_at, resolved_by "
                             "FROM dead_letters ORDER BY id"),
        "audit": rows("SELECT seq, kind, summary, actor, hash FROM audit_log ORDER BY seq"),
        "events": rows("SELECT uuid, raw FROM events ORDER BY uuid"),
        "decisions": rows("SELECT COUNT(*) FROM decisions"),
    }


@pytest.fixture
def letter(admin: TestClient, site: Settings) -> int:
    """One open dead letter (with its event, decision and audit rows) on the signed-in site."""
    return dead_letter(admin, site)


@pytest.fixture
def before(letter: int, reader: SqlEventStore) -> dict[str, Any]:
    found = stored(reader)
    assert [row[:3] for row in found["dead_letters"]] == [(letter, "open", 0)]
    assert found["audit"] and found["events"]
    return found


def token_of(admin: TestClient, letter: int) -> str:
    return csrf_token(admin.get(f"/ui/dead-letters/{letter}/discard").text)


def test_acting_on_a_dead_letter_that_does_not_exist(
    admin: TestClient, letter: int, before: dict[str, Any], reader: SqlEventStore
) -> None:
    token = token_of(admin, letter)
    for verb in ("retry", "discard"):
        shown = admin.get(f"/ui/dead-letters/999999/{verb}")
        assert shown.status_code == 404
        assert "No dead letter #999999." in shown.text
        answer = admin.post(f"/ui/dead-letters/999999/{verb}", data={"csrf_token": token},
                            headers={"origin": BASE_URL})
        assert answer.status_code == 404
        assert "No dead letter #999999." in answer.text
    status = admin.get("/ui/dead-letters/999999/status.json")
    assert (status.status_code, status.json()) == (
        404, {"error": "not_found", "message": "no dead letter #999999"})
    assert stored(reader) == before


def test_an_action_dead_letters_do_not_have(
    admin: TestClient, letter: int, before: dict[str, Any], reader: SqlEventStore
) -> None:
    token = token_of(admin, letter)
    shown = admin.get(f"/ui/dead-letters/{letter}/resolve")
    assert shown.status_code == 404
    assert "Dead letters can be retried or discarded, not &#39;resolve&#39;." in shown.text
    assert f"No dead letter #{letter}." not in shown.text  # the letter exists
    answer = admin.post(f"/ui/dead-letters/{letter}/resolve", data={"csrf_token": token},
                        headers={"origin": BASE_URL})
    assert answer.status_code == 404
    assert "Dead letters can be retried or discarded, not &#39;resolve&#39;." in answer.text
    hostile = admin.get(f"/ui/dead-letters/{letter}/<script>alert(1)</script>")
    assert hostile.status_code == 404
    assert "<script>alert(1)" not in hostile.text
    assert stored(reader) == before


@pytest.mark.parametrize("body", ["json", "too-large", "not-utf8"])
def test_a_post_that_is_no_form_is_a_400(
    admin: TestClient, letter: int, before: dict[str, Any], reader: SqlEventStore, body: str
) -> None:
    token = token_of(admin, letter)
    url = f"/ui/dead-letters/{letter}/discard"
    if body == "json":
        answer = admin.post(url, json={"csrf_token": token}, headers={"origin": BASE_URL})
    elif body == "too-large":
        answer = admin.post(url, data={"csrf_token": token, "note": "x" * MAX_FORM_BYTES},
                            headers={"origin": BASE_URL})
    else:
        answer = admin.post(url, content=b"csrf_token=" + token.encode() + b"&note=\xff\xfe",
                            headers={"origin": BASE_URL,
                                     "content-type": "application/x-www-form-urlencoded"})
    assert (answer.status_code, answer.text) == (400, "400 Bad Request: expected a form")
    assert stored(reader) == before


def test_a_viewer_is_told_why_the_confirmation_page_is_refused(
    client: TestClient, letter: int, before: dict[str, Any], reader: SqlEventStore
) -> None:
    client.cookies.clear()
    cookie, _token = session_cookie(role=VIEWER)
    client.cookies.set(COOKIE, cookie, domain="testserver.local")
    for verb in ("retry", "discard"):
        answer = client.get(f"/ui/dead-letters/{letter}/{verb}")
        assert (answer.status_code, answer.text) == (
            403, "403 Forbidden: your role may view the dashboard but not change anything")
    assert stored(reader) == before


def test_verifying_the_audit_chain_needs_the_form_token(
    admin: TestClient, letter: int, before: dict[str, Any], reader: SqlEventStore
) -> None:
    for form in ({"note": "x"}, {"csrf_token": "stale"}):
        answer = admin.post("/ui/audit/verify", data=form, headers={"origin": BASE_URL})
        assert answer.status_code == 403
        assert answer.text == ("403 Forbidden: the form's security token is missing or stale; "
                               "reload the page and try again")
    assert stored(reader) == before


def test_an_unknown_campaign_export_says_which(admin: TestClient, before: dict[str, Any],
                                               reader: SqlEventStore) -> None:
    answer = admin.get("/ui/campaigns/no-such-campaign/export.csv")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == "no campaign named 'no-such-campaign' is configured\n"
    assert stored(reader) == before


def test_a_store_that_fails_under_the_dashboard_is_a_503_and_loses_nothing(
    admin: TestClient, site: Settings, letter: int, before: dict[str, Any],
    reader: SqlEventStore,
) -> None:
    """The dead-letter table disappears under the running dashboard (a restore gone wrong):
    the pages and the discard answer 503 with the reason; once it is back, nothing changed
    and the discard works."""
    token = token_of(admin, letter)
    database = site.data_dir / "factorflow.db"
    operator = sqlite3.connect(database, isolation_level=None, timeout=5)
    try:
        operator.execute("ALTER TABLE dead_letters RENAME TO dead_letters_moved_away")
        for answer in (
            admin.get(f"/ui/dead-letters/{letter}"),
            admin.post(f"/ui/dead-letters/{letter}/discard", data={"csrf_token": token},
                       headers={"origin": BASE_URL}),
        ):
            assert answer.status_code == 503
            assert answer.text == ("503 Service Unavailable: the store is unavailable (sqlite "
                                   "read failed: OperationalError)")
    finally:
        operator.execute("ALTER TABLE dead_letters_moved_away RENAME TO dead_letters")
        operator.close()
    assert stored(reader) == before
    done = admin.post(f"/ui/dead-letters/{letter}/discard", data={"csrf_token": token},
                      headers={"origin": BASE_URL})
    assert done.headers["location"] == f"/ui/dead-letters/{letter}?done=discarded"
    assert [row[:3] for row in stored(reader)["dead_letters"]] == [(letter, "discarded", 0)]


# -- signing in ------------------------------------------------------------------------------


def session_cookies(answer: Any) -> list[str]:
    return [c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE)]


def test_a_sign_in_that_is_no_form_is_a_400_and_signs_nobody_in(client: TestClient) -> None:
    token = signin_token(client.get("/ui/signin").text)
    fields = {"username": "admin", "password": ADMIN_PASSWORD, "signin_token": token}
    answers = [
        client.post("/ui/signin", json=fields, headers={"origin": BASE_URL}),
        client.post("/ui/signin", data={**fields, "padding": "x" * MAX_FORM_BYTES},
                    headers={"origin": BASE_URL}),
    ]
    for answer in answers:
        assert answer.status_code == 400
        assert "Expected the sign-in form." in answer.text
        assert session_cookies(answer) == []
    assert client.get("/ui/").status_code == 303  # still signed out


def test_a_sign_in_with_an_altered_form_token_is_refused(client: TestClient) -> None:
    token = signin_token(client.get("/ui/signin").text)
    answer = client.post("/ui/signin", data={
        "username": "admin", "password": ADMIN_PASSWORD, "signin_token": token + "x",
    }, headers={"origin": BASE_URL})
    assert answer.status_code == 403
    assert "The sign-in form expired. Please try again." in answer.text
    assert session_cookies(answer) == []
    assert client.get("/ui/").status_code == 303


def test_without_an_identity_provider_its_pages_say_so(client: TestClient) -> None:
    for path in ("/ui/auth/oidc/start", "/ui/auth/oidc/callback?state=x&code=y"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "No identity provider is configured." in answer.text
        assert session_cookies(answer) == []
    assert client.get("/ui/").status_code == 303


@pytest.fixture
def oidc_client(make_site: Callable[..., Settings]) -> Iterator[TestClient]:
    """A dashboard with OIDC configured; no request in these tests reaches the provider."""
    site = make_site(ui={"oidc": {"issuer": "https://idp.example.com/oauth2/default",
                                  "client_id": "0oaDashboard0001"}})
    with client_for(site) as client:
        yield client


def test_a_callback_without_a_code_signs_nobody_in(oidc_client: TestClient) -> None:
    held = Signer(SESSION_SECRET.encode()).sign(
        "oidc", {"s": "state-1", "n": "nonce-1", "v": "verifier-1", "next": "/ui/"}, 600)
    oidc_client.cookies.set("__Host-factorflow_oidc", held, domain="testserver.local")
    answer = oidc_client.get("/ui/auth/oidc/callback?state=state-1")
    assert answer.status_code == 400
    assert "The identity provider sent no code." in answer.text
    assert session_cookies(answer) == []
    wrong_state = oidc_client.get("/ui/auth/oidc/callback?state=state-2&code=abc")
    assert wrong_state.status_code == 400
    assert "This sign-in was not started here or has expired." in wrong_state.text
    assert oidc_client.get("/ui/").status_code == 303
