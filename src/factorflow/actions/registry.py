"""Which handler performs which action kind."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import httpx
from pydantic import SecretStr

from factorflow.actions.audit import AuditHandler
from factorflow.actions.base import ActionHandler, ActionStore, Clock, utc_now
from factorflow.actions.checkpoint import CheckpointHandler
from factorflow.actions.register import RegisterHandler
from factorflow.actions.report import ReportHandler
from factorflow.actions.webhook import WebhookHandler
from factorflow.domain.actions import ActionOutcome, ActionRequest
from factorflow.domain.facts import Fact
from factorflow.errors import PermanentActionError

BUILTIN_KINDS = ("audit", "checkpoint", "register", "report", "webhook")
DEFAULT_KIND = "report"
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class ActionRegistry(Mapping[str, ActionHandler]):
    """Handlers by kind (a read-only mapping); connectors add theirs with :meth:`add`."""

    def __init__(self, handlers: Iterable[ActionHandler] = (), *,
                 http: httpx.Client | None = None) -> None:
        self._handlers: dict[str, ActionHandler] = {}
        self._http = http  # closed by close(), if the registry made it
        for handler in handlers:
            self.add(handler)

    def add(self, handler: ActionHandler) -> None:
        if handler.kind in self._handlers:
            raise ValueError(f"a handler for action kind {handler.kind!r} is already registered")
        self._handlers[handler.kind] = handler

    def kinds(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def __getitem__(self, kind: str) -> ActionHandler:
        return self._handlers[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)

    def handler(self, kind: str) -> ActionHandler:
        try:
            return self._handlers[kind]
        except KeyError:
            known = ", ".join(sorted(self._handlers))
            raise PermanentActionError(
                f"no handler for action kind {kind!r} (known: {known})"
            ) from None

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        return self.handler(request.kind).perform(request, fact)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


def builtin_registry(
    store: ActionStore, *, webhook_secrets: Mapping[str, SecretStr] | None = None,
    http: httpx.Client | None = None, clock: Clock = utc_now,
) -> ActionRegistry:
    """The five built-in handlers over ``store``. Without ``http`` a client with timeouts is
    made (and closed by ``close()``). Raises ConfigError for a malformed webhook secret."""
    owned = None
    if http is None:
        http = owned = httpx.Client(
            timeout=HTTP_TIMEOUT, follow_redirects=False,
            headers={"user-agent": "factorflow-webhook"},
        )
    try:
        handlers: list[ActionHandler] = [
            AuditHandler(store, clock),
            CheckpointHandler(store, clock),
            RegisterHandler(store, clock),
            ReportHandler(),
            WebhookHandler(store, http, webhook_secrets or {}, clock),
        ]
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return ActionRegistry(handlers, http=owned)
