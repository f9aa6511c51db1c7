"""Assembling the app: a refused configuration leaves no store connection behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.conftest import make_settings

from factorflow import bootstrap
from factorflow.errors import FactorflowError
from factorflow.store.sqlite import SqliteEventStore

BAD_RULES = "version: 1\nmatch: all\nrules:\n  - id: r\n    actions: [{id: a, kind: jria}]\n"


class ClosingStore(SqliteEventStore):
    """A real SQLite store that remembers whether it was closed."""

    opened: ClassVar[list[ClosingStore]] = []

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.closed = False
        ClosingStore.opened.append(self)

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[ClosingStore]:
    ClosingStore.opened = []

    def open_store(url: str) -> ClosingStore:
        store = ClosingStore(Path(url.removeprefix("sqlite:///")))
        store.migrate()
        return store

    monkeypatch.setattr(bootstrap, "open_store", open_store)
    return ClosingStore.opened


def test_bad_rules_close_the_store_build_app_opened(
    tmp_path: Path, opened: list[ClosingStore]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BAD_RULES, encoding="utf-8")
    settings = make_settings(tmp_path, pipeline={"rules_file": rules})

    with pytest.raises(FactorflowError, match="'jria' is not a known action kind"):
        bootstrap.build_app(settings, worker=True)

    assert len(opened) == 1
    assert opened[0].closed


def test_a_store_the_caller_passed_stays_open(tmp_path: Path, opened: list[Any]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BAD_RULES, encoding="utf-8")
    settings = make_settings(tmp_path, pipeline={"rules_file": rules})
    store = ClosingStore(tmp_path / "own.db")
    store.migrate()
    try:
        with pytest.raises(FactorflowError, match="'jria' is not a known action kind"):
            bootstrap.build_app(settings, store, worker=True)
        assert not store.closed  # the caller's to close
        assert store.counts() == {"events": 0, "deliveries": 0, "quarantined": 0}
    finally:
        store.close()
