"""Jinja2 templates (autoescaped) and the filters they use."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse

PREFIX = "/ui"


def _number(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"
    return "" if value is None else str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 0:  # an event received before Okta published it: a clock behind Okta's
        return "\N{MINUS SIGN}" + _seconds(-value)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} %"


def _when(value: str | None) -> str:
    """The store's ``2026-03-15T10:00:00.000000Z`` as ``2026-03-15 10:00:00 UTC``."""
    if not value:
        return "—"
    return f"{value[:10]} {value[11:19]} UTC" if len(value) >= 19 and value[10] == "T" else value


def _pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _chart_json(value: Any) -> Markup:
    """JSON for a ``<script type="application/json">`` block: '<', '>' and '&' escaped so
    the text cannot close the element."""
    text = orjson.dumps(value).decode()
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)  # noqa: S704 (escaped above for its one place: a JSON script block)


def _query(params: dict[str, Any], **changes: Any) -> str:
    """A query string from ``params`` with ``changes`` applied (None drops a key)."""
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


class Templates:
    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("factorflow.web.ui", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update({
            "number": _number, "seconds": _seconds, "percent": _percent, "when": _when,
            "pretty_json": _pretty_json, "chart_json": _chart_json,
        })
        self.env.globals.update({"prefix": PREFIX, "query": _query})

    def render(self, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status_code)
