"""A local Okta org for development and tests: the management API, OpenID Connect authorization
servers (sign-in with Okta) and an event hook sender.

::

    org = generate_org(users=50, seed=1)
    org.generate_enrollments(20)                    # System Log events + org state
    simulator = OktaSimulator(org, SimulatorConfig(api_tokens=("test-token",)))
    with ThreadedServer(simulator.app) as server:   # or: factorflow simulate serve
        ...                                          # OktaClient(org_url=server.base_url, ...)
    HookSender(url, secret=...).send(subscribed(org.events()), SendOptions(drop=0.1))

The names are imported on first use, so that the command line can load the ``simulate`` command
without Starlette, PyJWT and httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from factorflow.okta.simulator.app import (
        OAuthApp,
        OktaSimulator,
        RequestRecord,
        SimulatorConfig,
        TokenRequest,
    )
    from factorflow.okta.simulator.clock import ManualClock, WallClock
    from factorflow.okta.simulator.constants import ALL_SCOPES, DEFAULT_HOOK_EVENT_TYPES
    from factorflow.okta.simulator.oidc import AuthorizationServers, OidcApp, OidcRequest
    from factorflow.okta.simulator.org import (
        HELPDESK_GROUP,
        KINDS,
        PRIVILEGED_GROUP,
        SimGroup,
        SimOrg,
        SimUser,
        generate_org,
    )
    from factorflow.okta.simulator.sender import (
        HookSender,
        SendFailed,
        SendOptions,
        SendSummary,
        subscribed,
    )
    from factorflow.okta.simulator.server import ThreadedServer

_WHERE = {
    "OAuthApp": "app", "OktaSimulator": "app", "RequestRecord": "app",
    "SimulatorConfig": "app", "TokenRequest": "app",
    "ManualClock": "clock", "WallClock": "clock",
    "ALL_SCOPES": "constants", "DEFAULT_HOOK_EVENT_TYPES": "constants",
    "AuthorizationServers": "oidc", "OidcApp": "oidc", "OidcRequest": "oidc",
    "HELPDESK_GROUP": "org", "KINDS": "org", "PRIVILEGED_GROUP": "org", "SimGroup": "org",
    "SimOrg": "org", "SimUser": "org", "generate_org": "org",
    "HookSender": "sender", "SendFailed": "sender", "SendOptions": "sender",
    "SendSummary": "sender", "subscribed": "sender",
    "ThreadedServer": "server",
}

__all__ = [
    "ALL_SCOPES",
    "DEFAULT_HOOK_EVENT_TYPES",
    "HELPDESK_GROUP",
    "KINDS",
    "PRIVILEGED_GROUP",
    "AuthorizationServers",
    "HookSender",
    "ManualClock",
    "OAuthApp",
    "OidcApp",
    "OidcRequest",
    "OktaSimulator",
    "RequestRecord",
    "SendFailed",
    "SendOptions",
    "SendSummary",
    "SimGroup",
    "SimOrg",
    "SimUser",
    "SimulatorConfig",
    "ThreadedServer",
    "TokenRequest",
    "WallClock",
    "generate_org",
    "subscribed",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
