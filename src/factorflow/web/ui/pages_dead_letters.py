"""Dead letters: the list, one letter, and retry / discard (operators only, confirmed first,
recorded in the audit log under the signed-in user).

Retry goes through the workflow engine exactly as ``factorflow dlq retry`` does: the letter
moves to ``retrying`` and a retry workflow is enqueued; whichever worker runs (the one inside
``factorflow serve`` by default) carries it out and marks the letter ``resolved`` on success.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from factorflow.actions.audit import record_audit
from factorflow.store.pipeline_sql import SqlPipelineLedger
from factorflow.web.ui.reads.dead_letters import STATUSES, get_dead_letter, list_dead_letters
from factorflow.web.ui.rendering import PREFIX
from factorflow.web.ui.sessions import OPERATOR, Session

if TYPE_CHECKING:
    from factorflow.web.ui.dashboard import Dashboard

log = logging.getLogger(__name__)

# What a finished action reports back (the ``done`` query value): a fixed text each, so no
# request-supplied text is ever shown.
NOTICES = {
    "retried": "Retry enqueued: a worker will run the action again with the same "
               "idempotency key.",
    "discarded": "Dead letter discarded: the action will not be retried.",
    "not_open": "Nothing was changed: the dead letter is no longer open.",
    "not_enqueued": "Nothing was changed: the retry could not be handed to the workflow "
                    "engine (is its database reachable, and has a worker started once?). "
                    "Try again later.",
}


def routes(dash: Dashboard) -> list[BaseRoute]:
    pages = _DeadLetterPages(dash)
    page = dash.guard.page
    return [
        Route("/dead-letters", page(pages.list), methods=["GET"]),
        Route("/dead-letters/{id:int}", page(pages.detail), methods=["GET"]),
        Route("/dead-letters/{id:int}/status.json", page(pages.status), methods=["GET"]),
        Route("/dead-letters/{id:int}/{verb:str}", page(pages.confirm, role=OPERATOR),
              methods=["GET"]),
        Route("/dead-letters/{id:int}/{verb:str}", page(pages.act, role=OPERATOR),
              methods=["POST"]),
    ]


def _id(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 19 else None


class _DeadLetterPages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def list(self, request: Request, session: Session) -> Response:
        dash = self.dash
        params = request.query_params
        status = params.get("status", "open")
        if status not in (*STATUSES, "all"):
            status = "open"
        page = await dash.run(lambda: list_dead_letters(
            dash.reads, None if status == "all" else status,
            before_id=_id(params.get("before")), after_id=_id(params.get("after")),
        ))
        return dash.render(request, "dead_letters.html", session, page=page, status=status,
                           statuses=(*STATUSES, "all"))

    async def detail(self, request: Request, session: Session) -> Response:
        dash = self.dash
        letter = await dash.run(get_dead_letter, dash.reads, request.path_params["id"])
        if letter is None:
            return self._missing(request, session)
        done = request.query_params.get("done")
        return dash.render(request, "dead_letter.html", session, letter=letter,
                           notice=NOTICES.get(done or ""), notice_kind=done)

    def _missing(self, request: Request, session: Session) -> Response:
        return self.dash.render(request, "not_found.html", session, status_code=404,
                                what=f"No dead letter #{request.path_params['id']}.")

    def _unknown_verb(self, request: Request, session: Session) -> Response:
        # Not "no dead letter #N": the letter may well exist, the action is what is unknown.
        return self.dash.render(
            request, "not_found.html", session, status_code=404,
            what=f"Dead letters can be retried or discarded, not "
                 f"{request.path_params['verb'][:40]!r}.")

    async def status(self, request: Request, _session: Session) -> Response:
        letter = await self.dash.run(get_dead_letter, self.dash.reads, request.path_params["id"])
        if letter is None:
            return JSONResponse({"error": "not_found",
                                 "message": f"no dead letter #{request.path_params['id']}"},
                                status_code=404)
        return JSONResponse({"id": letter.id, "status": letter.status,
                             "retries": letter.retries, "resolved_at": letter.resolved_at,
                             "resolved_by": letter.resolved_by})

    async def confirm(self, request: Request, session: Session) -> Response:
        dash = self.dash
        verb = request.path_params["verb"]
        if verb not in ("retry", "discard"):
            return self._unknown_verb(request, session)
        letter = await dash.run(get_dead_letter, dash.reads, request.path_params["id"])
        if letter is None:
            return self._missing(request, session)
        return dash.render(request, "dead_letter_confirm.html", session, letter=letter,
                           verb=verb)

    async def act(self, request: Request, session: Session) -> Response:
        dash = self.dash
        verb = request.path_params["verb"]
        letter_id = request.path_params["id"]
        if verb not in ("retry", "discard"):
            return self._unknown_verb(request, session)
        if await dash.run(get_dead_letter, dash.reads, letter_id) is None:
            return self._missing(request, session)
        work = self._retry if verb == "retry" else self._discard
        try:
            changed = await dash.run(work, letter_id, session.user)
        except Exception:  # the workflow engine's database: the letter was put back
            log.exception("ui.dead_letter_retry_failed", extra={"fields": {
                "dead_letter_id": letter_id, "user": session.user,
            }})
            return RedirectResponse(f"{PREFIX}/dead-letters/{letter_id}?done=not_enqueued",
                                    status_code=303)
        done = ("retried" if verb == "retry" else "discarded") if changed else "not_open"
        return RedirectResponse(f"{PREFIX}/dead-letters/{letter_id}?done={done}",
                                status_code=303)

    def _retry(self, letter_id: int, who: str) -> bool:
        from factorflow.workflows.client import WorkflowClient

        dash = self.dash
        ledger = SqlPipelineLedger(dash.store)
        client = WorkflowClient(dash.settings, ledger)
        try:
            workflow_id = client.retry_dead_letter(letter_id, who)
        except Exception:
            # Not enqueued: put the letter back so it can be retried again.
            ledger.resolve_dead_letter(letter_id, "open", who)
            raise
        finally:
            client.close()
        if workflow_id is None:
            return False
        record_audit(dash.store, "dead_letter.retry", f"dead letter #{letter_id} retried",
                     {"via": "dashboard", "workflow_id": workflow_id}, who)
        log.info("ui.dead_letter_retried", extra={"fields": {
            "dead_letter_id": letter_id, "user": who, "workflow_id": workflow_id,
        }})
        return True

    def _discard(self, letter_id: int, who: str) -> bool:
        dash = self.dash
        if not SqlPipelineLedger(dash.store).resolve_dead_letter(letter_id, "discarded", who):
            return False
        record_audit(dash.store, "dead_letter.discard", f"dead letter #{letter_id} discarded",
                     {"via": "dashboard"}, who)
        log.info("ui.dead_letter_discarded", extra={"fields": {
            "dead_letter_id": letter_id, "user": who,
        }})
        return True
