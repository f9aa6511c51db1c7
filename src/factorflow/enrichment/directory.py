"""A user directory read from a file, as an HR or identity export gives it (YAML or CSV).

YAML::

    users:
      - id: 00u1a2b3c4d5e6f7g8h9      # Okta user id, and/or
        login: pat.lee@example.com    # Okta login (matched ignoring case)
        profile: {department: IT, title: Domain Administrator}
        groups: [Privileged Access, {id: 00g1x2y3z4, name: Helpdesk}]

CSV: a header row with ``id`` and/or ``login``, optionally ``groups`` (names separated by ``;``);
every other column is a profile attribute. Empty cells are left out of the profile.

A user is looked up by Okta id first, then by login. Problems name the file, the line and the
field, all at once, as a :class:`~factorflow.errors.ConfigError`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factorflow.domain.actions import Enrichment
from factorflow.domain.facts import Person
from factorflow.errors import ConfigError
from factorflow.rules.yaml_document import YamlProblems, parse_yaml

SOURCE = "directory"
_YAML_KEYS = ("id", "login", "profile", "groups")
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    id: str | None
    login: str | None
    profile: Mapping[str, Any]
    groups: tuple[Mapping[str, str], ...]
    line: int | None = None


class DirectoryEnrichment:
    """Implements :class:`~factorflow.enrichment.port.EnrichmentSource` over a loaded file."""

    def __init__(self, entries: Sequence[DirectoryEntry], *, as_of: str | None = None) -> None:
        self._entries = tuple(entries)
        self._by_id = {entry.id: entry for entry in self._entries if entry.id}
        self._by_login = {entry.login.casefold(): entry for entry in self._entries if entry.login}
        self._as_of = as_of

    @classmethod
    def from_file(cls, path: str | Path) -> DirectoryEnrichment:
        file = Path(path)
        try:
            content = file.read_bytes()
            modified = file.stat().st_mtime
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the directory file: "
                              f"{exc.strerror or exc}") from None
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        if file.suffix.lower() == ".csv":
            entries, problems = _read_csv(text)
        elif file.suffix.lower() in (".yaml", ".yml", ".json"):
            entries, problems = _read_yaml(text)
        else:
            raise ConfigError(f"{path}: unknown directory format {file.suffix!r} "
                              "(use .yaml, .yml, .json or .csv)")
        problems.extend(_duplicates(entries))
        if problems:
            raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
        as_of = datetime.fromtimestamp(modified, UTC).isoformat(timespec="seconds")
        return cls(entries, as_of=as_of.replace("+00:00", "Z"))

    def __len__(self) -> int:
        return len(self._entries)

    def members(self, group: str) -> list[DirectoryEntry]:
        """The users in ``group`` (matched by group name ignoring case, or by group id), in
        file order: a campaign's population."""
        wanted = group.casefold()
        return [
            entry for entry in self._entries
            if any(g.get("id") == group or (g.get("name") or "").casefold() == wanted
                   for g in entry.groups)
        ]

    def lookup(self, user: Person | None) -> Enrichment:
        entry = None
        if user is not None:
            entry = self._by_id.get(user.id) if user.id else None
            if entry is None and user.login:
                entry = self._by_login.get(user.login.casefold())
        if entry is None:
            return Enrichment(source=SOURCE, found=False, fetched_at=self._as_of)
        return Enrichment(
            source=SOURCE,
            found=True,
            # Copies: a caller that changes its snapshot must not change the directory.
            profile={key: _copy(value) for key, value in entry.profile.items()},
            groups=tuple(dict(group) for group in entry.groups),
            fetched_at=self._as_of,
        )


def _read_yaml(text: str) -> tuple[list[DirectoryEntry], list[str]]:
    try:
        document = parse_yaml(text)
    except YamlProblems as exc:
        return [], [f"line {line}: {message}" if line else message
                    for line, message in exc.problems]
    data = document.data
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(data, dict) or set(data) - {"users"} or not isinstance(users, list):
        return [], ["expected a mapping with one key, 'users', holding a list of users"]
    entries: list[DirectoryEntry] = []
    problems: list[str] = []
    for index, item in enumerate(users):
        line = document.line_of("users", index)
        where = f"line {line}: users[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping with id and/or login")
            continue
        found: list[str] = []
        for key in item:
            if key not in _YAML_KEYS:
                found.append(f"{where}: {key}: unknown key (allowed: {', '.join(_YAML_KEYS)})")
        user_id = _identifier(item.get("id"), f"{where}: id", found)
        login = _identifier(item.get("login"), f"{where}: login", found)
        if user_id is None and login is None and "id" not in item and "login" not in item:
            found.append(f"{where}: give an id or a login")
        profile = _profile(item.get("profile"), f"{where}: profile", found)
        groups = _yaml_groups(item.get("groups"), f"{where}: groups", found)
        problems.extend(found)
        if not found:
            entries.append(DirectoryEntry(user_id, login, profile, groups, line))
    return entries, problems


def _read_csv(text: str) -> tuple[list[DirectoryEntry], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return [], [f"line {reader.line_num}: {exc}"]
    if header is None:
        return [], ["the file is empty (expected a header row with id and/or login)"]
    columns = [name.strip() for name in header]
    lowered = [name.lower() for name in columns]
    problems: list[str] = []
    for position, name in enumerate(columns, start=1):
        if not name:
            problems.append(f"line 1: column {position} has no name")
        elif lowered.index(name.lower()) != position - 1:
            problems.append(f"line 1: column {name!r} appears twice")
    if "id" not in lowered and "login" not in lowered:
        problems.append("line 1: the header needs an 'id' or a 'login' column")
    if problems:
        return [], problems
    entries: list[DirectoryEntry] = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank lines, as spreadsheets leave at the end
            if len(row) != len(columns):
                problems.append(f"line {line}: expected {len(columns)} fields, got {len(row)}")
                continue
            cells = {lowered[i]: (columns[i], row[i].strip()) for i in range(len(columns))}
            user_id = cells.pop("id", ("id", ""))[1] or None
            login = cells.pop("login", ("login", ""))[1] or None
            group_cell = cells.pop("groups", ("groups", ""))[1]
            if user_id is None and login is None:
                problems.append(f"line {line}: id, login: give an id or a login")
                continue
            groups = tuple(
                {"name": name.strip()} for name in group_cell.split(";") if name.strip()
            )
            profile = {name: value for name, value in cells.values() if value}
            entries.append(DirectoryEntry(user_id, login, profile, groups, line))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: {exc}")
    return entries, problems


def _identifier(value: Any, where: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    problems.append(f"{where}: expected a non-empty string")
    return None


def _profile(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping of attribute names to values")
        return {}
    profile: dict[str, Any] = {}
    for key, item in value.items():
        scalar_list = isinstance(item, list) and all(isinstance(x, _SCALARS) for x in item)
        if not isinstance(key, str):
            problems.append(f"{where}: attribute names must be strings, got {key!r}")
        elif item is None or isinstance(item, _SCALARS) or scalar_list:
            profile[key] = item
        else:
            problems.append(f"{where}.{key}: expected a string, number, true/false or a list "
                            "of them")
    return profile


def _yaml_groups(value: Any, where: str, problems: list[str]) -> tuple[Mapping[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: expected a list of group names or {{id, name}} mappings")
        return ()
    groups: list[Mapping[str, str]] = []
    for index, item in enumerate(value):
        if isinstance(item, str) and item.strip():
            groups.append({"name": item.strip()})
        elif (
            isinstance(item, dict)
            and item
            and set(item) <= {"id", "name"}
            and all(isinstance(v, str) and v.strip() for v in item.values())
        ):
            groups.append({key: text.strip() for key, text in item.items()})
        else:
            problems.append(f"{where}[{index}]: expected a group name or a mapping with "
                            "id and/or name (non-empty strings)")
    return tuple(groups)


def _duplicates(entries: Sequence[DirectoryEntry]) -> list[str]:
    problems: list[str] = []
    ids: dict[str, int | None] = {}
    logins: dict[str, int | None] = {}
    for entry in entries:
        if entry.id:
            if entry.id in ids:
                problems.append(f"line {entry.line}: id: {entry.id!r} is already used on "
                                f"line {ids[entry.id]}")
            ids.setdefault(entry.id, entry.line)
        if entry.login:
            folded = entry.login.casefold()
            if folded in logins:
                problems.append(f"line {entry.line}: login: {entry.login!r} is already used on "
                                f"line {logins[folded]} (logins are compared ignoring case)")
            logins.setdefault(folded, entry.line)
    return problems


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
