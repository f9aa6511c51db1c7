"""The command line against a real store, and `send-test` against a real `factorflow serve`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result
from starlette.testclient import TestClient
from tests.conftest import SECRET

from factorflow.bootstrap import build_app
from factorflow.cli import main
from factorflow.settings import load_settings
from factorflow.store.factory import open_store

SAMPLE = resources.files("factorflow").joinpath("examples/delivery-mfa-activate.json")
SAMPLE_UUID = "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"
SAMPLE_DELIVERY = "8f3c3b0a-1e7d-4c2b-9a55-2f1f6d7e0a11"
HOOK = "/hooks/okta"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FACTORFLOW_")}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A data dir of the test's own and a known secret, for the CLI and the app alike."""
    for name in list(os.environ):
        if name.startswith("FACTORFLOW_"):
            monkeypatch.delenv(name)
    values = {"FACTORFLOW_DATA_DIR": str(tmp_path / "data"), "FACTORFLOW_HOOK__SECRET": SECRET}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def post(bodies: list[bytes]) -> None:
    """Deliver through the real app, configured from the same environment as the CLI."""
    with TestClient(build_app(load_settings(None))) as client:
        for body in bodies:
            response = client.post(HOOK, content=body, headers={
                "Authorization": SECRET, "Content-Type": "application/json",
            })
            assert response.status_code == 204


def siem_delivery() -> bytes:
    return orjson.dumps({
        "eventType": "com.okta.event_hook", "eventId": "siem-delivery-0001",
        "source": "https://example.okta.com/api/v1/eventHooks/whoExampleHook0000001",
        "data": {"events": [{"uuid": "AbC-123-XyZ", "eventType": "user.session.start",
                             "published": "2022-06-22 18:18:29.015"}]},
    })


# -- config check ------------------------------------------------------------------------------


def test_config_check_passes_with_defaults_and_says_a_secret_will_be_generated(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FACTORFLOW_HOOK__SECRET")
    result = run("config", "check")
    assert result.exit_code == 0, result.output
    assert "org default: hook /hooks/okta, header 'Authorization'" in result.output
    assert "secret will be generated on first start" in result.output
    assert "store: sqlite" in result.output
    assert "configuration OK" in result.output
    assert not (tmp_path / "data" / "hook-secret").exists()


def test_config_check_passes_with_a_config_file(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "factorflow.toml"
    config.write_text('[hook]\nauth_header = "X-Okta-Secret"\nprevious_secret = "older"\n',
                      encoding="utf-8")
    result = run("config", "check", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "header 'X-Okta-Secret', 2 accepted secret(s) (configured)" in result.output
    assert "configuration OK" in result.output
    assert SECRET not in result.output and "older" not in result.output


def test_config_check_finds_the_file_through_factorflow_config(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "factorflow.toml"
    config.write_text("[server]\nport = 0\n", encoding="utf-8")
    result = run("config", "check", env={"FACTORFLOW_CONFIG": str(config)})
    assert result.exit_code != 0
    assert "server.port" in result.output and str(config) in result.output


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[server]\nport = 0\n", "server.port: Input should be greater than or equal to 1"),
        ('[hook]\npath = "hooks"\n', "hook.path: Value error, must be an absolute URL path"),
        ('[hook]\nscret = "x"\n', "hook.scret: Extra inputs are not permitted"),
        ("[hook\n", "not valid TOML"),
    ],
)
def test_config_check_fails_naming_the_key(
    env: dict[str, str], tmp_path: Path, toml: str, expected: str
) -> None:
    config = tmp_path / "factorflow.toml"
    config.write_text(toml, encoding="utf-8")
    result = run("config", "check", "--config", str(config))
    assert result.exit_code == 1
    assert "Error: " in result.output
    assert expected in result.output
    assert str(config) in result.output
    assert "configuration OK" not in result.output


def test_config_check_names_a_bad_environment_variable(env: dict[str, str]) -> None:
    result = run("config", "check", env={"FACTORFLOW_HOOK__AUTH_HEADER": "Okta Secret"})
    assert result.exit_code == 1
    assert "hook.auth_header: Value error, must be a valid HTTP header name" in result.output
    assert "environment variable FACTORFLOW_HOOK__AUTH_HEADER" in result.output


def test_config_check_refuses_a_misspelt_variable_and_suggests_the_setting(
    env: dict[str, str]
) -> None:
    result = run("config", "check", env={"FACTORFLOW_HOOK_SECRET": "typo-secret-value-9c1e"})
    assert result.exit_code == 1
    assert ("Error: unknown environment variable(s): FACTORFLOW_HOOK_SECRET (did you mean "
            "FACTORFLOW_HOOK__SECRET?) (settings are FACTORFLOW_<SECTION>__<KEY>, with two "
            "underscores)") in result.output
    assert "typo-secret-value-9c1e" not in result.output
    assert "configuration OK" not in result.output


def test_config_check_names_the_environment_as_the_source_of_a_section_problem(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "factorflow.toml"
    config.write_text("[server]\nport = 9000\n", encoding="utf-8")
    result = run("config", "check", "--config", str(config),
                 env={"FACTORFLOW_WORKFLOWS__HEARTBEAT_SECONDS": "100"})
    assert result.exit_code == 1
    assert ("  workflows: Value error, dead_after_seconds must be at least twice "
            "heartbeat_seconds, or a worker that misses one heartbeat is taken for dead "
            "(from environment variable FACTORFLOW_WORKFLOWS__HEARTBEAT_SECONDS)\n"
            ) in result.output
    assert "defaults" not in result.output and str(config) not in result.output


def test_config_check_refuses_secret_and_secret_file_together(
    env: dict[str, str], tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("other\n", encoding="utf-8")
    result = run("config", "check", env={"FACTORFLOW_HOOK__SECRET_FILE": str(secret_file)})
    assert result.exit_code == 1
    assert "hook.secret and hook.secret_file are both set; set one of them" in result.output


def test_config_check_refuses_an_unknown_store_url(env: dict[str, str]) -> None:
    result = run("config", "check", env={"FACTORFLOW_STORE__URL": "mysql://db/factorflow"})
    assert result.exit_code == 1
    assert "store.url must start with sqlite:/// or postgresql://" in result.output
    assert "'mysql'" in result.output


def test_config_check_reports_a_missing_config_file(env: dict[str, str], tmp_path: Path) -> None:
    result = run("config", "check", "--config", str(tmp_path / "absent.toml"))
    assert result.exit_code == 1
    assert f"config file {tmp_path / 'absent.toml'} does not exist" in result.output


# -- looking at the store ----------------------------------------------------------------------


def test_listings_of_an_empty_store(env: dict[str, str]) -> None:
    for args, expected in [
        (("events", "list"), "no events stored yet"),
        (("events", "quarantine"), "quarantine is empty"),
        (("deliveries", "list"), "no deliveries yet"),
    ]:
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert result.output.strip() == expected


def test_events_list_shows_type_user_and_factor(env: dict[str, str]) -> None:
    post([SAMPLE.read_bytes()])
    result = run("events", "list")
    assert result.exit_code == 0, result.output
    (line,) = result.output.strip().splitlines()
    assert line.split() == [
        "2026-03-15T10:22:14.000Z", "user.mfa.factor.activate", "pat.lee@example.com",
        "Okta", "Verify", "(PUSH)",
    ]

    as_json = run("events", "list", "--json")
    assert as_json.exit_code == 0
    (row,) = [orjson.loads(line) for line in as_json.output.strip().splitlines()]
    assert row["uuid"] == SAMPLE_UUID
    assert row["event_type"] == "user.mfa.factor.activate"
    assert row["user"] == "pat.lee@example.com"
    assert row["factor"] == "Okta Verify (PUSH)"
    assert row["org"] == "default"


def test_events_list_is_newest_first_and_limited(env: dict[str, str]) -> None:
    sample = orjson.loads(SAMPLE.read_bytes())
    bodies = []
    for number in range(3):
        document = {**sample, "eventId": f"delivery-{number}"}
        event = {**sample["data"]["events"][0], "uuid": f"uuid-{number}"}
        document["data"] = {"events": [event]}
        bodies.append(orjson.dumps(document))
    post(bodies)
    result = run("events", "list", "--json", "--limit", "2")
    assert [orjson.loads(line)["uuid"] for line in result.output.strip().splitlines()] == [
        "uuid-2", "uuid-1"
    ]
    assert run("events", "list", "--limit", "0").exit_code == 2


def test_events_quarantine_shows_reason_and_raw(env: dict[str, str]) -> None:
    post([siem_delivery()])
    result = run("events", "quarantine")
    assert result.exit_code == 0, result.output
    assert "bad_published" in result.output
    assert "uuid=AbC-123-XyZ" in result.output
    assert "delivery=siem-delivery-0001" in result.output
    assert "published '2022-06-22 18:18:29.015' is not an ISO 8601 timestamp" in result.output
    assert '"published":"2022-06-22 18:18:29.015"' not in result.output

    with_raw = run("events", "quarantine", "--raw")
    assert '{"uuid":"AbC-123-XyZ","eventType":"user.session.start",' in with_raw.output


def test_events_show_prints_one_event_and_where_it_came_from(env: dict[str, str]) -> None:
    post([SAMPLE.read_bytes()])
    result = run("events", "show", SAMPLE_UUID)
    assert result.exit_code == 0, result.output
    shown = orjson.loads(result.output)
    assert shown["uuid"] == SAMPLE_UUID
    assert shown["event_type"] == "user.mfa.factor.activate"
    assert shown["delivery_id"] == SAMPLE_DELIVERY
    assert shown["hook_id"] == "whoExampleHook0000001"
    assert shown["provenance"] == "hook"
    assert shown["raw"] == orjson.loads(SAMPLE.read_bytes())["data"]["events"][0]


def test_events_show_of_an_unknown_uuid_is_an_error(env: dict[str, str]) -> None:
    post([SAMPLE.read_bytes()])
    result = run("events", "show", "no-such-uuid")
    assert result.exit_code == 1
    assert "Error: no event with uuid no-such-uuid" in result.output


def test_deliveries_list_shows_the_ledger(env: dict[str, str]) -> None:
    post([SAMPLE.read_bytes(), SAMPLE.read_bytes(), siem_delivery()])
    result = run("deliveries", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3
    assert "siem-delivery-0001" in lines[0]
    assert "total=1 new=0 duplicate=0 quarantined=1" in lines[0]
    assert SAMPLE_DELIVERY in lines[1]
    assert "total=1 new=0 duplicate=1 quarantined=0" in lines[1]
    assert SAMPLE_DELIVERY in lines[2]
    assert "total=1 new=1 duplicate=0 quarantined=0" in lines[2]


def test_a_broken_configuration_stops_the_listings(env: dict[str, str]) -> None:
    result = run("events", "list", env={"FACTORFLOW_SERVER__PORT": "0"})
    assert result.exit_code == 1
    assert "server.port" in result.output


# -- send-test against a real server -----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]
    data_dir: Path
    log: Path


def wait_until_healthy(server: Server, limit_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"factorflow serve exited with {server.process.returncode}:\n"
                        f"{server.log.read_text(errors='replace')}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"factorflow serve did not become healthy:\n{server.log.read_text()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """`factorflow serve` in a process of its own, without a configured secret (so it
    generates one in its data dir, as on a first start)."""
    data_dir = tmp_path / "served"
    port = free_port()
    env = {**clean_env(), "FACTORFLOW_DATA_DIR": str(data_dir), "FACTORFLOW_LOG__FORMAT": "text"}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "factorflow.cli", "serve", "--port", str(port)],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )
    running = Server(process, f"http://127.0.0.1:{port}", env, data_dir, log)
    try:
        wait_until_healthy(running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def send_test(server: Server, *extra: str, url: str | None = None) -> Result:
    return CliRunner().invoke(
        main, ["send-test", url or server.url + HOOK, *extra], env=server.env,
        catch_exceptions=False,
    )


def _reported(output: str) -> dict[str, Any]:
    match = re.search(
        r"delivery: 204 \(new=(\d+) duplicate=(\d+) quarantined=(\d+)\) "
        r"for user\.mfa\.factor\.activate (\S+)", output,
    )
    assert match is not None, output
    new, duplicate, quarantined, uuid = match.groups()
    return {"new": int(new), "duplicate": int(duplicate), "quarantined": int(quarantined),
            "uuid": uuid}


@pytest.mark.slow
def test_send_test_verifies_and_delivers_to_a_running_server(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("FACTORFLOW_"):
            monkeypatch.delenv(name)
    secret_file = server.data_dir / "hook-secret"
    assert secret_file.exists()
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"

    first = send_test(server)
    assert first.exit_code == 0, first.output
    assert f"verification: OK ({server.url}{HOOK} echoed the challenge)" in first.output
    fresh = _reported(first.output)
    assert (fresh["new"], fresh["duplicate"], fresh["quarantined"]) == (1, 0, 0)
    assert fresh["uuid"] != SAMPLE_UUID  # a fresh id each run

    kept = send_test(server, "--keep-ids")
    assert kept.exit_code == 0, kept.output
    assert "verification: OK" in kept.output
    assert _reported(kept.output) == {"new": 1, "duplicate": 0, "quarantined": 0,
                                      "uuid": SAMPLE_UUID}

    again = send_test(server, "--keep-ids")
    assert again.exit_code == 0, again.output
    assert _reported(again.output) == {"new": 0, "duplicate": 1, "quarantined": 0,
                                       "uuid": SAMPLE_UUID}

    store = open_store(f"sqlite:///{server.data_dir / 'factorflow.db'}", migrate=False)
    try:
        assert store.counts() == {"events": 2, "deliveries": 3, "quarantined": 0}
        fresh_event = store.get_event(fresh["uuid"])
        assert fresh_event is not None
        assert fresh_event.event_type == "user.mfa.factor.activate"
        kept_event = store.get_event(SAMPLE_UUID)
        assert kept_event is not None
        assert orjson.loads(kept_event.raw) == orjson.loads(SAMPLE.read_bytes())[
            "data"]["events"][0]
        assert [row.events_duplicate for row in store.ledger()] == [1, 0, 0]
    finally:
        store.close()

    listed = CliRunner().invoke(main, ["events", "list"], env=server.env)
    assert listed.exit_code == 0
    assert listed.output.count("pat.lee@example.com") == 2
    assert listed.output.count("Okta Verify (PUSH)") == 2

    secret = secret_file.read_text(encoding="utf-8").strip()
    for output in (first.output, kept.output, again.output, listed.output):
        assert secret not in output
    assert secret not in server.log.read_text(errors="replace")


@pytest.mark.slow
def test_send_test_reports_a_server_that_does_not_answer_like_a_receiver(
    server: Server,
) -> None:
    wrong_path = send_test(server, url=server.url + "/hooks/elsewhere")
    assert wrong_path.exit_code == 1
    assert "Error: verification GET answered 404" in wrong_path.output

    wrong_secret = CliRunner().invoke(
        main, ["send-test", server.url + HOOK],
        env={**server.env, "FACTORFLOW_HOOK__SECRET": "not-the-secret"},
    )
    assert wrong_secret.exit_code == 1
    assert "Error: verification GET answered 401" in wrong_secret.output
    assert "unauthorized" in wrong_secret.output

    closed = send_test(server, url=f"http://127.0.0.1:{free_port()}{HOOK}")
    assert closed.exit_code == 1
    assert "Error: verification GET" in closed.output and "failed: ConnectError" in closed.output

    store = open_store(f"sqlite:///{server.data_dir / 'factorflow.db'}", migrate=False)
    try:
        assert store.counts() == {"events": 0, "deliveries": 0, "quarantined": 0}
    finally:
        store.close()


def test_send_test_without_any_secret_says_to_start_the_server_first(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        main, ["send-test", "http://127.0.0.1:9/hooks/okta"],
        env={**{k: None for k in os.environ if k.startswith("FACTORFLOW_")},
             "FACTORFLOW_DATA_DIR": str(tmp_path / "never-served")},
    )
    assert result.exit_code == 1
    assert "no hook secret is configured and none was generated yet" in result.output
    assert "start `factorflow serve` once first" in result.output
    assert not (tmp_path / "never-served" / "hook-secret").exists()
