"""The shared fake-server plumbing does what the connector tests rely on: it records every
request in order, answers scripted replies once and only for their path or method, lets the
double act first when told to (an answer lost), and leaves a stalled request unanswered."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.connectors.fakes import Double, Got, Reply, json_reply, serving, unused_port


class Counter(Double):
    """Counts the requests it handled itself and echoes their path."""

    def __init__(self) -> None:
        self.handled: list[str] = []

    def __call__(self, got: Got) -> Reply:
        self.handled.append(f"{got.method} {got.path}")
        return json_reply(200, {"path": got.path, "n": len(self.handled)})


@pytest.fixture
def counter() -> Iterator[Counter]:
    with serving(Counter()) as fake:
        yield fake


def test_requests_are_recorded_with_their_query_headers_and_body(
    counter: Counter, http: httpx.Client
) -> None:
    http.post(f"{counter.url}/a?x=1&x=2&blank=", json={"k": "v"}, headers={"X-Test": "yes"})
    http.post(f"{counter.url}/form", data={"f": "1"})

    first, second = counter.received
    assert (first.method, first.path, first.raw_query) == ("POST", "/a", "x=1&x=2&blank=")
    assert first.query == {"x": "2", "blank": ""}
    assert first.query_lists == {"x": ["1", "2"]}
    assert first.headers["x-test"] == "yes"
    assert first.data() == {"k": "v"}
    assert first.params() == {"x": "2", "blank": "", "k": "v"}
    assert second.params() == {"f": "1"}
    assert second.data() == b"f=1"


def test_a_script_answers_once_and_only_where_it_matches(
    counter: Counter, http: httpx.Client
) -> None:
    counter.server.then(503, b"busy", path="/b", headers={"retry_after": "7"})
    counter.server.then(409, {"taken": True}, method="PUT")

    other = http.post(f"{counter.url}/a")
    scripted = http.post(f"{counter.url}/b")
    again = http.post(f"{counter.url}/b")
    put = http.put(f"{counter.url}/a")

    assert (other.status_code, other.json()["n"]) == (200, 1)
    assert (scripted.status_code, scripted.text, scripted.headers["retry-after"]) == (
        503, "busy", "7")
    assert (again.status_code, again.json()["n"]) == (200, 2)
    assert (put.status_code, put.json()) == (409, {"taken": True})
    assert counter.handled == ["POST /a", "POST /b"]  # scripted answers bypass the double
    assert [f"{g.method} {g.path}" for g in counter.received] == [
        "POST /a", "POST /b", "POST /b", "PUT /a"]


def test_after_effect_lets_the_double_act_before_the_scripted_answer(
    counter: Counter, http: httpx.Client
) -> None:
    counter.server.then(504, b"lost", after_effect=True)

    lost = http.post(f"{counter.url}/c")

    assert (lost.status_code, lost.text) == (504, "lost")
    assert counter.handled == ["POST /c"]


def test_a_stalled_request_gets_no_answer(counter: Counter, http: httpx.Client) -> None:
    counter.stall()
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"{counter.url}/slow", timeout=0.3)
    assert counter.handled == []
    # the next request is answered as usual
    assert http.get(f"{counter.url}/next").json() == {"path": "/next", "n": 1}


def test_nobody_listens_on_an_unused_port(http: httpx.Client) -> None:
    with pytest.raises(httpx.ConnectError):
        http.get(f"http://127.0.0.1:{unused_port()}/")
