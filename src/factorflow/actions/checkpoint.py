"""The ``checkpoint`` action: mark a user complete in a named migration campaign.

One row per (campaign, user id), the primary key: the first event that completes a user wins,
and any later request for the same user (the same request replayed, or another enrollment)
answers ALREADY_DONE. The insert and its check are one statement, so concurrent workers agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from factorflow.actions.base import (
    ActionStore,
    OwnRowHandler,
    required_text,
    store_errors_are_transient,
    where,
)
from factorflow.domain.actions import ActionOutcome, ActionRequest
from factorflow.domain.facts import Fact
from factorflow.errors import PermanentActionError
from factorflow.okta.payloads import format_utc

_INSERT = (
    "INSERT INTO campaign_checkpoints (campaign, user_id, user_login, completed_at, "
    "recorded_at, event_uuid, factor_type, factor_strength, rule_id, idempotency_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (campaign, user_id) DO NOTHING"
)
_PROGRESS = (
    "SELECT campaign, user_id, user_login, completed_at, recorded_at, event_uuid, factor_type, "
    "factor_strength, rule_id, idempotency_key FROM campaign_checkpoints WHERE campaign = ? "
    "ORDER BY completed_at, user_id"
)


@dataclass(frozen=True, slots=True)
class Completion:
    campaign: str
    user_id: str
    user_login: str | None
    completed_at: str  # when the completing event was published (UTC, ISO 8601)
    recorded_at: str  # when factorflow recorded it
    event_uuid: str
    factor_type: str
    factor_strength: str
    rule_id: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class CampaignProgress:
    campaign: str
    completed: tuple[Completion, ...]  # oldest completion first

    @property
    def count(self) -> int:
        return len(self.completed)

    def user_ids(self) -> set[str]:
        return {c.user_id for c in self.completed}


class CheckpointHandler(OwnRowHandler):
    """``kind: checkpoint``. Params: ``campaign`` (required, the campaign's name)."""

    kind = "checkpoint"

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        campaign = required_text(request, "campaign")
        if fact.user is None or not fact.user.id:
            raise PermanentActionError(
                f"{where(request)}: event {fact.uuid} names no user, so no campaign checkpoint"
            )
        user_id = fact.user.id
        recorded_at = format_utc(self._clock())
        with store_errors_are_transient(request), self._store.write() as cur:
            cur.execute(
                _INSERT,
                (
                    campaign, user_id, fact.user.login, fact.published_at or recorded_at,
                    recorded_at, fact.uuid, fact.factor.type, fact.factor.strength.value,
                    request.rule_id, request.idempotency_key,
                ),
            )
            inserted = cur.rowcount == 1
            detail = f"user {user_id} completed campaign {campaign!r}"
            if not inserted:
                first_at, first_event = cur.execute(
                    "SELECT completed_at, event_uuid FROM campaign_checkpoints "
                    "WHERE campaign = ? AND user_id = ?",
                    (campaign, user_id),
                ).fetchone()
                detail = (f"user {user_id} already completed campaign {campaign!r} at "
                          f"{first_at} (event {first_event})")
        return self.outcome(inserted, detail, reference=f"{campaign}/{user_id}")


def campaign_progress(store: ActionStore, campaign: str) -> CampaignProgress:
    """Every user who completed ``campaign``, oldest completion first."""
    rows = store.read(_PROGRESS, (campaign,))
    return CampaignProgress(campaign, tuple(Completion(*row) for row in rows))


def campaigns(store: ActionStore) -> dict[str, int]:
    """Each campaign with recorded progress, and how many users completed it."""
    rows = store.read(
        "SELECT campaign, COUNT(*) FROM campaign_checkpoints GROUP BY campaign ORDER BY campaign"
    )
    return {str(name): int(count) for name, count in rows}
