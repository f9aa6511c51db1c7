"""The event list and the event page."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from factorflow.web.ui.reads.event_page import event_view
from factorflow.web.ui.reads.events import (
    ENROLLED_BY,
    FACTOR_TYPES,
    OUTCOMES,
    EventFilter,
    Position,
    list_events,
)
from factorflow.web.ui.sessions import Session

if TYPE_CHECKING:
    from factorflow.web.ui.dashboard import Dashboard

FILTER_KEYS = ("q", "org", "since", "until", "factor", "enrolled_by", "rule", "outcome",
               "provenance")
MAX_TEXT = 200


def routes(dash: Dashboard) -> list[BaseRoute]:
    pages = _EventPages(dash)
    return [
        Route("/events", dash.guard.page(pages.list), methods=["GET"]),
        Route("/events/{uuid}", dash.guard.page(pages.detail), methods=["GET"]),
    ]


def _day(value: str | None, *, end: bool = False) -> tuple[str | None, str | None]:
    """A ``YYYY-MM-DD`` form value as the start of that day (or of the next, for ``end``),
    and a problem to show if it is not a date."""
    if not value:
        return None, None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None, f"{value[:20]!r} is not a date (YYYY-MM-DD); it was ignored"
    if end:
        day += timedelta(days=1)
    return f"{day.isoformat()}T00:00:00.000000Z", None


class _EventPages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def list(self, request: Request, session: Session) -> Response:
        dash = self.dash
        params = {key: request.query_params.get(key, "").strip()[:MAX_TEXT]
                  for key in FILTER_KEYS}
        since, since_problem = _day(params["since"])
        until, until_problem = _day(params["until"], end=True)
        flt = EventFilter(
            q=params["q"] or None, org=params["org"] or None, since=since, until=until,
            factor=params["factor"] or None, enrolled_by=params["enrolled_by"] or None,
            rule=params["rule"] or None, outcome=params["outcome"] or None,
            provenance=params["provenance"] or None,
        )
        older = Position.parse(request.query_params.get("older"))
        newer = Position.parse(request.query_params.get("newer"))
        page = await dash.run(lambda: list_events(dash.reads, flt, older_than=older,
                                                  newer_than=newer))
        return dash.render(
            request, "events.html", session, page=page, filters=params,
            problems=[p for p in (since_problem, until_problem) if p],
            factor_types=FACTOR_TYPES, enrolled_by_values=ENROLLED_BY, outcomes=OUTCOMES,
            filtered=flt.active(),
        )

    async def detail(self, request: Request, session: Session) -> Response:
        dash = self.dash
        uuid = request.path_params["uuid"][:MAX_TEXT]
        view = await dash.run(event_view, dash.reads, uuid)
        if view is None:
            return dash.render(request, "not_found.html", session, status_code=404,
                               what=f"No event with uuid {uuid} is stored.")
        return dash.render(request, "event.html", session, event=view)
