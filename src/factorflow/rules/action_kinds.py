"""The action kinds a rules file may name, and the parameters each one cannot do without.

This is the one list the loader checks ``kind:`` against. Connectors add their kinds by passing
an extended mapping to :func:`factorflow.rules.loader.load_rules` (``extend_kinds`` builds one);
the built-in connector kinds below only require what every connector of that name needs, because
each connector validates its own settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class ActionKind:
    name: str
    required_params: tuple[str, ...] = ()
    summary: str = ""


def _kinds(*kinds: ActionKind) -> Mapping[str, ActionKind]:
    return MappingProxyType({kind.name: kind for kind in kinds})


BUILTIN_ACTION_KINDS: Mapping[str, ActionKind] = _kinds(
    # factorflow's own records
    ActionKind("audit", (), "append the decision to the audit chain"),
    ActionKind("checkpoint", ("campaign",), "mark the user's migration campaign step as done"),
    ActionKind("register", ("register",), "add an entry to an access review or exception register"),
    ActionKind("report", (), "keep the event for reporting only"),
    ActionKind("webhook", ("url", "secret"),
               "POST the fact and the rendered params, signed (Standard Webhooks), to a URL"),
    # connectors
    ActionKind("jira", (), "create a Jira issue"),
    ActionKind("servicenow", (), "create a ServiceNow record"),
    ActionKind("slack", (), "post a Slack message"),
    ActionKind("teams", (), "post a Microsoft Teams message"),
    ActionKind("email", (), "send an email"),
    ActionKind("pagerduty", (), "trigger a PagerDuty event"),
    ActionKind("okta_workflows", (), "invoke an Okta Workflows flow"),
    ActionKind("okta_group", ("group", "operation"),
               "add the user to, or remove them from, an Okta group (operation: add|remove)"),
)


def extend_kinds(
    extra: Iterable[ActionKind], base: Mapping[str, ActionKind] = BUILTIN_ACTION_KINDS
) -> Mapping[str, ActionKind]:
    """``base`` plus ``extra`` (an extra kind replaces a base kind of the same name)."""
    merged = dict(base)
    merged.update({kind.name: kind for kind in extra})
    return MappingProxyType(merged)
