"""The figures: overview, delivery gap, campaigns (with CSV export) and the audit log."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from factorflow.web.ui.reads.audit import audit_page, checked_chain
from factorflow.web.ui.reads.campaigns import CampaignView, campaign_view, write_csv
from factorflow.web.ui.reads.delivery import delivery_gap
from factorflow.web.ui.reads.overview import overview
from factorflow.web.ui.reads.window import WINDOW_DAYS, Window, window_days
from factorflow.web.ui.rendering import PREFIX
from factorflow.web.ui.sessions import Session

if TYPE_CHECKING:
    from factorflow.web.ui.dashboard import Dashboard

PENDING_PAGE = 100


def routes(dash: Dashboard) -> list[BaseRoute]:
    pages = _ReportPages(dash)
    page = dash.guard.page
    return [
        Route("/", page(pages.overview), methods=["GET"]),
        Route("/delivery", page(pages.delivery), methods=["GET"]),
        Route("/campaigns", page(pages.campaigns), methods=["GET"]),
        Route("/campaigns/{name}", page(pages.campaign), methods=["GET"]),
        Route("/campaigns/{name}/export.csv", page(pages.campaign_csv), methods=["GET"]),
        Route("/audit", page(pages.audit), methods=["GET"]),
        Route("/audit/verify", page(pages.verify), methods=["POST"]),
    ]


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 19 else None


class _ReportPages:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    def _org(self, request: Request) -> str | None:
        org = request.query_params.get("org")
        return org if org in self.dash.orgs else None

    async def overview(self, request: Request, session: Session) -> Response:
        dash = self.dash
        days = window_days(request.query_params.get("days"))
        org = self._org(request)
        figures = await dash.run(
            dash.figures.get, ("overview", days, org),
            lambda: overview(dash.reads, Window.last(days), org),
        )
        chart = {"labels": [d for d, _ in figures.per_day],
                 "values": [n for _, n in figures.per_day], "unit": "enrollments"}
        return dash.render(request, "overview.html", session, figures=figures, chart=chart,
                           days=days, window_choices=WINDOW_DAYS, org=org)

    async def delivery(self, request: Request, session: Session) -> Response:
        dash = self.dash
        days = window_days(request.query_params.get("days"))
        gap = await dash.run(
            dash.figures.get, ("delivery", days),
            lambda: delivery_gap(dash.reads, Window.last(days), dash.orgs),
        )
        return dash.render(request, "delivery.html", session, gap=gap, days=days,
                           window_choices=WINDOW_DAYS)

    async def campaigns(self, request: Request, session: Session) -> Response:
        dash = self.dash
        views = [
            await dash.run(self._view, name) for name in sorted(dash.settings.campaigns)
        ]
        return dash.render(request, "campaigns.html", session, views=views)

    def _view(self, name: str) -> CampaignView:
        dash = self.dash
        return dash.figures.get(
            ("campaign", name),
            lambda: campaign_view(dash.reads, dash.settings, name, dash.directories),
        )

    async def campaign(self, request: Request, session: Session) -> Response:
        dash = self.dash
        name = request.path_params["name"]
        if name not in dash.settings.campaigns:
            return dash.render(request, "not_found.html", session, status_code=404,
                               what=f"No campaign named {name!r} is configured.")
        view = await dash.run(self._view, name)
        after = request.query_params.get("after") or ""
        pending = [m for m in view.pending if m.label.casefold() > after.casefold()]
        chart = {"labels": [d for d, _, _ in view.over_time],
                 "values": [p for _, _, p in view.over_time],
                 "unit": "% complete", "max": 100, "kind": "line"}
        return dash.render(
            request, "campaign.html", session, view=view, chart=chart,
            pending=pending[:PENDING_PAGE],
            next_after=pending[PENDING_PAGE - 1].label if len(pending) > PENDING_PAGE else None,
        )

    async def campaign_csv(self, request: Request, session: Session) -> Response:
        dash = self.dash
        name = request.path_params["name"]
        if name not in dash.settings.campaigns:
            return Response(f"no campaign named {name!r} is configured\n", status_code=404,
                            media_type="text/plain")
        # Fresh figures: an export is a record, not a glance.
        view = await dash.run(campaign_view, dash.reads, dash.settings, name, dash.directories)
        out = io.StringIO()
        write_csv(view, out)
        filename = re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".csv"
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
            "content-disposition": f'attachment; filename="{filename}"',
        })

    async def audit(self, request: Request, session: Session) -> Response:
        dash = self.dash
        params = request.query_params
        page = await dash.run(lambda: audit_page(
            dash.reads, before_seq=_int(params.get("before")), after_seq=_int(params.get("after"))
        ))
        chain = await dash.run(checked_chain, dash.reads, dash.audit_checks)
        return dash.render(request, "audit.html", session, page=page, chain=chain,
                           verified=params.get("verified") == "1")

    async def verify(self, _request: Request, _session: Session) -> Response:
        dash = self.dash
        await dash.run(lambda: checked_chain(dash.reads, dash.audit_checks, fresh=True))
        return RedirectResponse(f"{PREFIX}/audit?verified=1", status_code=303)
