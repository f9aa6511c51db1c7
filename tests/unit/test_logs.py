"""Structured log guarantees: JSON lines with stable event names and fields, and user
identifiers hashed (with a stable key) when the deployment asks for it."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from factorflow.logs import JsonFormatter, TextFormatter, UserHasher
from factorflow.secrets_source import USER_HASH_KEY_FILE, user_hash_key
from factorflow.settings import Settings


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("factorflow.test", logging.INFO, __file__, 1, "pipeline.decided",
                               None, None)
    record.fields = fields
    return record


def test_json_lines_carry_the_event_name_and_fields() -> None:
    line = JsonFormatter().format(_record(event_uuid="e-1", delivery_id="d-1", actions=2))
    entry = orjson.loads(line)
    assert entry["event"] == "pipeline.decided"
    assert entry["level"] == "info"
    assert (entry["event_uuid"], entry["delivery_id"], entry["actions"]) == ("e-1", "d-1", 2)


def test_user_identifiers_are_hashed_when_configured() -> None:
    hasher = UserHasher(b"k" * 32)
    fields = {"event_uuid": "e-1", "user_id": "00u1", "user_login": "pat@example.com",
              "actor": "admin@example.com", "kind": "enrollment"}
    entry = orjson.loads(JsonFormatter(hasher).format(_record(**fields)))
    text = TextFormatter(hasher).format(_record(**fields))
    for value in ("00u1", "pat@example.com", "admin@example.com"):
        assert value not in orjson.dumps(entry).decode()
        assert value not in text
    assert entry["user_id"].startswith("u-") and entry["user_id"] == hasher("00u1")
    assert entry["event_uuid"] == "e-1" and entry["kind"] == "enrollment"
    # Without a hasher the same line names the user: the hashing is what hides it.
    plain = orjson.loads(JsonFormatter().format(_record(**fields)))
    assert plain["user_login"] == "pat@example.com"


def test_the_same_user_hashes_the_same_and_keys_differ(tmp_path: Path) -> None:
    one, other = UserHasher(b"a" * 32), UserHasher(b"b" * 32)
    assert one("pat@example.com") == one("pat@example.com")
    assert one("pat@example.com") != one("sam@example.com")
    assert one("pat@example.com") != other("pat@example.com")


def test_hash_key_is_kept_owner_only_and_shared(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log={"hash_user_ids": True})
    key = user_hash_key(settings)
    assert key is not None and len(key) == 64
    assert user_hash_key(settings) == key
    assert (tmp_path / USER_HASH_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert user_hash_key(Settings(data_dir=tmp_path)) is None
