"""The directory enrichment source: YAML and CSV exports, lookups, and malformed files."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pytest

from factorflow.domain.facts import Person
from factorflow.enrichment import EnrichmentSource, NoEnrichment
from factorflow.enrichment.directory import DirectoryEnrichment
from factorflow.errors import ConfigError

EXAMPLES = resources.files("factorflow").joinpath("examples")


def person(user_id: str | None = None, login: str | None = None) -> Person:
    return Person(id=user_id, login=login, display_name=None, type="User")


@pytest.mark.parametrize("name", ["directory.example.yaml", "directory.example.csv"])
def test_the_example_directories_give_the_same_users(name: str) -> None:
    directory = DirectoryEnrichment.from_file(Path(str(EXAMPLES.joinpath(name))))
    source: EnrichmentSource = directory
    assert len(directory) == 2
    dana = source.lookup(person("00u1privileged0001"))
    assert dana.source == "directory" and dana.found
    assert dict(dana.profile) == {"department": "IT", "title": "Domain Administrator",
                                  "costCenter": "CC-100"}
    assert dana.group_names() == {"Privileged Access", "Helpdesk"}
    lee = source.lookup(person(None, "Lee.Sales@Example.COM"))
    assert lee.found and lee.profile["department"] == "Sales"
    assert lee.group_names() == {"Everyone"}


def test_lookup_by_id_then_login_ignoring_case(tmp_path: Path) -> None:
    path = tmp_path / "people.yaml"
    path.write_text(
        "users:\n"
        "  - {id: 00uA, login: a@example.com, profile: {title: A}}\n"
        "  - {login: B@Example.com, profile: {title: B, langs: [en, fr], level: 3, vip: true}}\n"
    )
    directory = DirectoryEnrichment.from_file(path)
    assert directory.lookup(person("00uA", "someone.else@example.com")).profile["title"] == "A"
    # an id the directory does not know falls back to the login
    assert directory.lookup(person("00uUnknown", "b@example.COM")).profile == {
        "title": "B", "langs": ["en", "fr"], "level": 3, "vip": True}
    assert directory.lookup(person("00uB")).found is False


def test_unknown_users_and_none_are_not_found(tmp_path: Path) -> None:
    directory = DirectoryEnrichment.from_file(Path(str(EXAMPLES.joinpath("directory.example.csv"))))
    for user in (None, person("00uNobody", "nobody@example.com"), person()):
        enrichment = directory.lookup(user)
        assert (enrichment.source, enrichment.found) == ("directory", False)
        assert enrichment.profile == {} and enrichment.groups == ()
    assert NoEnrichment().lookup(person("00u1")).source == "none"


def test_lookups_return_copies(tmp_path: Path) -> None:
    path = tmp_path / "people.yaml"
    path.write_text("users:\n  - {id: 00uA, profile: {langs: [en]}, groups: [G]}\n")
    directory = DirectoryEnrichment.from_file(path)
    first = directory.lookup(person("00uA"))
    first.profile["langs"].append("de")  # type: ignore[index]
    first.profile["extra"] = 1  # type: ignore[index]
    assert dict(directory.lookup(person("00uA")).profile) == {"langs": ["en"]}


def test_fetched_at_is_the_files_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("login\na@example.com\n")
    os.utime(path, (1_773_570_134, 1_773_570_134))
    directory = DirectoryEnrichment.from_file(path)
    assert directory.lookup(person(None, "a@example.com")).fetched_at == "2026-03-15T10:22:14Z"
    assert directory.lookup(None).fetched_at == "2026-03-15T10:22:14Z"


def test_csv_groups_empty_cells_bom_and_column_names(tmp_path: Path) -> None:
    path = tmp_path / "hr-export.csv"
    path.write_bytes(
        "\ufeffLogin,ID,Department,Title,Groups\r\n"
        'a@example.com,00uA,IT,"Admin, Senior", Privileged Access ; Helpdesk ;\r\n'
        "b@example.com,,Sales,,\r\n"
        ",,,,\r\n".encode()
    )
    directory = DirectoryEnrichment.from_file(path)
    assert len(directory) == 2
    a = directory.lookup(person("00uA"))
    assert dict(a.profile) == {"Department": "IT", "Title": "Admin, Senior"}
    assert [dict(group) for group in a.groups] == [{"name": "Privileged Access"},
                                                   {"name": "Helpdesk"}]
    b = directory.lookup(person(None, "b@example.com"))
    assert dict(b.profile) == {"Department": "Sales"} and b.groups == ()


def test_yaml_groups_by_name_or_id(tmp_path: Path) -> None:
    path = tmp_path / "people.yml"
    path.write_text("users:\n  - id: 00uA\n    groups: [Admins, {id: 00g1, name: Helpdesk}, "
                    "{id: 00g2}]\n")
    enrichment = DirectoryEnrichment.from_file(path).lookup(person("00uA"))
    assert enrichment.group_names() == {"Admins", "Helpdesk"}
    assert enrichment.group_ids() == {"00g1", "00g2"}


def problems(tmp_path: Path, name: str, content: str) -> list[str]:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        DirectoryEnrichment.from_file(path)
    lines = str(raised.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    return [line.removeprefix(f"{path}: ") for line in lines]


def test_malformed_yaml_entries_name_line_and_field(tmp_path: Path) -> None:
    content = (
        "users:\n"
        "  - id: 00uA\n"                       # line 2: fine
        "    login: a@example.com\n"
        "  - profile: {title: x}\n"             # line 4: neither id nor login
        "  - id: 00uB\n"                       # line 5
        "    groupz: [x]\n"
        "    profile: {manager: {id: 1}}\n"
        "    groups: [{id: ''}, 7]\n"
        "  - id: 00uA\n"                       # line 9: duplicate id
        "    login: A@EXAMPLE.com\n"
        "  - just a string\n"                  # line 11
        "  - id: 42\n"                         # line 12
    )
    assert problems(tmp_path, "people.yaml", content) == [
        "line 4: users[1]: give an id or a login",
        "line 5: users[2]: groupz: unknown key (allowed: id, login, profile, groups)",
        "line 5: users[2]: profile.manager: expected a string, number, true/false or a list of "
        "them",
        "line 5: users[2]: groups[0]: expected a group name or a mapping with id and/or name "
        "(non-empty strings)",
        "line 5: users[2]: groups[1]: expected a group name or a mapping with id and/or name "
        "(non-empty strings)",
        "line 11: users[4]: expected a mapping with id and/or login",
        "line 12: users[5]: id: expected a non-empty string",
        "line 9: id: '00uA' is already used on line 2",
        "line 9: login: 'A@EXAMPLE.com' is already used on line 2 (logins are compared "
        "ignoring case)",
    ]


def test_yaml_syntax_and_shape_errors(tmp_path: Path) -> None:
    assert problems(tmp_path, "a.yaml", "users:\n  - {id: 00uA\n")[0].startswith(
        "line 3: column 1: YAML syntax error")
    assert problems(tmp_path, "b.yaml", "users:\n  - id: 1a\n    id: 1b\n") == [
        "line 3: duplicate key 'id'"]
    assert problems(tmp_path, "c.yaml", "- id: 00uA\n") == [
        "expected a mapping with one key, 'users', holding a list of users"]
    assert problems(tmp_path, "d.yaml", "users: {id: 00uA}\n") == [
        "expected a mapping with one key, 'users', holding a list of users"]


def test_malformed_csv_names_line_and_field(tmp_path: Path) -> None:
    content = (
        "id,login,title,groups\n"
        "00uA,a@example.com,Admin,G1\n"
        "00uB,b@example.com,Admin\n"          # line 3: too few fields
        ",,Nobody,G2\n"                        # line 4: neither id nor login
        "00uA,c@example.com,Dup,\n"            # line 5: duplicate id
    )
    assert problems(tmp_path, "people.csv", content) == [
        "line 3: expected 4 fields, got 3",
        "line 4: id, login: give an id or a login",
        "line 5: id: '00uA' is already used on line 2",
    ]


def test_malformed_csv_headers(tmp_path: Path) -> None:
    assert problems(tmp_path, "a.csv", "") == [
        "the file is empty (expected a header row with id and/or login)"]
    assert problems(tmp_path, "b.csv", "email,title\nx@example.com,A\n") == [
        "line 1: the header needs an 'id' or a 'login' column"]
    assert problems(tmp_path, "c.csv", "login,title,,Title\n") == [
        "line 1: column 3 has no name", "line 1: column 'Title' appears twice"]


def test_unreadable_and_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        DirectoryEnrichment.from_file(tmp_path / "missing.csv")
    assert str(raised.value) == (f"{tmp_path / 'missing.csv'}: cannot read the directory file: "
                                 "No such file or directory")
    other = tmp_path / "people.xlsx"
    other.write_bytes(b"PK\x03\x04")
    with pytest.raises(ConfigError) as raised:
        DirectoryEnrichment.from_file(other)
    assert str(raised.value) == (f"{other}: unknown directory format '.xlsx' "
                                 "(use .yaml, .yml, .json or .csv)")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("login,city\na@example.com,Z\xfcrich\n".encode("latin-1"))
    with pytest.raises(ConfigError) as raised:
        DirectoryEnrichment.from_file(latin)
    assert str(raised.value) == f"{latin}: not UTF-8 text (byte 26)"


def test_json_directory(tmp_path: Path) -> None:
    path = tmp_path / "people.json"
    path.write_text('{"users": [{"id": "00uA", "groups": ["G"]}]}')
    assert DirectoryEnrichment.from_file(path).lookup(person("00uA")).group_names() == {"G"}
