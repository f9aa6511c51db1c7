"""The connector registry: the built-ins plus third-party connectors that a package declares
in the ``factorflow.connectors`` entry-point group. Only configured connectors are built."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

import httpx
from pydantic import ValidationError

from factorflow.actions.base import ActionHandler
from factorflow.connectors.base import Clock, ConnectorFactory, utc_now
from factorflow.errors import ConfigError

ENTRY_POINT_GROUP = "factorflow.connectors"

# kind -> "module:attribute" of its factory; imported only when configured.
BUILTIN: dict[str, str] = {
    "jira": "factorflow.connectors.jira:FACTORY",
    "servicenow": "factorflow.connectors.servicenow:FACTORY",
    "slack": "factorflow.connectors.slack:FACTORY",
    "teams": "factorflow.connectors.teams:FACTORY",
    "email": "factorflow.connectors.email:FACTORY",
    "pagerduty": "factorflow.connectors.pagerduty:FACTORY",
    "okta_workflows": "factorflow.connectors.okta_workflows:FACTORY",
}


def available() -> dict[str, str]:
    """Every connector kind that can be configured, and where its factory lives."""
    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def load_factory(kind: str) -> ConnectorFactory:
    target = available().get(kind)
    if target is None:
        known = ", ".join(sorted(available()))
        raise ConfigError(f"connectors.{kind}: unknown connector (known: {known})")
    module_name, _, attribute = target.partition(":")
    try:
        factory: ConnectorFactory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"connectors.{kind}: cannot load {target}: {exc}") from None
    return factory


def build_connectors(
    sections: Mapping[str, Mapping[str, Any]], http: httpx.Client, clock: Clock = utc_now
) -> list[ActionHandler]:
    """One handler per configured section; ConfigError names ``connectors.<kind>.<key>``."""
    handlers = []
    for kind, raw in sections.items():
        factory = load_factory(kind)
        try:
            settings = factory.settings_model.model_validate(dict(raw))
        except ValidationError as exc:
            problems = [
                f"connectors.{kind}.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
                for error in exc.errors(include_input=False, include_url=False)
            ]
            raise ConfigError("invalid connector settings:\n  " + "\n  ".join(problems)) from None
        handlers.append(factory.create(settings, http, clock))
    return handlers
