"""The ``report`` action, the default: the event and its fact are already stored by the
pipeline for the dashboard and exports, so there is nothing more to do, and nothing to repeat."""

from __future__ import annotations

from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact

STORED_FOR_REPORTING = "stored for reporting"


class ReportHandler:
    """``kind: report``. No params. Performing it again changes nothing, so it always answers
    DONE."""

    kind = "report"

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        return ActionOutcome(OutcomeStatus.DONE, STORED_FOR_REPORTING)
