"""The dashboard's pages over a real store (SQLite and PostgreSQL) filled by the real hook
endpoint and the real pipeline: the overview's figures, the event list's filters and keyset
pages, the event page, the delivery gap, campaigns and their CSV, the audit chain, and a dead
letter retried from the dashboard."""

from __future__ import annotations

import csv
import html
import io
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from dbos import DBOSClient
from starlette.testclient import TestClient

from factorflow.settings import Settings
from factorflow.store.sql import SqlEventStore
from factorflow.store.system_log import SystemLogLedger
from factorflow.web.ui.reads.events import EventFilter, list_events
from factorflow.web.ui.reads.window import Window
from tests.conftest import SECRET
from tests.ui.conftest import BASE_URL, client_for, csrf_token, sign_in
from tests.ui.seed import (
    CAMPAIGN,
    delivery,
    enrollment,
    login,
    process,
    record,
    user_id,
)

NOW = datetime.now(UTC)


@dataclass
class Seeded:
    settings: Settings
    client: TestClient
    store: SqlEventStore
    events: dict[str, dict[str, Any]]  # name -> event

    def uuid(self, name: str) -> str:
        return str(self.events[name]["uuid"])

    def page(self, path: str) -> str:
        answer = self.client.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        return answer.text


def seed_events() -> dict[str, dict[str, Any]]:
    days = [NOW - timedelta(days=d, minutes=5) for d in (3, 2, 1, 0)]
    deactivation = enrollment(5, published=days[3])
    deactivation["eventType"] = "user.mfa.factor.deactivate"
    return {
        "push": enrollment(0, published=days[0]),
        "key": enrollment(1, published=days[1], authenticator="Security Key or Biometric",
                          method="WEBAUTHN"),
        "sms": enrollment(2, published=days[2], authenticator="Phone", method="SMS"),
        "by_admin": enrollment(3, published=days[3], by_admin=True),
        "outsider": enrollment(7, published=days[3], authenticator="Security Key or Biometric",
                               method="WEBAUTHN"),
        "deactivation": deactivation,
    }


@pytest.fixture
def seeded(make_site: Callable[..., Settings], store_url: str) -> Iterator[Seeded]:
    settings = make_site(store_url)
    with client_for(settings) as client:
        events = seed_events()
        answer = client.post("/hooks/okta", content=delivery(list(events.values())),
                             headers={"Authorization": SECRET, "Content-Type": "application/json"})
        assert answer.headers["factorflow-result"] == "new=6 duplicate=0 quarantined=0"
        store = client.app.store  # type: ignore[attr-defined]
        process(settings, store, [e["uuid"] for e in events.values()])
        assert sign_in(client).status_code == 303
        yield Seeded(settings, client, store, events)


def table_rows(page: str, caption: str) -> list[list[str]]:
    """The cells' text of the table with this caption (tags stripped)."""
    match = re.search(r"<table[^>]*>\s*<caption>" + re.escape(caption) + r".*?</table>", page,
                      re.S)
    assert match is not None, caption
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", match.group(0), re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        rows.append([html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells])
    return rows[1:]  # without the header row


def chart_data(page: str, chart_id: str) -> Any:
    match = re.search(rf'<script type="application/json" id="{chart_id}">(.*?)</script>', page,
                      re.S)
    assert match is not None
    return orjson.loads(match.group(1))


# -- overview --------------------------------------------------------------------------------


def test_overview_counts_enrollments_by_day_strength_who_and_factor(seeded: Seeded) -> None:
    page = seeded.page("/ui/?days=7")
    assert "<strong>5</strong> enrollments" in page
    chart = chart_data(page, "chart-enrollments")
    assert chart["labels"] == Window.last(7).day_labels()
    expected_days = {
        (NOW - timedelta(days=d, minutes=5)).date().isoformat(): n
        for d, n in ((3, 1), (2, 1), (1, 1))
    }
    today = (NOW - timedelta(minutes=5)).date().isoformat()
    expected_days[today] = expected_days.get(today, 0) + 2
    assert {d: n for d, n in zip(chart["labels"], chart["values"], strict=True) if n} == (
        expected_days)
    assert [r[:2] for r in table_rows(page, "By factor strength")] == [
        ["phishing_resistant", "2"], ["device_bound_push", "2"], ["otp", "0"],
        ["sms_voice_email", "1"], ["password_question", "0"], ["unknown", "0"]]
    assert [r[:2] for r in table_rows(page, "By who enrolled")] == [
        ["self", "4"], ["admin", "1"], ["api", "0"], ["system", "0"], ["unknown", "0"]]
    assert sorted(r[:2] for r in table_rows(page, "Top factors")) == [
        ["okta_verify_push", "2"], ["sms", "1"], ["webauthn", "2"]]
    admin_rows = table_rows(page, "Recent factors enrolled by an admin")
    assert [r[1:] for r in admin_rows] == [
        [login(3), "okta_verify_push (device_bound_push)", "helpdesk@example.com", "default"]]
    failed = table_rows(page, "Recently failed actions (open dead letters)")
    assert len(failed) == 1 and failed[0][2] == "jira admin-ticket/ticket"
    assert "no handler is configured for action kind 'jira'" in failed[0][3]
    assert re.search(r"<dt>Open dead letters</dt><dd><a [^>]+>1</a></dd>", page)
    assert "<dt>Events waiting for a worker</dt><dd>6</dd>" in page  # no worker ran the relay
    assert "<dt>Events being decided</dt><dd>0</dd>" in page


def test_overview_ignores_filtered_failed_and_old_events(seeded: Seeded) -> None:
    failure = enrollment(4, outcome="FAILURE")
    old = enrollment(6, published=NOW - timedelta(days=40))
    record(seeded.store, [failure, old], NOW)
    process(seeded.settings, seeded.store, [failure["uuid"], old["uuid"]])
    # Figures are cached for a moment: a new window length asks afresh.
    assert "<strong>5</strong> enrollments" in seeded.page("/ui/?days=30")
    assert "<strong>6</strong> enrollments" in seeded.page("/ui/?days=90")


# -- events ----------------------------------------------------------------------------------


def listed(seeded: Seeded, query: str) -> list[str]:
    page = seeded.page("/ui/events?" + query)
    return re.findall(r'href="/ui/events/([0-9a-f-]{36})"', page)


def test_event_list_filters(seeded: Seeded) -> None:
    u = seeded.uuid
    everything = listed(seeded, "")
    assert sorted(everything) == sorted(e["uuid"] for e in seeded.events.values())
    assert listed(seeded, f"q={login(1).upper()}") == [u("key")]
    assert listed(seeded, f"q={user_id(2)}") == [u("sms")]
    assert listed(seeded, f"q={u('push')}") == [u("push")]
    assert sorted(listed(seeded, "factor=webauthn")) == sorted([u("key"), u("outsider")])
    assert listed(seeded, "enrolled_by=admin") == [u("by_admin")]
    assert listed(seeded, "rule=admin-ticket") == [u("by_admin")]
    assert len(listed(seeded, "rule=enrolled")) == 5
    assert listed(seeded, "rule=no-such-rule") == []
    assert len(listed(seeded, "outcome=SUCCESS")) == 6
    assert listed(seeded, "outcome=FAILURE") == []
    assert len(listed(seeded, "provenance=hook")) == 6
    today = NOW.date().isoformat()
    assert len(listed(seeded, f"since={today}&until={today}")) == 6
    assert listed(seeded, "until=2001-01-01") == []
    assert sorted(listed(seeded, "enrolled_by=self&factor=okta_verify_push")) == sorted(
        [u("push"), u("deactivation")])
    # The System Log reconciler confirms one event and recovers another the hook never sent.
    recovered = enrollment(9)
    read_system_log(seeded.store, [seeded.events["sms"], recovered])
    assert listed(seeded, "provenance=log") == [recovered["uuid"]]
    assert listed(seeded, "provenance=both") == [u("sms")]
    assert len(listed(seeded, "provenance=hook")) == 5
    bad = seeded.page("/ui/events?since=yesterday")
    assert "&#39;yesterday&#39; is not a date (YYYY-MM-DD); it was ignored" in bad
    rows = table_rows(seeded.page(f"/ui/events?q={u('by_admin')}"),
                      "Stored events, newest first (filtered)")
    assert rows[0][2:] == [login(3), "okta_verify_push (device_bound_push)", "admin", "SUCCESS",
                           "decided", "hook"]


def test_event_list_pages_by_keyset_both_ways(seeded: Seeded) -> None:
    base = NOW - timedelta(hours=1)
    extra = [enrollment(100 + n, published=base) for n in range(70)]
    # Three deliveries; events of one delivery share their received_at (ties broken by seq).
    record(seeded.store, extra[:30], base)
    record(seeded.store, extra[30:31], base + timedelta(seconds=1))
    record(seeded.store, extra[31:], base + timedelta(seconds=2))
    first = seeded.page("/ui/events")
    first_ids = re.findall(r'href="/ui/events/([0-9a-f-]{36})"', first)
    assert len(first_ids) == 50
    older = re.search(r'href="\?older=([^"]+)" rel="next">Older</a>', first)
    assert older is not None and "Newer" not in first
    second = seeded.page("/ui/events?older=" + html.unescape(older.group(1)))
    second_ids = re.findall(r'href="/ui/events/([0-9a-f-]{36})"', second)
    assert len(second_ids) == 26 and not set(first_ids) & set(second_ids)
    assert 'rel="next">Older' not in second
    newer = re.search(r'href="\?newer=([^"]+)" rel="prev">Newer</a>', second)
    assert newer is not None
    back = seeded.page("/ui/events?newer=" + html.unescape(newer.group(1)))
    assert re.findall(r'href="/ui/events/([0-9a-f-]{36})"', back) == first_ids
    # The read model walks the same order a page of 7 at a time, either way.
    everything = first_ids + second_ids
    walked: list[str] = []
    page = list_events(seeded.store, EventFilter(), limit=7)
    while True:
        walked += [row.uuid for row in page.rows]
        if page.older is None:
            break
        page = list_events(seeded.store, EventFilter(), older_than=page.older, limit=7)
    assert walked == everything
    backwards: list[str] = []
    while page.newer is not None:
        page = list_events(seeded.store, EventFilter(), newer_than=page.newer, limit=7)
        backwards = [row.uuid for row in page.rows] + backwards
    assert backwards + walked[-(len(walked) % 7 or 7):] == everything


def test_event_page_shows_everything_about_the_event(seeded: Seeded) -> None:
    uuid = seeded.uuid("by_admin")
    page = seeded.page(f"/ui/events/{uuid}")
    assert f"Event <span class=\"mono\">{uuid}</span>" in page
    assert "(delivered by the event hook)" in page
    assert ("Not available yet: the System Log reconciler has not polled org default's "
            "System Log") in page
    assert "<dt>Processing status</dt><dd>decided</dd>" in page
    assert "<dt>Enrolled by</dt><dd>admin</dd>" in page
    assert "<dt>Actor</dt><dd>helpdesk@example.com</dd>" in page
    # The enrichment snapshot (from the directory file) and the rule trace.
    assert "Passwordless Pilot" in html.unescape(page)
    trace = table_rows(page, "Rule trace")
    assert [row[:2] for row in trace] == [["enrolled", "matched"], ["admin-ticket", "matched"]]
    actions = table_rows(page, "Every action with its attempts and result")
    assert [row[:2] for row in actions] == [
        ["admin-ticket/ticket", "jira"], ["enrolled/done", "checkpoint"],
        ["enrolled/log", "audit"]]
    assert actions[0][2].startswith("dead no handler is configured for action kind 'jira'")
    assert "permanent — no handler is configured" in actions[0][3]
    assert actions[1][2].startswith(f"done user {user_id(3)} completed campaign '{CAMPAIGN}'")
    assert re.search(r'<a href="/ui/dead-letters/\d+">Dead letter #\d+</a>', page)
    assert "Audit log rows" in page and "(rule:enrolled)" in page
    raw = re.search(r'<pre tabindex="0" class="raw">(.*?)</pre>', page, re.S)
    assert raw is not None
    assert orjson.loads(html.unescape(raw.group(1))) == seeded.events["by_admin"]
    # The reconciler reads a page of the System Log holding another event: the org is polled.
    read_system_log(seeded.store, [seeded.events["push"]])
    page = seeded.page(f"/ui/events/{uuid}")
    cursor = _when(seeded.events["push"]["published"])
    assert ("Not confirmed in the System Log yet: the reconciler has read org default's "
            f"System Log up to events published {cursor} (last poll ") in page
    confirmed = seeded.page(f"/ui/events/{seeded.uuid('push')}")
    assert "Confirmed in the System Log at " in confirmed
    assert "both (delivered by the event hook and found in the System Log)" in confirmed
    assert "The System Log copy came first" not in confirmed
    # An event only the System Log has: recovered, and the page says so.
    recovered = enrollment(9)
    read_system_log(seeded.store, [recovered])
    page = seeded.page(f"/ui/events/{recovered['uuid']}")
    assert "log (recovered from the System Log; the hook never delivered it)" in page
    assert ("The System Log copy came first: the reconciler recovered this event; the hook has "
            "not delivered it.") in page


def read_system_log(store: SqlEventStore, events: list[dict[str, Any]]) -> None:
    """What the System Log reconciler does with a page of the org's System Log."""
    SystemLogLedger(store).record_page("default", events, next_url=None,
                                       filter='eventType sw "user.mfa.factor"')


def _when(published: str) -> str:
    return f"{published[:10]} {published[11:19]} UTC"


def test_event_page_of_an_unprocessed_event_and_of_none(seeded: Seeded) -> None:
    waiting = enrollment(8)
    record(seeded.store, [waiting], NOW)
    page = seeded.page(f"/ui/events/{waiting['uuid']}")
    assert "<dt>Processing status</dt><dd>not processed yet</dd>" in page
    assert "<dt>Handed to the worker</dt><dd>not yet</dd>" in page
    assert "<dt>User</dt><dd>user8@example.com</dd>" in page  # normalised for display
    assert "No decision yet." in page
    missing = seeded.client.get("/ui/events/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert "No event with uuid 00000000-0000-0000-0000-000000000000 is stored." in missing.text


# -- delivery --------------------------------------------------------------------------------


def test_delivery_gap_counts_provenance_and_delay_percentiles(
    make_site: Callable[..., Settings], store_url: str
) -> None:
    settings = make_site(store_url)
    with client_for(settings) as client:
        store = client.app.store  # type: ignore[attr-defined]
        # The lag is measured against the clock when the page is drawn: take "now" here, not
        # when the module was imported (a long suite run would add its own duration).
        base = datetime.now(UTC) - timedelta(hours=2)
        events = [enrollment(n, published=base) for n in range(10)]
        for n, event in enumerate(events):  # delays of 1, 2, ... 10 seconds
            record(store, [event], base + timedelta(seconds=n + 1))
        process(settings, store, [e["uuid"] for e in events])
        assert sign_in(client).status_code == 303
        page = client.get("/ui/delivery").text
        assert "Not running: no org's System Log has been polled yet." in page
        # The reconciler confirms three hook deliveries and recovers one the hook never sent.
        recovered = enrollment(20, published=base)
        read_system_log(store, [*events[:3], recovered])
        page = client.get("/ui/delivery?days=7").text
        assert table_rows(page, "Delivered by hook and recovered") == [
            ["default", "11", "10", "90.9 %", "1", "1", "4", "0"]]
        # Nearest rank over the ten hook deliveries: p50 = 5 s, p90 = 9 s, p99 = max = 10 s.
        assert table_rows(page, "Hook delay (published → received by the hook)") == [
            ["default", "10", "5.0 s", "9.0 s", "10.0 s", "10.0 s"]]
        ((org, cursor, polled, lag, error),) = table_rows(page, "Cursor and lag per org")
        assert (org, cursor, error) == ("default", _when(recovered["published"]), "—")
        assert polled.endswith(" UTC") and re.fullmatch(r"2\.0 h", lag)
        assert "behind Okta" not in page
        # An event stored 3 min before Okta published it: the host's clock is behind Okta's.
        received = datetime.now(UTC)
        record(store, [enrollment(30, published=received + timedelta(minutes=3))], received)
        page = client.get("/ui/delivery?days=90").text  # a window not drawn yet: not cached
        assert ("Org default: 1 event was stored a second or more before Okta published "
                "them. The clock of the host that received them is behind Okta's by at least "
                "3.0 min;") in page
        assert table_rows(page, "Hook delay (published → received by the hook)") == [
            ["default", "11", "5.0 s", "9.0 s", "10.0 s", "10.0 s"]]


# -- campaigns -------------------------------------------------------------------------------


def test_campaign_progress_pending_and_csv(seeded: Seeded) -> None:
    listing = table_rows(seeded.page("/ui/campaigns"), "Configured migration campaigns")
    assert [row[:4] for row in listing] == [[
        f"{CAMPAIGN}Passwordless pilot", "group Passwordless Pilot (default)", "4", "2"]]
    assert "66.7 %" in listing[0][4]
    page = seeded.page(f"/ui/campaigns/{CAMPAIGN}")
    assert "<dt>Completed</dt><dd>4 (66.7 %)</dd>" in page
    assert "<dt>Completed outside the population</dt><dd>1</dd>" in page
    assert table_rows(page, "Still pending") == [[login(4), user_id(4)], [login(5), user_id(5)]]
    chart = chart_data(page, "chart-campaign")
    assert chart["values"][-1] == 66.7 and chart["labels"][-1] == NOW.date().isoformat()
    assert chart["values"] == sorted(chart["values"])
    export = seeded.client.get(f"/ui/campaigns/{CAMPAIGN}/export.csv")
    assert export.status_code == 200
    assert export.headers["content-type"] == "text/csv; charset=utf-8"
    assert export.headers["content-disposition"] == f'attachment; filename="{CAMPAIGN}.csv"'
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [(r["status"], r["login"]) for r in rows] == [
        ("completed", login(0)), ("completed", login(1)), ("completed", login(2)),
        ("completed", login(3)), ("pending", login(4)), ("pending", login(5)),
        ("outside_population", login(7))]
    done = {r["login"]: r for r in rows}
    assert done[login(1)]["factor_type"] == "webauthn"
    assert done[login(1)]["event_uuid"] == seeded.uuid("key")
    assert done[login(4)]["completed_at"] == ""
    missing = seeded.client.get("/ui/campaigns/nope")
    assert missing.status_code == 404 and "No campaign named &#39;nope&#39;" in missing.text
    assert seeded.client.get("/ui/campaigns/nope/export.csv").status_code == 404


def test_a_campaign_whose_population_cannot_be_read_says_why(
    make_site: Callable[..., Settings],
) -> None:
    settings = make_site(campaigns={
        "nobody": {"population_group": "No Such Group"},
        "elsewhere": {"population_group": "Everyone", "org": "other"},
    })
    with client_for(settings) as client:
        assert sign_in(client).status_code == 303
        rows = table_rows(client.get("/ui/campaigns").text, "Configured migration campaigns")
        assert [row[1] for row in rows] == [
            "group Everyone (other)org 'other' is not configured",
            "group No Such Group (default)group 'No Such Group' has no members in "
            "directory.yaml"]


# -- audit -----------------------------------------------------------------------------------


def test_audit_page_shows_rows_and_finds_tampering(seeded: Seeded) -> None:
    page = seeded.page("/ui/audit")
    assert "Chain intact: 5 rows checked, head row 5" in page
    rows = table_rows(page, "Audit rows, newest first")
    assert [row[0] for row in rows] == ["5", "4", "3", "2", "1"]
    assert {row[4] for row in rows} == {"rule:enrolled"}
    with seeded.store.write() as cur:
        cur.execute("UPDATE audit_log SET summary = 'nothing happened' WHERE seq = 3")
    # The verification is reused for a while; "Verify again" recomputes it.
    assert "Chain intact" in seeded.page("/ui/audit")
    token = csrf_token(seeded.page("/ui/audit"))
    answer = seeded.client.post("/ui/audit/verify", data={"csrf_token": token},
                                headers={"origin": BASE_URL})
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/audit?verified=1")
    page = seeded.page("/ui/audit?verified=1")
    assert ("Chain broken at row 3: row 3: its content does not match its hash (changed) "
            "(3 rows checked).") in html.unescape(page)


# -- dead letters ----------------------------------------------------------------------------


def test_retry_from_the_dashboard_enqueues_the_workflow_and_records_who(seeded: Seeded) -> None:
    store = seeded.store
    ((letter, key),) = store.read("SELECT id, idempotency_key FROM dead_letters")
    listing = table_rows(seeded.page("/ui/dead-letters"), "Dead letters (open), newest first")
    assert [row[0] for row in listing] == [f"#{letter}"]
    page = seeded.page(f"/ui/dead-letters/{letter}")
    assert f'href="/ui/dead-letters/{letter}/retry">Retry…</a>' in page
    confirm = seeded.page(f"/ui/dead-letters/{letter}/retry")
    assert f"Retry dead letter #{letter}?" in confirm
    # No worker has ever started, so the workflow engine has no tables yet: nothing changes.
    refused = seeded.client.post(f"/ui/dead-letters/{letter}/retry",
                                 data={"csrf_token": csrf_token(confirm)},
                                 headers={"origin": BASE_URL})
    assert refused.headers["location"] == f"/ui/dead-letters/{letter}?done=not_enqueued"
    assert store.read(
        "SELECT status, retries, resolved_at, resolved_by FROM dead_letters WHERE id = ?",
        (letter,)) == [("open", 0, None, None)]  # as before: the refused retry is not counted
    assert store.read("SELECT COUNT(*) FROM audit_log WHERE kind = 'dead_letter.retry'") == [
        (0,)]
    assert "the retry could not be handed to the workflow engine" in seeded.page(
        f"/ui/dead-letters/{letter}?done=not_enqueued")
    # What a worker's first start does: create the workflow engine's tables.
    subprocess.run([str(Path(sys.executable).parent / "dbos"), "migrate", "--sys-db-url",
                    seeded.settings.workflow_db_url()], check=True, capture_output=True,
                   timeout=120)
    answer = seeded.client.post(f"/ui/dead-letters/{letter}/retry",
                                data={"csrf_token": csrf_token(confirm)},
                                headers={"origin": BASE_URL})
    assert (answer.status_code, answer.headers["location"]) == (
        303, f"/ui/dead-letters/{letter}?done=retried")
    status, retries, resolved_by = store.read(
        "SELECT status, retries, resolved_by FROM dead_letters WHERE id = ?", (letter,))[0]
    assert (status, retries, resolved_by) == ("retrying", 1, "admin")
    kind, summary, actor, details = store.read(
        "SELECT kind, summary, actor, details FROM audit_log ORDER BY seq DESC LIMIT 1")[0]
    assert (kind, summary, actor) == ("dead_letter.retry", f"dead letter #{letter} retried",
                                      "admin")
    assert orjson.loads(details) == {"via": "dashboard", "workflow_id": f"dlq-{letter}-1"}
    # The retry waits in the workflow engine's queue for a worker, with the letter's request.
    client = DBOSClient(system_database_url=seeded.settings.workflow_db_url())
    try:
        (workflow,) = client.list_workflows(workflow_ids=[f"dlq-{letter}-1"])
        assert workflow.name == "factorflow.retry_dead_letter"
        assert str(workflow.status) in ("ENQUEUED", "WorkflowStatusString.ENQUEUED")
        assert workflow.input is not None
        assert workflow.input["args"][2]["idempotency_key"] == key
    finally:
        client.destroy()
    page = seeded.page(f"/ui/dead-letters/{letter}?done=retried")
    assert "Retry enqueued: a worker will run the action again" in page
    assert f'data-poll="/ui/dead-letters/{letter}/status.json"' in page
    status_json = seeded.client.get(f"/ui/dead-letters/{letter}/status.json").json()
    assert status_json["status"] == "retrying" and status_json["resolved_by"] == "admin"
    # Retrying again is refused while the first retry is pending: nothing changes.
    again = seeded.client.post(f"/ui/dead-letters/{letter}/retry",
                               data={"csrf_token": csrf_token(confirm)},
                               headers={"origin": BASE_URL})
    assert again.headers["location"] == f"/ui/dead-letters/{letter}?done=not_open"
    assert store.read("SELECT status, retries FROM dead_letters WHERE id = ?", (letter,)) == [
        ("retrying", 1)]
    assert store.read("SELECT COUNT(*) FROM audit_log WHERE kind = 'dead_letter.retry'") == [
        (1,)]
    assert seeded.client.get("/ui/dead-letters/999999").status_code == 404
    assert seeded.client.get(f"/ui/dead-letters/{letter}/explode").status_code == 404


def test_event_content_is_escaped_everywhere(
    make_site: Callable[..., Settings],
) -> None:
    settings = make_site()
    hostile = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    event = enrollment(2)
    event["target"][0]["alternateId"] = f"user2{hostile}@example.com"
    event["actor"]["alternateId"] = event["target"][0]["alternateId"]
    event["displayMessage"] = hostile
    with client_for(settings) as client:
        store = client.app.store  # type: ignore[attr-defined]
        record(store, [event], NOW)
        process(settings, store, [event["uuid"]])
        assert sign_in(client).status_code == 303
        for path in ("/ui/events", f"/ui/events/{event['uuid']}", "/ui/",
                     f"/ui/events?q=user2{hostile}@example.com"):
            page = client.get(path).text
            assert "<script>alert" not in page and "<img src=x" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(
            f"/ui/events/{event['uuid']}").text
