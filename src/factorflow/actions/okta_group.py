"""The ``okta_group`` action: add the event's user to an Okta group, or remove them.

::

    actions:
      - kind: okta_group
        params: {group: Privileged Access, operation: remove}   # or a group id, 00g...

Uses the org's Okta client (``[okta]`` / ``[orgs.<name>.okta]``), which needs the scope
``okta.groups.manage`` (plus ``okta.users.read`` to check membership, ``okta.groups.read`` to
find a group by name) and an admin role that may manage the group.

Idempotent: membership is checked first (``GET /api/v1/users/{id}/groups``); a user who is
already a member (``add``) or not a member (``remove``) gives ``already_done`` and no change,
so no System Log event either. Okta's own ``PUT``/``DELETE`` are idempotent as well, so a crash
between the change and its record cannot do harm.

The change writes ``group.user_membership.add`` / ``.remove`` to the System Log with
factorflow's service app (or the API token's admin) as actor. The System Log reconciler never
reads those event types, and if the hook subscribes to them, ``pipeline.own_actor_ids`` must list
the service app's client id (or the API token's service account) so that screening drops them
(the loop guard).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from factorflow.actions.base import required_text, where
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import PermanentActionError

if TYPE_CHECKING:
    from factorflow.okta.api import OktaClient

KIND = "okta_group"
OPERATIONS = ("add", "remove")
GROUP_ID = re.compile(r"^00g[A-Za-z0-9]{17}$")
NAME_CACHE_SECONDS = 600.0


class OktaGroupHandler:
    kind = KIND

    def __init__(
        self, clients: Mapping[str, OktaClient], *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._clock = clock
        self._names: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        client = self._clients.get(fact.org)
        if client is None:
            raise PermanentActionError(
                f"{where(request)}: org {fact.org} has no [okta] settings (okta_group needs "
                "the Okta API)"
            )
        operation = required_text(request, "operation").lower()
        if operation not in OPERATIONS:
            raise PermanentActionError(
                f"{where(request)}: params.operation must be add or remove, got {operation!r}"
            )
        group = required_text(request, "group")
        user_id = self._user_id(client, request, fact)
        group_id = self._group_id(client, request, fact.org, group)
        member = client.is_member(group_id, user_id)
        reference = f"{group_id}/{user_id}"
        if member == (operation == "add"):
            state = "already a member of" if member else "not a member of"
            return ActionOutcome(OutcomeStatus.ALREADY_DONE,
                                 f"user {user_id} is {state} group {group}", reference)
        if operation == "add":
            client.add_user_to_group(group_id, user_id)
            detail = f"added user {user_id} to group {group}"
        else:
            client.remove_user_from_group(group_id, user_id)
            detail = f"removed user {user_id} from group {group}"
        return ActionOutcome(OutcomeStatus.DONE, detail, reference)

    def _user_id(self, client: OktaClient, request: ActionRequest, fact: Fact) -> str:
        user = fact.user
        if user is not None and user.id:
            return user.id
        if user is not None and user.login:
            found = client.get_user(user.login)
            if found is not None and found.get("id"):
                return str(found["id"])
            raise PermanentActionError(f"{where(request)}: Okta has no user {user.login}")
        raise PermanentActionError(f"{where(request)}: the event names no user")

    def _group_id(self, client: OktaClient, request: ActionRequest, org: str, group: str) -> str:
        if GROUP_ID.match(group):
            return group
        now = self._clock()
        with self._lock:
            cached = self._names.get((org, group))
        if cached is not None and now < cached[1]:
            return cached[0]
        found = client.find_groups(group)
        exact = [g for g in found if _name(g) == group]
        matches = exact or [g for g in found if _name(g).casefold() == group.casefold()]
        ids = sorted({str(g.get("id")) for g in matches if g.get("id")})
        if not ids:
            raise PermanentActionError(f"{where(request)}: Okta has no group named {group!r}")
        if len(ids) > 1:
            raise PermanentActionError(
                f"{where(request)}: {len(ids)} Okta groups are named {group!r} "
                f"({', '.join(ids)}); give the group id"
            )
        with self._lock:
            self._names[(org, group)] = (ids[0], now + NAME_CACHE_SECONDS)
        return ids[0]


def _name(group: Mapping[str, object]) -> str:
    profile = group.get("profile")
    name = profile.get("name") if isinstance(profile, Mapping) else None
    return name if isinstance(name, str) else ""
