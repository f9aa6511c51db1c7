"""``factorflow reconcile`` (and ``--report``) from a config file, against the Okta simulator on
the wall clock, as an operator runs it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from factorflow.cli_reconcile import reconcile
from factorflow.store.factory import open_store
from tests.okta.support import MFA_TYPES, TOKEN, SimulatedOkta, simulated_okta
from tests.ui.seed import enrollment, record


@pytest.fixture
def okta() -> Iterator[SimulatedOkta]:
    with simulated_okta(users=20, seed=31, enrollments=25, start=time.time()) as simulated:
        yield simulated


def write_config(tmp_path: Path, okta_url: str | None, **okta_keys: str) -> Path:
    config = tmp_path / "factorflow.toml"
    text = f'data_dir = "{tmp_path / "data"}"\n[hook]\nsecret = "Bearer cli-test-secret"\n'
    if okta_url is not None:
        text += f'[okta]\norg_url = "{okta_url}"\napi_token = "{TOKEN}"\n'
        text += "".join(f"{key} = {value}\n" for key, value in okta_keys.items())
    config.write_text(text, encoding="utf-8")
    return config


def stored(tmp_path: Path) -> dict[str, str]:
    store = open_store(f"sqlite:///{tmp_path / 'data' / 'factorflow.db'}")
    try:
        return dict(store.read("SELECT uuid, provenance FROM events"))
    finally:
        store.close()


def test_a_run_reads_from_the_lookback_then_from_the_cursor(okta: SimulatedOkta,
                                                            tmp_path: Path) -> None:
    config = write_config(tmp_path, okta.base_url, reconcile_page_size="10")
    expected = {e["uuid"] for e in okta.org.events(MFA_TYPES)}
    runner = CliRunner()
    first = runner.invoke(reconcile, ["--config", str(config)])
    assert first.exit_code == 0, first.output
    pages = -(-len(expected) // 10) + 1
    assert first.output.startswith(f"org default: {pages} page(s) from lookback ")
    assert first.output.rstrip().endswith(
        f": read {len(expected)}, recovered {len(expected)}, confirmed 0, already known 0, "
        "delivery failures 0")
    assert stored(tmp_path) == dict.fromkeys(expected, "log")
    again = runner.invoke(reconcile, ["--config", str(config), "--json"])
    assert again.exit_code == 0, again.output
    line = orjson.loads(again.output)
    assert (line["org"], line["started_from"], line["pages"], line["read"], line["error"]) == (
        "default", "cursor", 1, 0, None)
    report = runner.invoke(reconcile, ["--config", str(config), "--report"])
    assert report.exit_code == 0, report.output
    lines = report.output.splitlines()
    assert lines[0] == "org default (last 24 h)"
    assert lines[1] == (f"  events: {len(expected)}  by hook: 0 (0.0%)  recovered from the "
                        f"System Log: {len(expected)} (never by hook: {len(expected)})  "
                        f"confirmed by the System Log: {len(expected)}")
    assert lines[2] == "  hook delay: p50 -  p90 -  p99 -  max - (0 events)"
    assert lines[3] == "  failed hook deliveries (event_hook.delivery): 0"
    assert lines[4].startswith("  reconciler: newest event read 20")
    as_json = orjson.loads(runner.invoke(
        reconcile, ["--config", str(config), "--report", "--json", "--hours", "1"]).output)
    assert (as_json["hours"], as_json["events"], as_json["recovered"]) == (
        1.0, len(expected), len(expected))


def test_since_and_reset_read_again_without_storing_twice(okta: SimulatedOkta,
                                                          tmp_path: Path) -> None:
    config = write_config(tmp_path, okta.base_url)
    expected = {e["uuid"] for e in okta.org.events(MFA_TYPES)}
    runner = CliRunner()
    assert runner.invoke(reconcile, ["--config", str(config)]).exit_code == 0
    for args in (["--since", "2h"], ["--reset"]):
        result = runner.invoke(reconcile, ["--config", str(config), "--json", *args])
        assert result.exit_code == 0, result.output
        line = orjson.loads(result.output)
        assert (line["recovered"], line["known"]) == (0, len(expected))
    assert len(stored(tmp_path)) == len(expected)


def test_an_okta_error_exits_non_zero_and_keeps_what_was_read(okta: SimulatedOkta,
                                                              tmp_path: Path) -> None:
    config = write_config(tmp_path, okta.base_url, reconcile_page_size="5")
    runner = CliRunner()
    assert runner.invoke(reconcile, ["--config", str(config), "--max-pages", "1"]).exit_code == 0
    assert len(stored(tmp_path)) == 5
    okta.sim.inject_failures("/api/v1/logs", [503])
    failed = runner.invoke(reconcile, ["--config", str(config)])
    assert failed.exit_code == 1
    assert failed.output.rstrip().endswith(
        "stopped: OktaUnavailable: Okta GET /api/v1/logs answered 503")
    assert len(stored(tmp_path)) == 5
    report = runner.invoke(reconcile, ["--config", str(config), "--report"])
    assert "last error: OktaUnavailable: Okta GET /api/v1/logs answered 503" in report.output
    resumed = runner.invoke(reconcile, ["--config", str(config)])
    assert resumed.exit_code == 0 and " from cursor: " in resumed.output
    assert len(stored(tmp_path)) == len(okta.org.events(MFA_TYPES))


@pytest.mark.parametrize(("args", "message"), [
    (["--org", "nope"], "Error: no org 'nope' (configured: default)"),
    (["--since", "last tuesday"], "Invalid value for --since: 'last tuesday': give an ISO 8601 "
                                  "time (2026-03-01T00:00:00Z) or 30m / 6h / 2d"),
    (["--since", "200d"], "Invalid value for --since: Okta keeps the System Log for 90 days"),
])
def test_bad_arguments_are_refused_and_nothing_is_read(
    okta: SimulatedOkta, tmp_path: Path, args: list[str], message: str,
) -> None:
    config = write_config(tmp_path, okta.base_url)
    result = CliRunner().invoke(reconcile, ["--config", str(config), *args])
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert okta.sim.requests == []


def test_without_okta_settings_there_is_nothing_to_read(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    result = CliRunner().invoke(reconcile, ["--config", str(config)])
    assert result.exit_code == 1
    assert result.output == ("Error: no org has Okta API settings ([okta] or "
                             "[orgs.<name>.okta]); see docs/okta.md\n")
    report = CliRunner().invoke(reconcile, ["--config", str(config), "--report"])
    assert report.exit_code == 0
    assert report.output.splitlines()[1].startswith("  events: 0  by hook: 0 (-)")


def test_the_report_says_when_the_clock_is_behind_oktas(tmp_path: Path) -> None:
    """Events stored before Okta published them (the host's clock behind Okta's): the report
    says by how much at least; a clock within a second of Okta's says nothing."""
    config = write_config(tmp_path, None)
    store = open_store(f"sqlite:///{tmp_path / 'data' / 'factorflow.db'}")
    received = datetime.now(UTC) - timedelta(minutes=30)
    try:
        record(store, [enrollment(1, published=received + timedelta(seconds=0.4))], received)
        quiet = CliRunner().invoke(reconcile, ["--config", str(config), "--report"])
        assert quiet.exit_code == 0 and "clock" not in quiet.output
        record(store, [enrollment(2, published=received + timedelta(seconds=40)),
                       enrollment(3, published=received + timedelta(seconds=2))], received)
    finally:
        store.close()
    report = CliRunner().invoke(reconcile, ["--config", str(config), "--report"])
    assert report.exit_code == 0, report.output
    (line,) = [text for text in report.output.splitlines() if "clock" in text]
    shown = re.fullmatch(
        r"  clock: behind Okta's by at least (\d+\.\d) s \(2 event\(s\) stored a second or "
        r"more before Okta published them\); delays and audit times are off by as much: keep "
        r"the receiving host's clock in step \(NTP\)", line)
    assert shown is not None, line
    # the earliest delay, -40 s, is alone in its bucket: exact (else within a bucket, never over)
    assert shown.group(1) == "40.0"
    as_json = orjson.loads(CliRunner().invoke(
        reconcile, ["--config", str(config), "--report", "--json"]).output)
    # (published is kept to the millisecond, the receipt time to the microsecond)
    assert (as_json["early_events"], as_json["clock_behind_seconds"]) == (
        2, pytest.approx(40.0, abs=0.002))
