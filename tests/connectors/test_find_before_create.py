"""One remote record per idempotency key, for the connectors that look for their record before
they create one: Jira (an issue with the key's label) and ServiceNow (a record with the key as
its correlation_id). The same scenarios for each, against its local double (see
:mod:`tests.connectors.test_jira` and :mod:`tests.connectors.test_servicenow`): the step run
twice, a fresh instance after a crash, a create applied but its answer lost, and a create
answered without the record's reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from factorflow.actions.base import ActionHandler
from factorflow.domain.actions import ActionRequest, OutcomeStatus
from factorflow.errors import TransientActionError
from tests.connectors import test_jira as jira_case
from tests.connectors import test_servicenow as snow_case
from tests.connectors.fakes import FACT, serving


@dataclass(frozen=True)
class Remote:
    """One connector and its double, as these scenarios see them."""

    connector: Callable[[httpx.Client], ActionHandler]
    request: ActionRequest
    first: str  # the reference of the first record created
    found: str  # the detail of an outcome that found the record
    records: Callable[[], list[str]]  # the references of every record the double holds
    lookups: Callable[[], int]  # look-up requests the double received
    creates: Callable[[], int]  # create requests the double received
    lose_answer: Callable[[], int]  # the next create is applied, then answered with this error
    answer_without_reference: Callable[[], str]  # ... then answered 201 without the reference;
    # what the error then says


def jira_remote(fake: jira_case.FakeJira) -> Remote:
    request = jira_case.request()

    def lose_answer() -> int:
        fake.then("/rest/api/3/issue", 504, b"<html>Gateway Timeout</html>", after_effect=True)
        return 504

    def answer_without_reference() -> str:
        fake.then("/rest/api/3/issue", 201, b"", after_effect=True)
        return "without an issue key"

    return Remote(
        connector=lambda http: jira_case.connector(fake, http), request=request,
        first="OPS-1", found=f"issue OPS-1 has label {jira_case.label_of(request)}",
        records=lambda: list(fake.issues), lookups=lambda: len(fake.searches()),
        creates=lambda: len(fake.creates()), lose_answer=lose_answer,
        answer_without_reference=answer_without_reference,
    )


def servicenow_remote(fake: snow_case.FakeServiceNow) -> Remote:
    def lose_answer() -> int:
        fake.then("POST", 502, b"<html>Bad Gateway</html>", after_effect=True)
        return 502

    def answer_without_reference() -> str:
        fake.then("POST", 201, {"result": {}}, after_effect=True)
        return "without a record"

    return Remote(
        connector=lambda http: snow_case.connector(fake, http), request=snow_case.request(),
        first="INC0010001", found=f"incident record with correlation_id {snow_case.KEY}",
        records=lambda: [row["number"] for row in fake.rows()],
        lookups=lambda: sum(1 for r in fake.received if r.method == "GET"),
        creates=lambda: len(fake.posts()), lose_answer=lose_answer,
        answer_without_reference=answer_without_reference,
    )


@pytest.fixture(params=["jira", "servicenow"])
def remote(request: pytest.FixtureRequest) -> Iterator[Remote]:
    if request.param == "jira":
        with serving(jira_case.FakeJira()) as jira:
            yield jira_remote(jira)
    else:
        with serving(snow_case.FakeServiceNow()) as snow:
            yield servicenow_remote(snow)


def test_the_same_step_twice_creates_one_record(remote: Remote, http: httpx.Client) -> None:
    handler = remote.connector(http)
    first = handler.perform(remote.request, FACT)
    second = handler.perform(remote.request, FACT)

    assert (first.status, first.reference) == (OutcomeStatus.DONE, remote.first)
    assert (second.status, second.reference) == (OutcomeStatus.ALREADY_DONE, remote.first)
    assert second.detail == remote.found
    assert remote.records() == [remote.first]
    assert remote.creates() == 1
    assert remote.lookups() == 2


def test_a_crash_after_the_create_is_answered_by_a_fresh_instance_finding_the_record(
    remote: Remote, http: httpx.Client
) -> None:
    # The first instance creates the record, and its process dies before recording that.
    remote.connector(http).perform(remote.request, FACT)
    with httpx.Client(timeout=5.0) as restarted:
        again = remote.connector(restarted).perform(remote.request, FACT)

    assert (again.status, again.reference) == (OutcomeStatus.ALREADY_DONE, remote.first)
    assert again.detail == remote.found
    assert remote.records() == [remote.first]
    assert remote.creates() == 1


def test_a_create_whose_answer_is_lost_is_found_on_the_retry(
    remote: Remote, http: httpx.Client
) -> None:
    status = remote.lose_answer()
    with pytest.raises(TransientActionError) as failed:
        remote.connector(http).perform(remote.request, FACT)
    assert f"HTTP {status}" in str(failed.value)
    assert remote.records() == [remote.first]  # the remote system did create it

    retry = remote.connector(http).perform(remote.request, FACT)
    assert (retry.status, retry.reference) == (OutcomeStatus.ALREADY_DONE, remote.first)
    assert remote.records() == [remote.first]
    assert remote.creates() == 1


def test_a_create_answered_without_a_reference_is_transient_and_the_retry_finds_it(
    remote: Remote, http: httpx.Client
) -> None:
    error = remote.answer_without_reference()
    with pytest.raises(TransientActionError, match=error):
        remote.connector(http).perform(remote.request, FACT)

    retry = remote.connector(http).perform(remote.request, FACT)
    assert (retry.status, retry.reference) == (OutcomeStatus.ALREADY_DONE, remote.first)
    assert remote.records() == [remote.first]
