"""Migration campaigns: the population (a group of the org's directory file), who completed
(the ``checkpoint`` action's table), who is still pending, and progress over time."""

from __future__ import annotations

import csv
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

from factorflow.actions.base import ActionStore
from factorflow.actions.checkpoint import Completion, campaign_progress
from factorflow.enrichment.directory import DirectoryEnrichment
from factorflow.errors import ConfigError
from factorflow.settings import CampaignSettings, Settings

MAX_DAYS = 366  # progress over time: at most this many days, ending today

CSV_FIELDS = ("campaign", "status", "user_id", "login", "completed_at", "factor_type",
              "factor_strength", "event_uuid")


@dataclass(frozen=True)
class Member:
    user_id: str | None
    login: str | None
    completion: Completion | None  # None: still pending

    @property
    def label(self) -> str:
        return self.login or self.user_id or "?"


@dataclass(frozen=True)
class CampaignView:
    name: str
    settings: CampaignSettings
    org: str
    members: list[Member]  # the population, by login
    outside: list[Completion]  # completions by users not in the population
    problem: str | None  # why the population could not be read
    over_time: list[tuple[str, int, float]]  # (day, completed so far, percent)

    @property
    def population(self) -> int:
        return len(self.members)

    @property
    def completed(self) -> int:
        return sum(1 for member in self.members if member.completion is not None)

    @property
    def pending(self) -> list[Member]:
        return [member for member in self.members if member.completion is None]

    @property
    def percent(self) -> float | None:
        return 100.0 * self.completed / self.population if self.population else None


class DirectoryFiles:
    """Directory files loaded once per modification (they can hold many thousand users)."""

    def __init__(self) -> None:
        self._loaded: dict[Path, tuple[float, DirectoryEnrichment]] = {}
        self._lock = threading.Lock()

    def load(self, path: Path) -> DirectoryEnrichment:
        try:
            modified = path.stat().st_mtime
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the directory file: "
                              f"{exc.strerror or exc}") from None
        with self._lock:
            held = self._loaded.get(path)
            if held is not None and held[0] == modified:
                return held[1]
        directory = DirectoryEnrichment.from_file(path)
        with self._lock:
            self._loaded[path] = (modified, directory)
        return directory


def campaign_org(settings: Settings, campaign: CampaignSettings) -> str:
    return campaign.org or settings.org_list()[0].name


def campaign_view(
    store: ActionStore, settings: Settings, name: str, directories: DirectoryFiles,
    today: date | None = None,
) -> CampaignView:
    campaign = settings.campaigns[name]
    org_name = campaign_org(settings, campaign)
    completions = campaign_progress(store, name).completed
    people, problem = _population(settings, campaign, org_name, directories)
    by_id = {c.user_id: c for c in completions}
    by_login = {c.user_login.casefold(): c for c in completions if c.user_login}
    members: list[Member] = []
    matched: set[str] = set()
    for user_id, login in people:
        done = (by_id.get(user_id) if user_id else None) or (
            by_login.get(login.casefold()) if login else None)
        if done is not None:
            matched.add(done.user_id)
        members.append(Member(user_id, login, done))
    members.sort(key=lambda m: (m.label.casefold(), m.user_id or ""))
    outside = [c for c in completions if c.user_id not in matched]
    over_time = _over_time(members, today or datetime.now(UTC).date())
    return CampaignView(name, campaign, org_name, members, outside, problem, over_time)


def _population(
    settings: Settings, campaign: CampaignSettings, org_name: str, directories: DirectoryFiles,
) -> tuple[list[tuple[str | None, str | None]], str | None]:
    org = next((o for o in settings.org_list() if o.name == org_name), None)
    if org is None:
        return [], f"org {org_name!r} is not configured"
    if org.directory_file is None:
        return [], (f"org {org_name!r} has no directory file, so the group "
                    f"{campaign.population_group!r} cannot be resolved")
    try:
        directory = directories.load(org.directory_file)
    except ConfigError as exc:
        return [], str(exc)
    people = [(entry.id, entry.login) for entry in directory.members(campaign.population_group)]
    if not people:
        return [], (f"group {campaign.population_group!r} has no members in "
                    f"{org.directory_file.name}")
    return people, None


def _over_time(members: list[Member], today: date) -> list[tuple[str, int, float]]:
    population = len(members)
    days: Counter[date] = Counter()
    for member in members:
        if member.completion is not None:
            try:
                days[date.fromisoformat(member.completion.completed_at[:10])] += 1
            except ValueError:
                continue
    if not days or not population:
        return []
    first = max(min(days), today - timedelta(days=MAX_DAYS - 1))
    last = max(today, max(days))
    done = sum(count for day, count in days.items() if day < first)
    series = []
    for n in range((last - first).days + 1):
        day = first + timedelta(days=n)
        done += days.get(day, 0)
        series.append((day.isoformat(), done, round(100.0 * done / population, 1)))
    return series


def write_csv(view: CampaignView, out: IO[str]) -> int:
    """The population, one row per person (completed or pending), then any completions by
    users outside it. Cells that a spreadsheet would run as a formula are quoted with '."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    count = 0
    for member in view.members:
        done = member.completion
        writer.writerow(_safe([
            view.name, "completed" if done else "pending", member.user_id or "",
            member.login or "", done.completed_at if done else "",
            done.factor_type if done else "", done.factor_strength if done else "",
            done.event_uuid if done else "",
        ]))
        count += 1
    for done in view.outside:
        writer.writerow(_safe([
            view.name, "outside_population", done.user_id, done.user_login or "",
            done.completed_at, done.factor_type, done.factor_strength, done.event_uuid,
        ]))
        count += 1
    return count


def _safe(cells: list[str]) -> list[str]:
    return ["'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell
            for cell in cells]
