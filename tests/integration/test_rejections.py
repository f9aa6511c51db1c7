"""Refusals that the other test files leave partly unchecked, each checked three ways: the
status (or exit code), the message, and that what was stored before is still there, read back
from the store (never from the answer).

The hook endpoint's slow body, verification and mid-body disconnect; the other HTTP routes;
the command line (unknown uuids and dead letters, bad arguments, export files, rules and
directory files, the workflow engine's database not being ready); the System Log answering
something that is no page of events; the Okta simulator's group membership endpoint and its
command line.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result
from starlette.testclient import TestClient
from tests.conftest import SECRET, WATCHED_SECRETS
from tests.integration.test_hook_endpoint import (
    assert_error,
    delivery,
    okta_event,
    snapshot,
    store_of,
)
from tests.okta.support import MFA_TYPES, TOKEN, simulated_okta
from tests.ui.seed import RULES, directory_yaml, enrollment, process, record

from factorflow.cli import main
from factorflow.cli_okta import simulate
from factorflow.okta.api import OktaApiSettings, OktaClient
from factorflow.okta.reconcile import Reconciler
from factorflow.settings import Settings, load_settings
from factorflow.store.factory import open_store
from factorflow.store.system_log import SystemLogLedger

HOOK = "/hooks/okta"


@pytest.fixture
def stored_before(client: TestClient, auth: dict[str, str]) -> dict[str, Any]:
    """Two stored events and a quarantined one; the store's state afterwards."""
    events = [okta_event("kept-1"), okta_event("kept-2"),
              okta_event("kept-bad", published="yesterday")]
    answer = client.post(HOOK, content=delivery(events, "kept-delivery"), headers=auth)
    assert answer.headers["factorflow-result"] == "new=2 duplicate=0 quarantined=1"
    state = snapshot(store_of(client))
    assert state["counts"] == {"events": 2, "deliveries": 1, "quarantined": 1}
    return state


# -- the hook endpoint -------------------------------------------------------------------------


def test_an_overlong_challenge_is_refused_and_nothing_stored_changes(
    client: TestClient, stored_before: dict[str, Any]
) -> None:
    answer = client.get(HOOK, headers={"Authorization": SECRET,
                                       "X-Okta-Verification-Challenge": "c" * 1025})
    assert_error(answer, 400, "bad_challenge", "verification challenge too long")
    assert "c" * 100 not in answer.text  # the challenge is not echoed
    assert snapshot(store_of(client)) == stored_before


def _post_asgi(client: TestClient, receive: Any) -> tuple[int, bytes]:
    """A POST to the hook whose body ``receive`` hands over, as a server would."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": HOOK, "raw_path": HOOK.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [(b"authorization", SECRET.encode()), (b"content-type", b"application/json"),
                    (b"transfer-encoding", b"chunked")],
    }
    app: Any = client.app

    async def call() -> None:
        await app(scope, receive, send)

    assert client.portal is not None
    client.portal.call(call)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), b"".join(m.get("body", b"") for m in sent
                                          if m["type"] == "http.response.body")


def test_a_client_that_goes_away_mid_body_is_told_why_and_nothing_stored_changes(
    client: TestClient, stored_before: dict[str, Any]
) -> None:
    body = delivery([okta_event("abandoned")])
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:40], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    status, answer = _post_asgi(client, receive)
    assert status == 400
    assert orjson.loads(answer) == {"error": "client_disconnected",
                                    "message": "client went away mid-body"}
    assert messages == []
    assert snapshot(store_of(client)) == stored_before


def test_a_body_that_stops_arriving_is_a_408_and_nothing_stored_changes(
    client: TestClient, stored_before: dict[str, Any]
) -> None:
    """The receiver's own deadline ends the request (its sweep runs once a second): this test
    waits for it, it does not race it."""
    body = delivery([okta_event("trickled")])
    handed: list[int] = []

    async def receive() -> dict[str, Any]:
        if not handed:
            handed.append(1)
            return {"type": "http.request", "body": body[:60], "more_body": True}
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    status, answer = _post_asgi(client, receive)
    assert status == 408
    assert orjson.loads(answer) == {"error": "body_timeout",
                                    "message": "the body did not arrive within 10 s"}
    assert snapshot(store_of(client)) == stored_before
    assert store_of(client).get_event("trickled") is None


# -- the other HTTP routes ---------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/openapi.json"), ("DELETE", "/healthz"), ("POST", "/readyz"), ("PUT", "/metrics"),
])
def test_other_methods_on_the_service_routes_are_a_405(
    client: TestClient, stored_before: dict[str, Any], method: str, path: str
) -> None:
    answer = client.request(method, path, content=delivery([okta_event("elsewhere")]),
                            headers={"Authorization": SECRET,
                                     "Content-Type": "application/json"})
    assert answer.status_code == 405
    assert answer.text == "Method Not Allowed"
    assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert snapshot(store_of(client)) == stored_before


def test_an_unknown_path_is_a_404_even_with_the_hook_credential(
    client: TestClient, stored_before: dict[str, Any]
) -> None:
    for path in ("/hooks/other", "/hooks/okta/extra", "/api/v1/logs"):
        answer = client.post(path, content=delivery([okta_event("lost")]),
                             headers={"Authorization": SECRET,
                                      "Content-Type": "application/json"})
        assert (answer.status_code, answer.text) == (404, "Not Found"), path
    assert snapshot(store_of(client)) == stored_before


# -- the command line --------------------------------------------------------------------------


@dataclass
class Site:
    """A configured deployment with events, a quarantined event, decisions, audit rows and
    one open dead letter (the admin enrollment's Jira action: Jira is not configured)."""

    config: Path
    settings: Settings
    letter: int
    uuids: list[str]
    env: dict[str, str]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FACTORFLOW_")}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    for name in list(os.environ):
        if name.startswith("FACTORFLOW_"):
            monkeypatch.delenv(name)
    data = tmp_path / "data"
    data.mkdir()
    (data / "rules.yaml").write_text(RULES, encoding="utf-8")
    (data / "directory.yaml").write_text(directory_yaml(range(0, 6), range(6, 9)),
                                         encoding="utf-8")
    config = tmp_path / "factorflow.toml"
    config.write_text(
        f'data_dir = "{data}"\n[hook]\nsecret = "{SECRET}"\n[ui]\nenabled = false\n'
        f'[pipeline]\nrules_file = "{data / "rules.yaml"}"\n'
        f'directory_file = "{data / "directory.yaml"}"\n', encoding="utf-8")
    settings = load_settings(config)
    events = [enrollment(1, by_admin=True), enrollment(2)]
    broken = enrollment(3)
    broken["published"] = "yesterday"
    store = open_store(settings.store_url())
    try:
        record(store, [*events, broken], datetime.now(UTC) - timedelta(minutes=1))
        process(settings, store, [e["uuid"] for e in events])
        ((letter,),) = store.read("SELECT id FROM dead_letters")
    finally:
        store.close()
    return Site(config, settings, int(letter), [e["uuid"] for e in events], _clean_env())


def state(site: Site) -> dict[str, Any]:
    """Everything the site's store holds that a refusal must leave alone."""
    store = open_store(site.settings.store_url(), migrate=False)
    try:
        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in store.read(sql)]

        found = {
            "events": rows("SELECT uuid, provenance, raw FROM events ORDER BY uuid"),
            "deliveries": rows("SELECT delivery_id, events_total, events_new, "
                               "events_quarantined FROM deliveries ORDER BY id"),
            "quarantine": rows("SELECT id, uuid, reason_code FROM quarantine ORDER BY id"),
            "decisions": rows("SELECT COUNT(*) FROM decisions"),
            "dead_letters": rows("SELECT id, status, retries FROM dead_letters ORDER BY id"),
            "audit": rows("SELECT seq, kind, summary, actor FROM audit_log ORDER BY seq"),
        }
    finally:
        store.close()
    return found


@pytest.fixture
def before(site: Site) -> dict[str, Any]:
    found = state(site)
    assert len(found["events"]) == 2 and len(found["quarantine"]) == 1
    assert found["dead_letters"] == [(site.letter, "open", 0)]
    assert found["audit"] and found["decisions"] == [(2,)]
    return found


def cli(site: Site, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(site.config)], input=stdin,
                              catch_exceptions=False)


def test_events_show_of_an_unknown_uuid(site: Site, before: dict[str, Any]) -> None:
    result = cli(site, "events", "show", "no-such-uuid")
    assert result.exit_code == 1
    assert (result.stdout, result.stderr) == ("", "Error: no event with uuid no-such-uuid\n")
    assert state(site) == before


def test_a_listing_limit_out_of_range(site: Site, before: dict[str, Any]) -> None:
    for command in (("events", "list"), ("events", "quarantine"), ("deliveries", "list")):
        result = cli(site, *command, "--limit", "0")
        assert result.exit_code == 2, command
        assert ("Invalid value for '--limit': 0 is not in the range 1<=x<=10000."
                in result.stderr), command
        assert result.stdout == ""
    assert state(site) == before


def test_rules_explain_of_an_unknown_uuid(site: Site, before: dict[str, Any]) -> None:
    result = cli(site, "rules", "explain", "no-such-uuid")
    assert result.exit_code == 1
    assert result.stderr == "Error: event no-such-uuid is not stored\n"
    assert state(site) == before


@pytest.mark.parametrize("command", [("dlq", "retry", "999999"),
                                     ("dlq", "discard", "999999", "--yes")])
def test_an_unknown_dead_letter(site: Site, before: dict[str, Any],
                                command: tuple[str, ...]) -> None:
    result = cli(site, *command, "--by", "ops")
    assert result.exit_code == 1
    assert result.stderr == "Error: dead letter #999999 is not open\n"
    assert state(site) == before


def test_a_discard_that_is_not_confirmed_changes_nothing(site: Site,
                                                         before: dict[str, Any]) -> None:
    result = cli(site, "dlq", "discard", str(site.letter), "--by", "ops", stdin="n\n")
    assert result.exit_code == 1
    assert "Discard this dead letter? The action will not be retried." in result.stdout
    assert result.stderr == "Aborted!\n"
    assert state(site) == before


def test_a_discarded_letter_cannot_be_discarded_or_retried_again(
    site: Site, before: dict[str, Any]
) -> None:
    done = cli(site, "dlq", "discard", str(site.letter), "--by", "ops", "--yes")
    assert done.exit_code == 0, done.output
    after_discard = state(site)
    assert after_discard["dead_letters"] == [(site.letter, "discarded", 0)]
    assert after_discard["audit"][-1][1:] == (
        "dead_letter.discard", f"dead letter #{site.letter} discarded", "ops")
    for command in (("dlq", "discard", str(site.letter), "--yes"),
                    ("dlq", "retry", str(site.letter))):
        result = cli(site, *command, "--by", "ops")
        assert result.exit_code == 1
        assert result.stderr == f"Error: dead letter #{site.letter} is not open\n"
    assert state(site) == after_discard


def test_a_retry_the_workflow_engine_cannot_take_leaves_the_letter_open(
    site: Site, before: dict[str, Any]
) -> None:
    """No worker ever started, so the workflow engine's database has no tables yet: the
    retry is refused with the reason, and the letter can be retried later."""
    result = cli(site, "dlq", "retry", str(site.letter), "--by", "ops")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: the retry of dead letter #{site.letter} could not be handed to the workflow "
        "engine (OperationalError); the dead letter is open again. Is the workflow database "
        "reachable, and has a worker started once?\n")
    # Nothing changed: the letter is open as before, and the retry that never reached the
    # workflow engine is not counted.
    after = state(site)
    assert after["dead_letters"] == [(site.letter, "open", 0)]
    assert after == before


@pytest.mark.parametrize(("args", "code", "message"), [
    ((), 2, "Error: give --uuid, or a time range with --since/--until"),
    (("--since", "yesterday"), 2,
     "Error: Invalid value for --since: 'yesterday' is not an ISO 8601 time with a zone"),
    (("--until", "2026-03-01T10:00:00"), 2,
     "Error: Invalid value for --until: '2026-03-01T10:00:00' is not an ISO 8601 time with a "
     "zone"),
    (("--uuid", "no-such-uuid"), 1, "Error: not stored: no-such-uuid"),
])
def test_replay_refuses_what_it_cannot_replay(
    site: Site, before: dict[str, Any], args: tuple[str, ...], code: int, message: str
) -> None:
    result = cli(site, "replay", *args)
    assert result.exit_code == code
    assert message in result.stderr
    assert result.stdout == ""
    assert state(site) == before


def test_a_replay_the_workflow_engine_cannot_take_is_reported(
    site: Site, before: dict[str, Any]
) -> None:
    result = cli(site, "replay", "--uuid", site.uuids[0])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: the replay of {site.uuids[0]} could not be handed to the workflow engine "
        "(OperationalError); 0 of 1 replay(s) were enqueued. Is the workflow database "
        "reachable, and has a worker started once?\n")
    assert state(site) == before


def test_send_test_to_an_unknown_org(site: Site, before: dict[str, Any]) -> None:
    result = cli(site, "send-test", "http://127.0.0.1:9/hooks/okta", "--org", "nope")
    assert result.exit_code == 1
    assert result.stderr == "Error: no org 'nope' (configured: default)\n"
    assert state(site) == before


def test_facts_of_a_broken_export(tmp_path: Path) -> None:
    broken = tmp_path / "export.json"
    broken.write_text('[{"uuid": "a"}, {"uuid": ', encoding="utf-8")
    result = CliRunner().invoke(main, ["facts", str(broken)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: export is not valid JSON: ")
    # NDJSON: a bad line is reported and the others are still translated.
    lines = tmp_path / "export.ndjson"
    event = enrollment(4)
    lines.write_text(f"{orjson.dumps(event).decode()}\n{{nope\n5\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["facts", str(lines)])
    assert result.exit_code == 0
    assert result.stderr.startswith("line 2: not valid JSON: ")
    first, second = (orjson.loads(line) for line in result.stdout.splitlines())
    assert first["uuid"] == event["uuid"] and first["user"]["login"] == "user4@example.com"
    assert second == {"error": "not an event object"}
    missing = CliRunner().invoke(main, ["facts", str(tmp_path / "absent.json")])
    assert missing.exit_code == 2
    assert (f"Error: Invalid value for 'EXPORT': '{tmp_path / 'absent.json'}': No such file "
            "or directory") in missing.stderr


def _write_bad_rules(site: Site) -> str:
    rules = site.settings.pipeline.rules_file
    assert rules is not None
    text = "version: 1\nmatch: all\nrules:\n  - id: r\n    actions: [{id: a, kind: jria}]\n"
    rules.write_text(text, encoding="utf-8")
    return text


def test_config_check_names_a_broken_rules_file(site: Site, before: dict[str, Any]) -> None:
    text = _write_bad_rules(site)
    result = cli(site, "config", "check")
    assert result.exit_code == 1
    rules = site.settings.pipeline.rules_file
    assert (f"Error: {rules}: rule 'r': action 'a': kind: 'jria' is not a known action kind "
            "(did you mean 'jira'?)") in result.stderr
    assert "configuration OK" not in result.stdout
    assert rules is not None and rules.read_text(encoding="utf-8") == text
    assert state(site) == before


def test_config_check_names_a_broken_directory_file(site: Site,
                                                    before: dict[str, Any]) -> None:
    directory = site.settings.pipeline.directory_file
    assert directory is not None
    directory.write_text("users:\n  - id: 00uA\n    colour: blue\n", encoding="utf-8")
    result = cli(site, "config", "check")
    assert result.exit_code == 1
    assert (f"Error: {directory}: line 2: users[0]: colour: unknown key (allowed: id, login, "
            "profile, groups)") in result.stderr
    assert "configuration OK" not in result.stdout
    assert state(site) == before


def _command(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own (it configures the process's logging)."""
    return subprocess.run(
        [sys.executable, "-m", "factorflow.cli", *args, "--config", str(site.config)],
        env={**site.env, "FACTORFLOW_LOG__FORMAT": "text"}, capture_output=True, text=True,
        timeout=180, check=False,
    )


@pytest.mark.slow
def test_a_worker_with_a_broken_rules_file_does_not_start(site: Site,
                                                          before: dict[str, Any]) -> None:
    _write_bad_rules(site)
    finished = _command(site, "worker")
    assert finished.returncode == 1, finished.stderr
    assert (f"Error: {site.settings.pipeline.rules_file}: rule 'r': action 'a': kind: 'jria' "
            "is not a known action kind") in finished.stderr
    assert "running" not in finished.stderr
    assert state(site) == before


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_serve_refuses_a_metrics_port_that_is_its_own_port(site: Site,
                                                           before: dict[str, Any]) -> None:
    port = _free_port()
    with site.config.open("a", encoding="utf-8") as config:
        config.write(f"[metrics]\nport = {port}\n")
    finished = _command(site, "serve", "--no-worker", "--port", str(port))
    assert finished.returncode == 1, finished.stderr
    assert (f"Error: metrics.port {port} is the port the server listens on (--port): give "
            "the metrics a port of their own") in finished.stderr
    assert state(site) == before


@pytest.mark.parametrize(("args", "code", "message"), [
    (("--org", "nope"), 1, "Error: no org 'nope' (configured: default)"),
    (("--since", "last tuesday"), 2, "Invalid value for --since: 'last tuesday': give an ISO "
                                     "8601 time (2026-03-01T00:00:00Z) or 30m / 6h / 2d"),
    (("--since", "200d"), 2, "Invalid value for --since: Okta keeps the System Log for 90 "
                             "days"),
    (("--max-pages", "0"), 2, "Invalid value for '--max-pages': 0 is not in the range"),
])
def test_reconcile_refuses_bad_arguments_and_reads_nothing(
    site: Site, before: dict[str, Any], args: tuple[str, ...], code: int, message: str
) -> None:
    with site.config.open("a", encoding="utf-8") as config:
        # Nothing listens there: a refused run must not even try.
        config.write(f'[okta]\norg_url = "http://127.0.0.1:{_free_port()}"\n'
                     f'api_token = "{TOKEN}"\n')
    result = cli(site, "reconcile", *args)
    assert result.exit_code == code
    assert message in result.stderr
    assert result.stdout == ""
    store = open_store(site.settings.store_url(), migrate=False)
    try:
        assert store.read("SELECT COUNT(*) FROM reconciler_state") == [(0,)]
    finally:
        store.close()
    assert state(site) == before


# -- the System Log answering something else ---------------------------------------------------


class _ScriptedSystemLog:
    """A local HTTP server that answers ``GET /api/v1/logs`` from a script, one answer per
    request: (content type, body, whether to send a next link)."""

    def __init__(self, answers: list[tuple[str, bytes, bool]]) -> None:
        self.answers = answers
        self.received: list[tuple[str, str | None]] = []  # (path, authorization)
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                script.received.append((self.path, self.headers.get("authorization")))
                kind, body, more = script.answers.pop(0)
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.send_header("link", f'<{script.url}{self.path}>; rel="self"')
                if more:
                    self.send_header("link", f'<{script.url}/api/v1/logs?after=page-'
                                             f'{len(script.received) + 1}>; rel="next"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _ScriptedSystemLog:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_system_log_answer_that_is_no_page_of_events_stops_the_run_and_keeps_the_store(
    tmp_path: Path,
) -> None:
    published = datetime.now(UTC) - timedelta(minutes=5)
    stamp = published.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events = [okta_event(f"from-log-{n}", published=stamp) for n in range(2)]
    answers = [
        ("application/json", orjson.dumps(events), True),
        ("text/html", b"<html><body>Down for maintenance</body></html>", False),
        ("application/json", b'{"errorCode": "E0000001"}', False),
    ]
    store = open_store(f"sqlite:///{tmp_path / 'factorflow.db'}")
    WATCHED_SECRETS.add(TOKEN)
    try:
        with _ScriptedSystemLog(answers) as okta, \
                OktaClient(OktaApiSettings(org_url=okta.url, api_token=TOKEN)) as client:
            ledger = SystemLogLedger(store)
            reconciler = Reconciler("default", client, ledger, event_types=MFA_TYPES)

            first = reconciler.run()
            assert first.error == ("OktaApiError: Okta answered 200 invalid_response: Okta's "
                                   "answer is not JSON")
            assert (first.pages, first.recovered) == (1, 2)  # the good page is kept
            kept = snapshot(store)
            assert kept["counts"] == {"events": 2, "deliveries": 0, "quarantined": 0}
            held = ledger.state("default")
            assert held is not None and held.last_error == first.error
            assert held.next_url == f"{okta.url}/api/v1/logs?after=page-2"

            second = reconciler.run()  # resumes where the first stopped
            assert second.error == ("OktaApiError: Okta answered 200 invalid_response: the "
                                    "System Log did not answer with a list")
            assert (second.pages, second.read) == (0, 0)
            assert snapshot(store) == kept
            again = ledger.state("default")
            assert again is not None and again.last_error == second.error
            assert (again.next_url, again.cursor_published, again.pages_read) == (
                held.next_url, held.cursor_published, held.pages_read)
            assert [path for path, _ in okta.received] == [
                okta.received[0][0], "/api/v1/logs?after=page-2", "/api/v1/logs?after=page-2"]
            assert {auth for _, auth in okta.received} == {f"SSWS {TOKEN}"}
            assert answers == []
    finally:
        store.close()


# -- the Okta simulator ------------------------------------------------------------------------


def test_the_simulators_membership_endpoint_refuses_like_okta_and_changes_nothing() -> None:
    changes = ["group.user_membership.add", "group.user_membership.remove"]
    with simulated_okta(users=10, seed=5) as okta:
        user = next(u for u in okta.active_users()
                    if okta.org.group_named("Contractors").id not in u.group_ids)
        group = okta.org.group_named("Contractors")
        groups_before = list(user.group_ids)
        log_before = len(okta.org.events())
        path = f"/api/v1/groups/{group.id}/users/{user.id}"
        token = {"Authorization": f"SSWS {TOKEN}"}
        cases = [
            ("PUT", path, {}, 401, "E0000005", "Invalid session"),
            ("PUT", path, {"Authorization": "SSWS not-the-token"}, 401, "E0000011",
             "Invalid token provided"),
            ("PUT", f"/api/v1/groups/{group.id}/users/00uNoSuchUser000001", token, 404,
             "E0000007", "Not found: Resource not found: 00uNoSuchUser000001 (User)"),
            ("DELETE", f"/api/v1/groups/00gNoSuchGroup00001/users/{user.id}", token, 404,
             "E0000007", "Not found: Resource not found: 00gNoSuchGroup00001 (UserGroup)"),
        ]
        with httpx.Client(base_url=okta.base_url) as http:
            for method, url, headers, status, code, summary in cases:
                answer = http.request(method, url, headers=headers)
                assert answer.status_code == status, (method, url)
                body = answer.json()
                assert (body["errorCode"], body["errorSummary"]) == (code, summary)
        assert user.group_ids == groups_before
        assert okta.org.events(changes) == []
        assert len(okta.org.events()) == log_before


@pytest.mark.parametrize(("args", "message"), [
    (("serve", "--client-id", "0oaService0001"),
     "Error: --client-id and --public-key go together"),
    (("serve", "--hook-url", "http://127.0.0.1:9/hooks/okta"),
     "Error: --hook-url needs --hook-secret or --hook-secret-file"),
    (("serve", "--users", "3", "--rate-limit", "logs=20"),
     "Error: Invalid value for --rate-limit: 'logs=20': expected BUCKET=N, e.g. "
     "/api/v1/logs=20"),
    (("serve", "--users", "3", "--rate-limit", "/api/v1/logs=many"),
     "Error: Invalid value for --rate-limit: '/api/v1/logs=many': expected BUCKET=N"),
    (("send", "http://127.0.0.1:9/hooks/okta"), "Error: give --secret or --secret-file"),
    (("send", "http://127.0.0.1:9/hooks/okta", "--secret", "x", "--secret-file", "SECRET"),
     "Error: give the secret or a secret file, not both"),
    (("serve", "--users", "2"), "Error: Invalid value for '--users': 2 is not in the range "
                                "3<=x<=100000."),
])
def test_simulator_commands_refuse_options_that_cannot_work(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n", encoding="utf-8")
    argv = [str(secret_file) if arg == "SECRET" else arg for arg in args]
    result = CliRunner().invoke(simulate, argv, catch_exceptions=False)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "simulated Okta org on" not in result.stderr  # refused before serving anything


def test_simulate_serve_refuses_a_key_it_cannot_use(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
                   encoding="utf-8")
    result = CliRunner().invoke(simulate, ["serve", "--client-id", "0oaService0001",
                                           "--public-key", str(key)], catch_exceptions=False)
    assert result.exit_code == 2
    assert f"Error: Invalid value for --public-key: {key}: not a usable key (" in result.stderr
    assert "simulated Okta org on" not in result.stderr
