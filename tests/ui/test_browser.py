"""The dashboard in a real browser (headless Chromium) against a real ``factorflow serve``
process with its worker: sign in with the keyboard, find an event delivered a moment before
and open its page, retry a dead letter and watch it succeed, export a campaign's CSV; and sign
in with Okta, the local simulator (a real ``factorflow simulate serve`` process) as the
identity provider. Every page visited is screenshotted into test-artifacts/ui/ and checked for
accessible names and colour contrast; keyboard navigation is checked on the way.

The webhook action's receiver refuses the first request for good (HTTP 400), so the first
enrollment's webhook is dead-lettered; it accepts everything after, so the retry succeeds.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from factorflow.store.factory import open_store
from tests.acceptance.serverproc import (
    ServerProcess,
    enrollment_rules,
    free_port,
    wait_until,
    write_rules,
)
from tests.acceptance.webhook_peer import WebhookPeer
from tests.ui.browser import ARTIFACTS, check_page, launch
from tests.ui.seed import CAMPAIGN, PILOT_GROUP, delivery, directory_yaml, enrollment, login

pytestmark = pytest.mark.slow

HOOK_SECRET = "Bearer ui-browser-hook-secret-41c9"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"factorflow-dashboard-browser-key!").decode()
ADMIN_PASSWORD = "browser-admin-password-8d2f"
OIDC_CLIENT = "0oaBrowserDashboard1"
OIDC_SECRET = "browser-oidc-secret-61f0c2"
DEADLINE = 90.0


@pytest.fixture
def peer() -> Iterator[WebhookPeer]:
    with WebhookPeer(WEBHOOK_SECRET) as running:
        yield running


@pytest.fixture
def server(tmp_path: Path, peer: WebhookPeer) -> Iterator[ServerProcess]:
    rules = write_rules(tmp_path, enrollment_rules(peer.url, CAMPAIGN))
    directory = tmp_path / "directory.yaml"
    directory.write_text(directory_yaml(range(0, 4), range(4, 6)), encoding="utf-8")
    config = tmp_path / "factorflow.toml"
    config.write_text(f"""\
[pipeline]
rules_file = {json.dumps(str(rules))}
directory_file = {json.dumps(str(directory))}

[pipeline.retry.default]
max_attempts = 3
initial_seconds = 0.05
max_seconds = 0.2

[actions.webhook_secrets]
peer = {json.dumps(WEBHOOK_SECRET)}

[workflows]
queue_polling_seconds = 0.1
relay_interval_seconds = 0.2

[ui]
admin_password = {json.dumps(ADMIN_PASSWORD)}

[campaigns.{CAMPAIGN}]
description = "Passwordless pilot"
population_group = {json.dumps(PILOT_GROUP)}
required_strength = ["phishing_resistant"]
""", encoding="utf-8")
    process = ServerProcess(tmp_path, secret=HOOK_SECRET,
                            env={"FACTORFLOW_CONFIG": str(config)})
    with process:
        process.start()
        yield process
    assert ADMIN_PASSWORD not in process.log_text()
    assert HOOK_SECRET not in process.log_text()


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        context = browser.new_context(accept_downloads=True,
                                      viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        yield context.new_page()
        context.close()
        browser.close()


def rows(server: ServerProcess, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    store = open_store(server.store_url, migrate=False)
    try:
        return [tuple(row) for row in store.read(sql, params)]
    finally:
        store.close()


def sign_in_with_the_keyboard(page: Page, base: str) -> None:
    page.goto(f"{base}/ui/events")
    assert page.url == f"{base}/ui/signin?next=%2Fui%2Fevents"
    check_page(page, "01-sign-in")
    # The password field has the focus; the first Tab stop of the page is the skip link.
    expect(page.locator("#password")).to_be_focused()
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/ui/events")


def test_operator_signs_in_finds_an_event_retries_a_dead_letter_and_exports_a_campaign(
    server: ServerProcess, peer: WebhookPeer, page: Page
) -> None:
    base = server.base_url
    peer.then(400)  # the first webhook is refused for good: dead-lettered
    sign_in_with_the_keyboard(page, base)

    # -- an event delivered a moment before --------------------------------------------------
    first = enrollment(0, authenticator="Security Key or Biometric", method="WEBAUTHN")
    answer = server.post(delivery([first]))
    assert answer.status_code == 204
    page.reload()
    link = page.get_by_role("link", name=re.compile(r"UTC$")).first
    expect(page.locator("table.events tbody tr").first).to_contain_text(first["uuid"])
    wait_until(lambda: rows(server, "SELECT status FROM dead_letters"), "the dead letter",
               server.log_tail)
    link.click()
    page.wait_for_url(f"{base}/ui/events/{first['uuid']}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(first["uuid"])
    for heading in ("System Log confirmation", "Normalised fact", "Decisions", "Actions",
                    "Raw payload"):
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
    expect(page.get_by_role("table", name="Rule trace")).to_contain_text("matched")
    actions = page.get_by_role("table", name="Every action with its attempts and result")
    expect(actions).to_contain_text("enrolled/notify")
    expect(actions).to_contain_text("HTTP 400")
    page.get_by_text("The whole fact").click()
    expect(page.locator("pre").first).to_contain_text('"strength": "phishing_resistant"')
    check_page(page, "02-event")

    # -- the dead letter: retry, confirm, watch it succeed ------------------------------------
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Dead letters").click()
    expect(page.get_by_role("link", name="Dead letters")).to_have_attribute(
        "aria-current", "page")
    check_page(page, "03-dead-letters")
    ((letter_id,),) = rows(server, "SELECT id FROM dead_letters")
    page.get_by_role("link", name=f"#{letter_id}", exact=True).click()
    expect(page.locator("#letter-status")).to_have_text("open")
    page.get_by_role("link", name="Retry…").click()
    check_page(page, "04-retry-confirm")
    page.get_by_role("button", name=f"Confirm: retry dead letter #{letter_id}").click()
    expect(page.get_by_role("status").first).to_contain_text("Retry enqueued")
    expect(page.locator("#letter-status")).to_have_text("resolved", timeout=DEADLINE * 1000)
    check_page(page, "05-dead-letter-resolved")
    assert rows(server, "SELECT status, resolved_by, retries FROM dead_letters") == [
        ("resolved", "admin", 1)]
    assert rows(server, "SELECT status FROM action_results WHERE action_id = 'notify'") == [
        ("done",)]
    assert [r.status for r in peer.snapshot()] == [400, 204]
    assert sum(peer.effect_counts().values()) == 1
    assert rows(server, "SELECT kind, actor FROM audit_log WHERE kind LIKE 'dead_letter.%'") == [
        ("dead_letter.retry", "admin")]

    # -- the campaign: progress and its CSV ---------------------------------------------------
    page.get_by_role("link", name="Campaigns").click()
    check_page(page, "06-campaigns")
    page.get_by_role("link", name=CAMPAIGN).click()
    expect(page.locator("dl.facts")).to_contain_text("1 (25.0 %)")
    expect(page.locator("figure.chart svg[role=img]")).to_have_attribute(
        "aria-label", re.compile("Percent complete over time"))
    check_page(page, "07-campaign")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    assert download.suggested_filename == f"{CAMPAIGN}.csv"
    saved = ARTIFACTS / f"{CAMPAIGN}.csv"
    download.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert [(r["login"], r["status"]) for r in exported] == [
        (login(0), "completed"), (login(1), "pending"), (login(2), "pending"),
        (login(3), "pending")]
    assert exported[0]["event_uuid"] == first["uuid"]
    assert exported[0]["factor_type"] == "webauthn"

    # -- the other pages render and pass the checks -------------------------------------------
    for name, label in (("08-overview", "Overview"), ("09-delivery", "Delivery"),
                        ("10-audit", "Audit")):
        page.get_by_role("navigation", name="Main").get_by_role("link", name=label).click()
        check_page(page, name)
    expect(page.get_by_role("status").first).to_contain_text("Chain intact")
    page.get_by_role("link", name="Overview").click()
    chart = page.locator("figure.chart svg[role=img]")
    expect(chart).to_have_attribute("aria-label", re.compile(r"1 enrollments in all$"))


def test_keyboard_alone_reaches_everything(server: ServerProcess, page: Page) -> None:
    base = server.base_url
    sign_in_with_the_keyboard(page, base)
    page.goto(f"{base}/ui/")
    # The first Tab stop is the skip link; following it puts the focus on the content.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # Tabbing from the top visits the navigation in order, then sign-out, then the content.
    page.goto(f"{base}/ui/")
    names = []
    for _ in range(12):
        page.keyboard.press("Tab")
        names.append(page.evaluate(
            "(el => ['SELECT', 'INPUT'].includes(el.tagName) ? '#' + el.id"
            " : el.textContent.trim())(document.activeElement)"))
    assert names[:9] == ["Skip to content", "factorflow", "Overview", "Events", "Dead letters",
                         "Delivery", "Campaigns", "Audit", "Sign out"]
    assert names[9:11] == ["#days", "Show"]  # the period selector (labelled) and its button
    # A filter of the event list can be used from the keyboard alone.
    page.goto(f"{base}/ui/events")
    page.get_by_label("Enrolled by").focus()
    page.keyboard.press("End")  # the last choice: unknown
    page.get_by_label("Event uuid or user").focus()
    page.keyboard.type(login(9))
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/ui/events\?q=user9%40example.com"))
    expect(page.get_by_role("table")).to_contain_text("No events match these filters.")
    check_page(page, "11-events-filtered")
    # Signing out is a form post from the keyboard too.
    page.get_by_role("button", name="Sign out").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/ui/signin?signed_out=1")
    expect(page.get_by_role("status")).to_have_text("You are signed out.")


# -- signing in with Okta (the simulator) -------------------------------------------------------


@pytest.fixture
def okta_site(tmp_path: Path) -> Iterator[tuple[ServerProcess, subprocess.Popen[bytes], Path]]:
    """``factorflow simulate serve`` with an OIDC app for the dashboard (its first user, the
    org's administrator, an operator), and ``factorflow serve`` signing in through it."""
    config = tmp_path / "factorflow.toml"  # written once the simulator answers
    process = ServerProcess(tmp_path, secret=HOOK_SECRET, env={"FACTORFLOW_CONFIG": str(config)})
    redirect = f"{process.base_url}/ui/auth/oidc/callback"
    okta_port = free_port()
    issuer = f"http://127.0.0.1:{okta_port}/oauth2/default"
    secret_file = tmp_path / "oidc-secret"
    secret_file.write_text(OIDC_SECRET, encoding="utf-8")
    okta_log = tmp_path / "okta.log"
    with okta_log.open("wb") as log:
        okta = subprocess.Popen(
            [sys.executable, "-m", "factorflow.cli_okta", "serve", "--port", str(okta_port),
             "--users", "10", "--seed", "6", "--enrollments", "0", "--api-token", "dev-token",
             "--oidc-client-id", OIDC_CLIENT, "--oidc-client-secret-file", str(secret_file),
             "--oidc-redirect-uri", redirect, "--member", "Factorflow Operators=0",
             "--sign-in-as", "0"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(f"{issuer}/.well-known/openid-configuration"),
                   "the simulator", lambda: okta_log.read_text(encoding="utf-8"))
        config.write_text(f"""\
[ui]
admin_password = {json.dumps(ADMIN_PASSWORD)}

[ui.oidc]
issuer = {json.dumps(issuer)}
client_id = {json.dumps(OIDC_CLIENT)}
client_secret_file = {json.dumps(str(secret_file))}
allow_http_issuer = true
viewer_groups = ["Factorflow Viewers"]
operator_groups = ["Factorflow Operators"]
""", encoding="utf-8")
        with process:
            process.start()
            yield process, okta, okta_log
        assert OIDC_SECRET not in process.log_text()
    finally:
        okta.terminate()
        okta.wait(10)
    assert OIDC_SECRET not in okta_log.read_text(encoding="utf-8")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_operator_signs_in_with_okta(
    okta_site: tuple[ServerProcess, Any, Path], page: Page
) -> None:
    server, _okta, okta_log = okta_site
    base = server.base_url
    page.goto(f"{base}/ui/events")
    assert page.url == f"{base}/ui/signin?next=%2Fui%2Fevents"
    page.get_by_role("link", name="Sign in with Okta").click()
    # The simulator signs its administrator in and sends the browser back.
    page.wait_for_url(f"{base}/ui/events")
    signed_in = re.search(r"signs in: (\S+) ", okta_log.read_text(encoding="utf-8"))
    assert signed_in is not None
    expect(page.locator("header")).to_contain_text("(operator)")
    check_page(page, "12-signed-in-with-okta")
    lines = [json.loads(line) for line in server.log_text().splitlines()
             if line.startswith("{") and "ui.signed_in" in line]
    assert [(line["user"], line["method"], line["role"]) for line in lines] == [
        (signed_in.group(1), "oidc", "operator")]
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/ui/signin?signed_out=1")
