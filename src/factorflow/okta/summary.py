"""A one-line reading of a stored event for listings: who, and which factor if known.

The full normalisation into an Enrollment fact belongs to the pipeline; this only reads the
places Okta documents, in the documented order, and never fails on an odd shape.
"""

from __future__ import annotations

import re
from typing import Any

_REASON_FACTOR = re.compile(
    r"User (?:set up|reset|suspended|unsuspended|updated) (?P<factor>[A-Za-z0-9_:]+) factor"
)


def targets_of_type(event: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Targets are an array whose order is not stable: look them up by ``type``."""
    targets = event.get("target")
    if not isinstance(targets, list):
        return []
    return [t for t in targets if isinstance(t, dict) and t.get("type") == kind]


def user_of(event: dict[str, Any]) -> str | None:
    for target in targets_of_type(event, "User"):
        name = target.get("alternateId") or target.get("id")
        if isinstance(name, str) and name:
            return name
    actor = event.get("actor")
    if isinstance(actor, dict):
        name = actor.get("alternateId") or actor.get("id")
        if isinstance(name, str) and name:
            return name
    return None


def factor_of(event: dict[str, Any]) -> str | None:
    outcome = event.get("outcome")
    reason = outcome.get("reason") if isinstance(outcome, dict) else None
    if isinstance(reason, str):
        match = _REASON_FACTOR.search(reason)
        if match:
            return match.group("factor")
    for target in targets_of_type(event, "AuthenticatorEnrollment"):
        name = target.get("displayName")
        detail = target.get("detailEntry")
        method = detail.get("methodTypeUsed") if isinstance(detail, dict) else None
        if isinstance(name, str) and name:
            return f"{name} ({method})" if isinstance(method, str) and method else name
    debug = event.get("debugContext")
    data = debug.get("debugData") if isinstance(debug, dict) else None
    factor = data.get("factor") if isinstance(data, dict) else None
    return factor if isinstance(factor, str) and factor else None
