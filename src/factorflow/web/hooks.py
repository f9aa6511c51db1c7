"""The Okta Event Hook endpoint, written against raw ASGI: it is the hot path.

Order of checks: method, credential (401 before anything is read), content type and content
coding (415), size (413), envelope (400). Then the events are committed durably through the
group committer and only then acknowledged with 204; if the commit failed we answer 503 so Okta
retries once.
No outbound call is made while Okta waits.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from factorflow.errors import RejectedDelivery, StoreUnavailable
from factorflow.secrets_source import HookCredentials
from factorflow.store.intake import Intake
from factorflow.web.metrics import ReceiverMetrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHALLENGE_HEADER = b"x-okta-verification-challenge"
MAX_CHALLENGE_LENGTH = 1024
# A client that trickles its body (slow-loris) holds a connection; Okta itself gives up on a
# delivery after 3 s, so a body that takes longer than this is not Okta's.
BODY_TIMEOUT_SECONDS = 10.0
RESULT_HEADER = b"factorflow-result"


class HookEndpoint:
    def __init__(
        self,
        *,
        org: str,
        credentials: HookCredentials,
        intake: Intake,
        metrics: ReceiverMetrics,
        max_body_bytes: int,
    ) -> None:
        self.org = org
        self.header_name = credentials.header
        self._header = credentials.header.lower().encode("latin-1")
        self._accepted = credentials.accepted
        self._intake = intake
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._counts = metrics.org(org)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method = scope["method"]
        if method not in ("GET", "POST"):
            await _respond(send, 405, _error("method_not_allowed", "use GET or POST"),
                           extra=[(b"allow", b"GET, POST")])
            self._metrics.rejected.labels(self.org, "method").inc()
            return
        headers = _headers(scope)
        if not self._authenticated(headers.get(self._header)):
            self._metrics.rejected.labels(self.org, "auth").inc()
            client = scope.get("client")
            log.warning(
                "hook.auth_failed",
                extra={"fields": {
                    "org": self.org, "method": method,
                    "credential_present": self._header in headers,
                    "client": client[0] if client else None,
                }},
            )
            await _respond(send, 401, _error("unauthorized", "authentication required"))
            return
        if method == "GET":
            await self._verify(headers.get(CHALLENGE_HEADER), send)
            return
        try:
            await self._deliver(headers, receive, send, started)
        except RejectedDelivery as rejected:
            self._metrics.rejected.labels(self.org, rejected.code).inc()
            log.info("hook.rejected", extra={"fields": {
                "org": self.org, "status": rejected.status, "reason": rejected.code,
                "detail": rejected.message,
            }})
            await _respond(send, rejected.status, _error(rejected.code, rejected.message))

    def _authenticated(self, presented: bytes | None) -> bool:
        if presented is None:
            return False
        # Compare against every accepted value, without stopping early, in constant time.
        matched = False
        for accepted in self._accepted:
            matched |= hmac.compare_digest(presented, accepted)
        return matched

    async def _verify(self, challenge: bytes | None, send: Send) -> None:
        if not challenge:
            self._metrics.rejected.labels(self.org, "no_challenge").inc()
            await _respond(send, 400, _error(
                "missing_challenge",
                "GET is Okta's one-time verification request and needs the "
                "X-Okta-Verification-Challenge header; deliveries are POSTs",
            ))
            return
        if len(challenge) > MAX_CHALLENGE_LENGTH:
            self._metrics.rejected.labels(self.org, "bad_challenge").inc()
            await _respond(send, 400, _error("bad_challenge", "verification challenge too long"))
            return
        self._metrics.verifications.labels(self.org).inc()
        log.info("hook.verified", extra={"fields": {"org": self.org}})
        body = orjson.dumps({"verification": challenge.decode("latin-1")})
        await _respond(send, 200, body)

    async def _deliver(
        self, headers: dict[bytes, bytes], receive: Receive, send: Send, started: float
    ) -> None:
        _check_content_type(headers.get(b"content-type"))
        encoding = headers.get(b"content-encoding")
        if encoding is not None:
            _check_content_encoding(encoding)
        task = asyncio.current_task()
        assert task is not None
        _SLOW_BODIES.watch(task)
        try:
            body = await _read_body(headers, receive, self._max_body)
        except asyncio.CancelledError:
            if not _SLOW_BODIES.timed_out(task):
                raise
            raise RejectedDelivery(
                408, "body_timeout", f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s"
            ) from None
        finally:
            _SLOW_BODIES.forget(task)
        try:
            stored = await self._intake.store(self.org, time.time(), body)
        except StoreUnavailable as exc:
            self._metrics.rejected.labels(self.org, "store_unavailable").inc()
            log.error("hook.store_failed", extra={"fields": {
                "org": self.org, "error": str(exc),
            }})
            await _respond(send, 503, _error(
                "store_unavailable", "events could not be stored; retry later"
            ), extra=[(b"retry-after", b"1")])
            return
        outcome = stored.outcome
        counts = (outcome.new, outcome.duplicate, outcome.quarantined)
        result = _RESULTS.get(counts)
        if result is None:
            result = _result_header(*counts)
        await send({
            "type": "http.response.start",
            "status": 204,
            "headers": [(RESULT_HEADER, result)],
        })
        await send({"type": "http.response.body", "body": b""})
        self._counts.acknowledged(
            outcome.new, outcome.duplicate, outcome.quarantined, time.perf_counter() - started
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("hook.stored", extra={"fields": {
                "org": self.org, "delivery_id": stored.delivery_id, "result": result.decode(),
            }})
        if outcome.quarantined:
            log.warning("hook.quarantined", extra={"fields": {
                "org": self.org, "delivery_id": stored.delivery_id,
                "count": outcome.quarantined,
            }})


class _SlowBodyWatch:
    """Ends body reads that take longer than BODY_TIMEOUT_SECONDS.

    One timer per second for all requests, instead of one ``asyncio.timeout`` per request
    (which costs a timer handle, a heap push and a cancel on every delivery): a request
    registers its task while it reads the body; the sweep cancels the tasks past their
    deadline and remembers them, so the reader can tell its timeout from any other
    cancellation. A deadline is therefore kept to within a second.
    """

    def __init__(self, limit_seconds: float, sweep_every: float = 1.0) -> None:
        self._limit = limit_seconds
        self._every = sweep_every
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, task: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run several in turn): start over
            self._deadlines.clear()
            self._expired.clear()
            self._loop = loop
            self._timer = None
        self._deadlines[task] = time.monotonic() + self._limit
        if self._timer is None:
            self._timer = loop.call_later(self._every, self._sweep)

    def forget(self, task: asyncio.Task[Any]) -> None:
        self._deadlines.pop(task, None)
        self._expired.discard(task)  # swept just as its body arrived: hold no reference

    def timed_out(self, task: asyncio.Task[Any]) -> bool:
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()  # this cancellation was ours and ends here, as a 408
        return True

    def _sweep(self) -> None:
        now = time.monotonic()
        late = [task for task, deadline in self._deadlines.items() if deadline <= now]
        for task in late:
            del self._deadlines[task]
            if not task.done():
                self._expired.add(task)
                task.cancel()
        self._timer = (
            self._loop.call_later(self._every, self._sweep)
            if self._deadlines and self._loop is not None else None
        )


# Module-level: one event loop serves every endpoint of a process.
_SLOW_BODIES = _SlowBodyWatch(BODY_TIMEOUT_SECONDS)


def _result_header(new: int, duplicate: int, quarantined: int) -> bytes:
    value = f"new={new} duplicate={duplicate} quarantined={quarantined}".encode()
    if new + duplicate + quarantined <= 4:  # the common small deliveries: built once
        _RESULTS[new, duplicate, quarantined] = value
    return value


_RESULTS: dict[tuple[int, int, int], bytes] = {}


def _headers(scope: Scope) -> dict[bytes, bytes]:
    # ASGI servers give lower-cased names; the first occurrence wins.
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name, value)
    return found


def _check_content_type(value: bytes | None) -> None:
    media_type = (value or b"").split(b";", 1)[0].strip().lower()
    if media_type != b"application/json":
        shown = media_type.decode("latin-1")[:60] or "none"
        raise RejectedDelivery(
            415, "unsupported_media_type",
            f"Content-Type must be application/json (got {shown})",
        )


def _check_content_encoding(value: bytes) -> None:
    # Okta sends its JSON uncompressed; a compressed body would otherwise be refused as
    # "not valid JSON", which says nothing about the cause.
    coding = value.strip().lower()
    if coding not in (b"", b"identity"):
        shown = coding.decode("latin-1")[:60]
        raise RejectedDelivery(
            415, "unsupported_encoding",
            f"Content-Encoding {shown} is not supported: send the JSON uncompressed",
        )


async def _read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise RejectedDelivery(400, "bad_length", "Content-Length is not a number") from None
        if declared_size > limit:
            raise RejectedDelivery(
                413, "too_large", f"body of {declared_size} bytes exceeds the limit of {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RejectedDelivery(400, "client_disconnected", "client went away mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RejectedDelivery(413, "too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": code, "message": message})


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
