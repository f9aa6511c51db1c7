"""Signing in and what a session may do, at the ASGI level: redirects and 401s without a
session, the hardened cookies, wrong passwords and their throttle, tampered/expired/foreign
cookies, CSRF on every state change, the viewer role, secrets kept out of pages and logs, and
the settings that cannot work."""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from factorflow.bootstrap import build_app
from factorflow.errors import ConfigError
from factorflow.settings import Settings
from factorflow.store.sql import SqlEventStore
from factorflow.web.ui.passwords import hash_password
from factorflow.web.ui.sessions import OPERATOR, VIEWER, Signer
from tests.conftest import SECRET
from tests.ui.conftest import (
    ADMIN_PASSWORD,
    BASE_URL,
    SESSION_SECRET,
    client_for,
    csrf_token,
    sign_in,
    signin_token,
)
from tests.ui.seed import delivery, enrollment, process

HOOK_HEADERS = {"Authorization": SECRET, "Content-Type": "application/json"}


def deliver(client: TestClient, events: list[dict[str, Any]]) -> None:
    answer = client.post("/hooks/okta", content=delivery(events), headers=HOOK_HEADERS)
    assert answer.status_code == 204, answer.text


def dead_letter(client: TestClient, site: Settings) -> int:
    """Deliver an admin's enrollment and run the pipeline: its Jira action is dead-lettered."""
    event = enrollment(1, by_admin=True)
    deliver(client, [event])
    store = client.app.store  # type: ignore[attr-defined]
    process(site, store, [event["uuid"]])
    rows = store.read("SELECT id FROM dead_letters WHERE event_uuid = ?", (event["uuid"],))
    return int(rows[0][0])


def letter_state(reader: SqlEventStore, letter_id: int) -> tuple[Any, ...]:
    rows = reader.read("SELECT status, retries, resolved_at, resolved_by FROM dead_letters "
                       "WHERE id = ?", (letter_id,))
    return tuple(rows[0])


def audit_count(reader: SqlEventStore) -> int:
    return int(reader.read("SELECT COUNT(*) FROM audit_log")[0][0])


def session_cookie(user: str = "viewer@example.com", role: str = VIEWER, *,
                   secret: str = SESSION_SECRET, clock: Callable[[], float] = time.time,
                   max_age: int = 3600) -> tuple[str, str]:
    """A session cookie as the dashboard would make it (the secret is the site's), and its
    CSRF token."""
    session, value = Signer(secret.encode(), clock=clock).new_session(
        user=user, name=user, role=role, method="oidc", max_age=max_age)
    return value, session.csrf


COOKIE = "__Host-factorflow_session"


# -- without a session -----------------------------------------------------------------------


PAGES = ["/ui/", "/ui/events", "/ui/events/some-uuid", "/ui/dead-letters", "/ui/dead-letters/1",
         "/ui/dead-letters/1/retry", "/ui/delivery", "/ui/campaigns", "/ui/campaigns/pilot-2026",
         "/ui/audit"]


def test_pages_redirect_to_sign_in_and_everything_else_answers_401(
    client: TestClient, site: Settings, reader: SqlEventStore
) -> None:
    letter = dead_letter(client, site)
    before = (letter_state(reader, letter), audit_count(reader))
    for path in PAGES:
        answer = client.get(path + "?x=1")
        assert answer.status_code == 303, path
        assert answer.headers["location"] == "/ui/signin?next=" + path.replace("/", "%2F") + (
            "%3Fx%3D1"), path
    for path in ("/ui/campaigns/pilot-2026/export.csv", f"/ui/dead-letters/{letter}/status.json"):
        answer = client.get(path)
        assert (answer.status_code, answer.text) == (401, "401 Unauthorized: sign in at /ui/signin")
    for path in (f"/ui/dead-letters/{letter}/retry", f"/ui/dead-letters/{letter}/discard",
                 "/ui/signout", "/ui/audit/verify"):
        answer = client.post(path, data={"csrf_token": "x"})
        assert (answer.status_code, answer.text) == (401, "401 Unauthorized: sign in at /ui/signin")
    assert (letter_state(reader, letter), audit_count(reader)) == before
    # The hook is unchanged: its own credential, no session involved.
    assert client.post("/hooks/okta", content=delivery([enrollment(2)]),
                       headers=HOOK_HEADERS).status_code == 204
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"


def test_sign_in_page_and_static_assets_need_no_session(client: TestClient) -> None:
    page = client.get("/ui/signin")
    assert page.status_code == 200
    assert '<label for="username">Name</label>' in page.text
    assert '<label for="password">Password</label>' in page.text
    css = client.get("/ui/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    js = client.get("/ui/static/dashboard.js")
    assert js.status_code == 200 and "drawChart" in js.text


# -- signing in ------------------------------------------------------------------------------


def test_local_admin_signs_in_with_a_hardened_session_cookie(client: TestClient) -> None:
    answer = sign_in(client, next_path="/ui/events?factor=sms")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/events?factor=sms"
    cookies = answer.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith(f"{COOKIE}="))
    attributes = {part.strip().split("=")[0].lower() for part in session.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
    assert "samesite=lax" in session.lower() and "path=/" in session.lower()
    assert "max-age=28800" in session.lower()
    assert "domain" not in attributes  # __Host- cookies have none
    # The sign-in form's one-time token is cleared.
    assert any(c.startswith("__Host-factorflow_signin=\"\"") or
               c.startswith("__Host-factorflow_signin=;") for c in cookies)
    page = client.get("/ui/")
    assert page.status_code == 200
    assert "admin <span class=\"role\">(operator)</span>" in page.text
    headers = page.headers
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    # Signed in, the sign-in page sends you on.
    assert client.get("/ui/signin?next=/ui/audit").headers["location"] == "/ui/audit"


def test_wrong_passwords_are_refused_then_throttled(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="factorflow")
    for password in ("wrong-1", "wrong-2", "wrong-3", "wrong-4"):
        answer = sign_in(client, password=password)
        assert answer.status_code == 401
        assert "Wrong name or password." in answer.text
        assert not any(c.startswith(COOKIE) for c in answer.headers.get_list("set-cookie"))
    assert sign_in(client, username="root", password=ADMIN_PASSWORD).status_code == 401
    # Five failures from one address: even the right password waits now.
    answer = sign_in(client)
    assert answer.status_code == 429
    assert re.search(r"Too many failed sign-ins\. Try again in \d+ seconds\.", answer.text)
    assert not any(c.startswith(COOKIE) for c in answer.headers.get_list("set-cookie"))
    assert client.get("/ui/").status_code == 303
    failures = [r for r in caplog.records if r.getMessage() == "ui.signin_failed"]
    assert [r.fields["username"] for r in failures] == ["admin"] * 4 + ["root"]  # type: ignore[attr-defined]
    assert not any("wrong-" in r.getMessage() or "wrong-" in str(getattr(r, "fields", ""))
                   for r in caplog.records)


def test_sign_in_needs_its_form_token_and_this_origin(client: TestClient) -> None:
    form = client.get("/ui/signin")
    token = signin_token(form.text)
    fields = {"username": "admin", "password": ADMIN_PASSWORD, "next": "/ui/"}
    missing = client.post("/ui/signin", data=fields, headers={"origin": BASE_URL})
    assert missing.status_code == 403
    assert "The sign-in form expired. Please try again." in missing.text
    wrong = client.post("/ui/signin", data={**fields, "signin_token": token + "x"},
                        headers={"origin": BASE_URL})
    assert wrong.status_code == 403
    elsewhere = client.post("/ui/signin", data={**fields, "signin_token": token},
                            headers={"origin": "https://evil.example"})
    assert elsewhere.status_code == 403
    assert "The sign-in came from another site." in elsewhere.text
    not_a_form = client.post("/ui/signin", content=b'{"username": "admin"}',
                             headers={"origin": BASE_URL, "content-type": "application/json"})
    assert not_a_form.status_code == 400
    for answer in (missing, wrong, elsewhere, not_a_form):
        assert not any(c.startswith(COOKIE) for c in answer.headers.get_list("set-cookie"))
    assert client.get("/ui/").status_code == 303


@pytest.mark.parametrize("target", [
    "https://evil.example/ui/", "//evil.example/ui/", "/ui/\\evil", "/other", "javascript:x",
])
def test_sign_in_never_redirects_off_the_dashboard(client: TestClient, target: str) -> None:
    answer = sign_in(client, next_path=target)
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/")


def test_a_password_hash_works_in_place_of_the_password(make_site: Callable[..., Settings]) -> None:
    site = make_site(ui={"admin_password": None,
                         "admin_password_hash": hash_password("s3cret-hashed-pass",
                                                              iterations=10_000)})
    with client_for(site) as client:
        assert sign_in(client, password=ADMIN_PASSWORD).status_code == 401
        assert sign_in(client, password="s3cret-hashed-pass").status_code == 303
        assert client.get("/ui/").status_code == 200


def test_without_a_password_one_is_generated_for_the_owner_only(
    make_site: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    site = make_site(ui={"admin_password": None, "session_secret": None})
    caplog.set_level(logging.WARNING, logger="factorflow")
    with client_for(site) as client:
        path = site.data_dir / "ui-admin-password"
        password = path.read_text().strip()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(site.data_dir / "ui-session-secret").st_mode) == 0o600
        assert len(password) >= 24
        assert sign_in(client, password=password).status_code == 303
    generated = [r for r in caplog.records if r.getMessage() == "ui.secret_generated"]
    assert sorted(r.fields["setting"] for r in generated) == [  # type: ignore[attr-defined]
        "ui.admin_password", "ui.session_secret"]
    assert not any(password in str(getattr(r, "fields", "")) for r in caplog.records)
    # A second start reuses both.
    with client_for(site) as client:
        assert sign_in(client, password=password).status_code == 303


# -- cookies that must not work --------------------------------------------------------------


def test_altered_expired_foreign_and_misused_cookies_are_signed_out(client: TestClient) -> None:
    good, _csrf = session_cookie(role=OPERATOR)
    text, mac = good.split(".")
    payload = orjson.loads(_decode(text))
    payload["d"]["r"] = "operator"
    payload["d"]["u"] = "mallory"
    altered = _encode(orjson.dumps(payload)) + "." + mac
    expired, _ = session_cookie(clock=lambda: time.time() - 7200, max_age=3600)
    foreign, _ = session_cookie(secret="another-deployment-secret-0123456789")
    state = Signer(SESSION_SECRET.encode()).sign("oidc", {"s": "x"}, 600)
    for value in (altered, expired, foreign, state, "garbage", good + "x"):
        client.cookies.set(COOKIE, value, domain="testserver.local")
        assert client.get("/ui/").status_code == 303, value
    client.cookies.set(COOKIE, good, domain="testserver.local")
    assert client.get("/ui/").status_code == 200


def _decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# -- CSRF and roles --------------------------------------------------------------------------


def test_state_changes_need_the_session_csrf_token_and_this_origin(
    admin: TestClient, site: Settings, reader: SqlEventStore
) -> None:
    letter = dead_letter(admin, site)
    confirm = admin.get(f"/ui/dead-letters/{letter}/discard")
    assert confirm.status_code == 200
    token = csrf_token(confirm.text)
    before = (letter_state(reader, letter), audit_count(reader))
    _other_cookie, other_token = session_cookie(role=OPERATOR)
    url = f"/ui/dead-letters/{letter}/discard"
    cases = [
        ({"note": "x"}, {"origin": BASE_URL}, "the form's security token is missing or stale"),
        ({"csrf_token": ""}, {"origin": BASE_URL}, "the form's security token is missing"),
        ({"csrf_token": other_token}, {"origin": BASE_URL}, "security token is missing or stale"),
        ({"csrf_token": token}, {"origin": "https://evil.example"}, "cross-origin request"),
        ({"csrf_token": token}, {"referer": "https://evil.example/page"}, "cross-origin request"),
    ]
    for form, headers, message in cases:
        answer = admin.post(url, data=form, headers=headers)
        assert answer.status_code == 403, (form, headers)
        assert message in answer.text
    json_body = admin.post(url, json={"csrf_token": token}, headers={"origin": BASE_URL})
    assert json_body.status_code == 400
    assert (letter_state(reader, letter), audit_count(reader)) == before

    done = admin.post(url, data={"csrf_token": token}, headers={"origin": BASE_URL})
    assert (done.status_code, done.headers["location"]) == (
        303, f"/ui/dead-letters/{letter}?done=discarded")
    status, retries, resolved_at, resolved_by = letter_state(reader, letter)
    assert (status, retries, resolved_by) == ("discarded", 0, "admin")
    assert resolved_at is not None
    row = reader.read("SELECT kind, summary, actor, details FROM audit_log ORDER BY seq DESC "
                      "LIMIT 1")[0]
    assert tuple(row) == ("dead_letter.discard", f"dead letter #{letter} discarded", "admin",
                          '{"via":"dashboard"}')
    page = admin.get(f"/ui/dead-letters/{letter}?done=discarded")
    assert "Dead letter discarded: the action will not be retried." in page.text
    # Once discarded, a second discard changes nothing.
    again = admin.post(url, data={"csrf_token": token}, headers={"origin": BASE_URL})
    assert again.headers["location"] == f"/ui/dead-letters/{letter}?done=not_open"
    assert audit_count(reader) == before[1] + 1


def test_a_viewer_sees_everything_and_changes_nothing(
    client: TestClient, site: Settings, reader: SqlEventStore
) -> None:
    letter = dead_letter(client, site)
    cookie, token = session_cookie(role=VIEWER)
    client.cookies.set(COOKIE, cookie, domain="testserver.local")
    for path in ("/ui/", "/ui/events", "/ui/dead-letters", f"/ui/dead-letters/{letter}",
                 "/ui/delivery", "/ui/campaigns", "/ui/campaigns/pilot-2026", "/ui/audit"):
        assert client.get(path).status_code == 200, path
    assert client.get("/ui/campaigns/pilot-2026/export.csv").status_code == 200
    page = client.get(f"/ui/dead-letters/{letter}")
    assert "Your role may not retry or discard dead letters." in page.text
    assert "Retry…" not in page.text
    before = (letter_state(reader, letter), audit_count(reader))
    for verb in ("retry", "discard"):
        confirm = client.get(f"/ui/dead-letters/{letter}/{verb}")
        assert confirm.status_code == 403
        answer = client.post(f"/ui/dead-letters/{letter}/{verb}", data={"csrf_token": token},
                             headers={"origin": BASE_URL})
        assert answer.status_code == 403
        assert answer.text == ("403 Forbidden: your role may view the dashboard but not change "
                               "anything")
    assert (letter_state(reader, letter), audit_count(reader)) == before
    # Viewers may still sign out and re-verify the audit chain (it changes nothing stored).
    assert client.post("/ui/audit/verify", data={"csrf_token": token},
                       headers={"origin": BASE_URL}).status_code == 303


def test_sign_out_clears_the_session(admin: TestClient) -> None:
    token = csrf_token(admin.get("/ui/").text)
    refused = admin.post("/ui/signout", data={"note": "x"}, headers={"origin": BASE_URL})
    assert refused.status_code == 403
    assert admin.get("/ui/").status_code == 200
    answer = admin.post("/ui/signout", data={"csrf_token": token}, headers={"origin": BASE_URL})
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/signin?signed_out=1")
    assert any(c.startswith(f'{COOKIE}=""') and "max-age=0" in c.lower()
               for c in answer.headers.get_list("set-cookie"))
    assert admin.get("/ui/").status_code == 303
    assert "You are signed out." in admin.get("/ui/signin?signed_out=1").text


# -- secrets ---------------------------------------------------------------------------------


def test_no_secret_reaches_a_page_or_a_log(
    admin: TestClient, site: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    letter = dead_letter(admin, site)
    store = admin.app.store  # type: ignore[attr-defined]
    uuid = store.read("SELECT event_uuid FROM dead_letters WHERE id = ?", (letter,))[0][0]
    pages = ["/ui/", "/ui/events", f"/ui/events/{uuid}", "/ui/dead-letters",
             f"/ui/dead-letters/{letter}", f"/ui/dead-letters/{letter}/retry", "/ui/delivery",
             "/ui/campaigns", "/ui/campaigns/pilot-2026", "/ui/audit", "/ui/signin"]
    secrets = (SECRET, ADMIN_PASSWORD, SESSION_SECRET)
    for path in pages:
        body = admin.get(path).text
        assert not any(secret in body for secret in secrets), path
    assert not any(secret in caplog.text for secret in secrets)
    assert ADMIN_PASSWORD not in repr(site) and SESSION_SECRET not in repr(site)


# -- settings that cannot work ---------------------------------------------------------------


@pytest.mark.parametrize(("ui", "message"), [
    ({"admin_password_hash": "pbkdf2_sha256$10000$c2FsdA$aGFzaA"},
     "ui.admin_password and ui.admin_password_hash are both set; set one"),
    ({"admin_password": None, "admin_password_hash": "md5$abc"},
     "ui.admin_password_hash: expected pbkdf2_sha256$<iterations>$<salt>$<hash>"),
    ({"admin_password": None, "admin_password_hash": "pbkdf2_sha256$10$c2FsdA$aGFzaA"},
     "ui.admin_password_hash: iterations must be a number of at least 10000"),
    ({"session_secret": "short"}, "ui.session_secret must be at least 16 characters"),
    ({"admin_password": "  "}, "ui.admin_password is empty"),
    ({"oidc": {"issuer": "http://idp.example.com", "client_id": "abc"}},
     "ui.oidc.issuer must be an https:// URL (an http:// issuer on a loopback address needs "
     "ui.oidc.allow_http_issuer)"),
])
def test_ui_settings_that_cannot_work_stop_the_start(
    make_site: Callable[..., Settings], ui: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        build_app(make_site(ui=ui))
    assert str(raised.value) == message


def test_with_oidc_and_no_password_local_sign_in_is_off(
    make_site: Callable[..., Settings],
) -> None:
    site = make_site(ui={"admin_password": None, "oidc": {
        "issuer": "https://idp.example.com/oauth2/default", "client_id": "abc"}})
    with client_for(site) as client:
        page = client.get("/ui/signin")
        assert "Sign in with Okta" in page.text
        assert 'name="password"' not in page.text
        assert not (site.data_dir / "ui-admin-password").exists()
        answer = client.post("/ui/signin", data={
            "username": "admin", "password": "x", "signin_token": "x",
        }, headers={"origin": BASE_URL})
        assert answer.status_code == 403
        assert "Local sign-in is turned off." in answer.text


def test_the_dashboard_can_be_turned_off(make_site: Callable[..., Settings]) -> None:
    with client_for(make_site(ui={"enabled": False})) as client:
        assert client.get("/ui/").status_code == 404
        assert client.get("/ui/signin").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_the_configuration_check_describes_the_dashboard_and_writes_nothing(
    make_site: Callable[..., Settings],
) -> None:
    from factorflow.web.ui.credentials import describe_ui

    generated = make_site(ui={"admin_password": None, "session_secret": None})
    path = generated.data_dir / "ui-admin-password"
    assert describe_ui(generated) == [
        f"ui: /ui, local admin 'admin' (password will be generated into {path}), OIDC off, "
        "1 campaign(s)"]
    assert not path.exists() and not (generated.data_dir / "ui-session-secret").exists()
    oidc = make_site(ui={"admin_password": None, "oidc": {
        "issuer": "https://idp.example.com/oauth2/default", "client_id": "0oa1"}})
    assert describe_ui(oidc) == [
        "ui: /ui, local sign-in off, OIDC https://idp.example.com/oauth2/default client 0oa1, "
        "1 campaign(s)"]
    assert describe_ui(make_site()) == [
        "ui: /ui, local admin 'admin' (password configured), OIDC off, 1 campaign(s)"]
    assert describe_ui(make_site(ui={"enabled": False})) == ["ui: off (ui.enabled = false)"]
    with pytest.raises(ConfigError, match=r"ui\.session_secret must be at least 16 characters"):
        describe_ui(make_site(ui={"session_secret": "short"}))
