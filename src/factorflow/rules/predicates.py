"""Conditions: each one reads the fact, the enrichment or the recent events and says whether it
holds, with a short human detail for the trace. None of them raises on odd data."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from factorflow.domain.actions import Enrichment, RecentEvent
from factorflow.domain.facts import Fact

MISSING = "(none)"


@dataclass(frozen=True, slots=True)
class ConditionResult:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Context:
    fact: Fact
    enrichment: Enrichment
    recent: tuple[RecentEvent, ...]


class Condition(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, context: Context) -> ConditionResult: ...


@dataclass(frozen=True, slots=True)
class ValueIn:
    """A single fact field is (or is not) one of a set; a missing value is in no set."""

    name: str
    read: Callable[[Fact], str | None]
    values: tuple[str, ...]
    negate: bool = False
    fold_case: bool = False

    def check(self, context: Context) -> ConditionResult:
        value = self.read(context.fact)
        fold = str.casefold if self.fold_case else str
        member = value is not None and fold(value) in {fold(item) for item in self.values}
        shown = MISSING if value is None else value
        verb = "in" if member else "not in"
        return ConditionResult(
            self.name, member != self.negate, f"{self.name}={shown} {verb} {listing(self.values)}"
        )


@dataclass(frozen=True, slots=True)
class ProfileAttribute:
    """Tests on one enrichment profile attribute, compared as text; a list holds if any of its
    items does (``not_equals`` / ``not_in``: if none does). A missing attribute has no value."""

    attribute: str
    equals: str | None = None
    not_equals: str | None = None
    one_of: tuple[str, ...] | None = None
    none_of: tuple[str, ...] | None = None
    pattern: re.Pattern[str] | None = None
    exists: bool | None = None

    @property
    def name(self) -> str:
        return f"profile.{self.attribute}"

    def check(self, context: Context) -> ConditionResult:
        raw = context.enrichment.profile.get(self.attribute)
        values = as_texts(raw)
        tests: list[tuple[bool, str]] = []
        if self.exists is not None:
            tests.append((bool(values) == self.exists, "exists" if self.exists else "absent"))
        if self.equals is not None:
            tests.append((self.equals in values, f"equals {self.equals}"))
        if self.not_equals is not None:
            tests.append((self.not_equals not in values, f"not equals {self.not_equals}"))
        if self.one_of is not None:
            tests.append((any(v in self.one_of for v in values), f"in {listing(self.one_of)}"))
        if self.none_of is not None:
            tests.append(
                (not any(v in self.none_of for v in values), f"not in {listing(self.none_of)}")
            )
        if self.pattern is not None:
            matched = any(self.pattern.search(v) for v in values)
            tests.append((matched, f"matches /{self.pattern.pattern}/"))
        passed = all(ok for ok, _ in tests)
        failed = [text for ok, text in tests if not ok]
        if not context.enrichment.found:
            shown = f"{MISSING} (user not found in {context.enrichment.source})"
        else:
            shown = ", ".join(values) if values else MISSING
        expectation = "; ".join(text for _, text in tests)
        detail = f"{self.name}={shown}: " + (
            expectation if passed else "expected " + "; ".join(failed)
        )
        return ConditionResult(self.name, passed, detail)


@dataclass(frozen=True, slots=True)
class GroupMembership:
    """Entries match a group id exactly or a group name ignoring case."""

    any_of: tuple[str, ...] | None = None
    all_of: tuple[str, ...] | None = None
    none_of: tuple[str, ...] | None = None
    name: str = "groups"

    def check(self, context: Context) -> ConditionResult:
        enrichment = context.enrichment
        names = {name.casefold() for name in enrichment.group_names() if isinstance(name, str)}
        ids = {group_id for group_id in enrichment.group_ids() if isinstance(group_id, str)}

        def member(entry: str) -> bool:
            return entry in ids or entry.casefold() in names

        parts: list[str] = []
        passed = True
        for label, entries in (
            ("any of", self.any_of), ("all of", self.all_of), ("none of", self.none_of)
        ):
            if entries is None:
                continue
            found = [entry for entry in entries if member(entry)]
            if label == "any of":
                ok = bool(found)
            elif label == "all of":
                ok = len(found) == len(entries)
            else:
                ok = not found
            passed = passed and ok
            hit = f"member of {', '.join(found)}" if found else "member of none of them"
            parts.append(f"groups {label} {listing(entries)}: {hit}")
        if not enrichment.found:
            parts.append(f"user not found in {enrichment.source}")
        return ConditionResult(self.name, passed, "; ".join(parts))


@dataclass(frozen=True, slots=True)
class RecentFactorEvent:
    """Another factor event of the user published up to ``within_hours`` before this one."""

    within_hours: float
    kinds: tuple[str, ...] | None = None
    factor_types: tuple[str, ...] | None = None
    name: str = "recent_factor_event"

    def check(self, context: Context) -> ConditionResult:
        wanted = "/".join(self.kinds) if self.kinds else "factor"
        if self.factor_types:
            wanted += f" ({'/'.join(self.factor_types)})"
        window = f"within {self.within_hours:g} h before"
        now = parse_time(context.fact.published_at)
        if now is None:
            return ConditionResult(self.name, False, "this event has no usable timestamp")
        try:
            earliest = now - timedelta(hours=self.within_hours)
        except OverflowError:  # an event dated in year 1
            earliest = datetime.min.replace(tzinfo=UTC)
        best: tuple[datetime, RecentEvent] | None = None
        for event in context.recent:
            when = parse_time(event.published_at)
            if (
                event.uuid == context.fact.uuid
                or when is None
                or not earliest <= when <= now
                or (self.kinds is not None and event.kind not in self.kinds)
                or (self.factor_types is not None and event.factor_type not in self.factor_types)
            ):
                continue
            if best is None or when > best[0]:
                best = (when, event)
        if best is None:
            return ConditionResult(
                self.name,
                False,
                f"no {wanted} event {window} ({len(context.recent)} recent event(s) checked)",
            )
        when, event = best
        hours = (now - when).total_seconds() / 3600
        return ConditionResult(
            self.name,
            True,
            f"{event.kind} {event.factor_type} at {event.published_at} "
            f"({hours:.1f} h before), {window}",
        )


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one branch holds (a branch holds when all of its conditions do)."""

    branches: tuple[tuple[Condition, ...], ...]
    name: str = "any_of"

    def check(self, context: Context) -> ConditionResult:
        summaries: list[str] = []
        for number, branch in enumerate(self.branches, start=1):
            results = [condition.check(context) for condition in branch]
            if all(result.passed for result in results):
                held = "; ".join(result.detail for result in results) or "no conditions"
                return ConditionResult(self.name, True, f"branch {number} holds: {held}")
            missed = "; ".join(result.detail for result in results if not result.passed)
            summaries.append(f"{number}) {missed}")
        return ConditionResult(self.name, False, "no branch holds: " + " | ".join(summaries))

    def walk(self) -> Iterator[Condition]:
        for branch in self.branches:
            for condition in branch:
                yield condition
                if isinstance(condition, AnyOf):
                    yield from condition.walk()


def as_texts(value: Any) -> list[str]:
    """A profile value as the texts it is compared as (``true``/``false``, numbers as written)."""
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        return [value] if value != "" else []
    if isinstance(value, int | float):
        return [scalar_text(value)]
    if isinstance(value, list | tuple):
        return [text for item in value if not isinstance(item, list | tuple | dict)
                for text in as_texts(item)]
    return []


def scalar_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def listing(values: Iterable[str], limit: int = 8) -> str:
    items = list(values)
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", … +{len(items) - limit} more"
    return f"[{shown}]"
