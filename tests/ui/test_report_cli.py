"""``factorflow report``: the dashboard's figures as a table, CSV and JSON, from a config file
and a store filled by the real pipeline; the same numbers the pages show."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from factorflow.cli_report import report
from factorflow.settings import load_settings
from factorflow.store.factory import open_store
from tests.ui.seed import CAMPAIGN, PILOT_GROUP, RULES, directory_yaml, enrollment, process, record

NOW = datetime.now(UTC)


@pytest.fixture
def config(tmp_path: Path, store_url: str) -> Path:
    """A deployment's config file, and its store filled: five enrollments (one by an admin,
    whose Jira action is dead-lettered), one too old for a 30-day window."""
    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    (tmp_path / "directory.yaml").write_text(directory_yaml(range(0, 4), range(4, 6)),
                                             encoding="utf-8")
    path = tmp_path / "factorflow.toml"
    path.write_text(f"""\
data_dir = {json.dumps(str(tmp_path / "data"))}
[hook]
secret = "Basic cmVwb3J0OnNlY3JldA=="
[store]
url = {json.dumps(store_url)}
[pipeline]
rules_file = {json.dumps(str(tmp_path / "rules.yaml"))}
directory_file = {json.dumps(str(tmp_path / "directory.yaml"))}
[campaigns.{CAMPAIGN}]
population_group = {json.dumps(PILOT_GROUP)}
deadline = 2026-12-31
[campaigns.empty]
population_group = "Nobody"
""", encoding="utf-8")
    settings = load_settings(path)
    store = open_store(settings.store_url())
    events = [
        enrollment(0, published=NOW - timedelta(days=1)),
        enrollment(1, published=NOW - timedelta(hours=1), authenticator="Security Key or "
                   "Biometric", method="WEBAUTHN"),
        enrollment(2, published=NOW - timedelta(hours=1), by_admin=True),
        enrollment(4, published=NOW - timedelta(hours=1), authenticator="Phone", method="SMS"),
        enrollment(5, published=NOW - timedelta(days=45)),
    ]
    for n, event in enumerate(events):
        published = datetime.fromisoformat(event["published"].replace("Z", "+00:00"))
        record(store, [event], published + timedelta(seconds=n + 1))
    process(settings, store, [e["uuid"] for e in events])
    store.close()
    return path


def run(*args: str) -> Any:
    result = CliRunner().invoke(report, list(args), catch_exceptions=False)
    return result


def test_json_report_has_the_dashboards_figures(config: Path) -> None:
    result = run("--config", str(config), "--format", "json")
    assert result.exit_code == 0, result.output
    figures = orjson.loads(result.output)
    assert figures["window"]["days"] == 30 and figures["org"] is None
    overview = figures["overview"]
    assert overview["enrollments"] == 4
    assert sum(overview["per_day"].values()) == 4 and len(overview["per_day"]) == 30
    assert overview["per_day"][NOW.date().isoformat()] + overview["per_day"].get(
        (NOW - timedelta(days=1)).date().isoformat(), 0) >= 3
    assert {k: v for k, v in overview["by_strength"].items() if v} == {
        "phishing_resistant": 1, "device_bound_push": 2, "sms_voice_email": 1}
    assert {k: v for k, v in overview["by_enrolled_by"].items() if v} == {"self": 3, "admin": 1}
    assert overview["top_factors"] == {"okta_verify_push": 2, "webauthn": 1, "sms": 1}
    assert overview["dead_letters_open"] == "1" and overview["waiting_events"] == "5"
    assert [e["user"] for e in overview["recent_admin_enrollments"]] == ["user2@example.com"]
    (delivery,) = figures["delivery"].values()
    # Stored in the window: the four recent events (the old one was received 45 days ago).
    assert (delivery["events"], delivery["by_hook"], delivery["recovered"]) == (4, 4, 0)
    assert delivery["hook_share"] == 1.0
    # Delays of 1, 2, 3 and 4 seconds: nearest-rank p50 = 2 s, p90 = p99 = max = 4 s.
    assert delivery["delay_seconds"] == {"p50": 2.0, "p90": 4.0, "p99": 4.0}
    assert delivery["max_delay_seconds"] == 4.0
    assert delivery["polled_at"] is None and delivery["lag_seconds"] is None
    assert figures["campaigns"] == {
        "empty": {"org": "default", "population_group": "Nobody", "population": 0,
                  "completed": 0, "pending": 0, "percent": None,
                  "completed_outside_population": 0, "deadline": None,
                  "problem": "group 'Nobody' has no members in directory.yaml"},
        CAMPAIGN: {"org": "default", "population_group": PILOT_GROUP, "population": 4,
                   "completed": 3, "pending": 1, "percent": 75.0,
                   "completed_outside_population": 2, "deadline": "2026-12-31",
                   "problem": None},
    }


def test_csv_report_is_one_row_per_figure(config: Path) -> None:
    result = run("--config", str(config), "--format", "csv", "--days", "7",
                 "--section", "overview", "--section", "campaigns")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.output)))
    assert rows[0] == ["section", "name", "key", "value"]
    figures = {(r[0], r[1], r[2]): r[3] for r in rows[1:]}
    assert figures["overview", "enrollments", ""] == "4"
    assert figures["overview", "by_strength", "phishing_resistant"] == "1"
    assert figures["overview", "by_enrolled_by", "admin"] == "1"
    assert figures["campaigns", CAMPAIGN, "percent"] == "75.0"
    assert figures["campaigns", "empty", "percent"] == ""
    assert not any(r[0] == "delivery" for r in rows[1:])
    assert sum(1 for r in rows[1:] if r[1] == "per_day") == 7


def test_table_report_reads_like_the_overview(config: Path) -> None:
    result = run("--config", str(config), "--org", "default")
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith("period: last 30 days (")
    assert ", org default\n" in text
    assert "\nenrollments: 4\n" in text
    assert "  phishing_resistant             1\n" in text
    assert "  open dead letters                    1\n" in text
    assert ("  default                4       4   100.0%       0       0  2.0s/4.0s/4.0s/4.0s\n"
            in text)
    assert f"  {CAMPAIGN:<24}     3 / 4        75.0%       1\n" in text
    assert "(group 'Nobody' has no members in directory.yaml)" in text
    assert "clock behind" not in text


def test_reports_say_when_the_clock_is_behind_oktas(config: Path) -> None:
    """An event stored 50 s before Okta published it: the receiving host's clock is behind
    Okta's by at least that; the table says so under the org's delivery line, JSON and CSV
    carry the figures."""
    settings = load_settings(config)
    store = open_store(settings.store_url())
    received = datetime.now(UTC)
    try:
        record(store, [enrollment(3, published=received + timedelta(seconds=50))], received)
    finally:
        store.close()
    text = run("--config", str(config), "--section", "delivery").output
    assert ("\n                  clock behind Okta's by at least 50.0s (1 event(s) stored a "
            "second or more before Okta published them)") in text
    (delivery,) = orjson.loads(run("--config", str(config), "--format", "json",
                                   "--section", "delivery").output)["delivery"].values()
    assert delivery["early_events"] == 1
    assert delivery["clock_behind_seconds"] == pytest.approx(50.0, abs=0.002)
    rows = list(csv.reader(io.StringIO(run("--config", str(config), "--format", "csv",
                                           "--section", "delivery").output)))
    assert [r[1:] for r in rows if r[2] == "early_events"] == [["default", "early_events", "1"]]


def test_an_unknown_org_is_refused(config: Path) -> None:
    result = CliRunner().invoke(report, ["--config", str(config), "--org", "nope"])
    assert result.exit_code == 1
    assert result.output == "Error: no org 'nope' (configured: default)\n"
    bad_days = CliRunner().invoke(report, ["--config", str(config), "--days", "3"])
    assert bad_days.exit_code == 2
    assert "'3' is not one of '1', '7', '30', '90', '365'" in bad_days.output
