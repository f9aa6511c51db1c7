-- Takeovers of each workflow from dead workers (see docs/operations.md). A workflow that kills
-- every worker it runs on would otherwise be resumed by one survivor after another forever.
-- `takeovers` counts the takeovers in a row during which the workflow completed no step
-- (`steps`: its completed steps at the last takeover). `taken_from` names the run that died
-- (executor id and when it dequeued the workflow), so a takeover that is redone after its
-- taker died is not counted twice. Past workflows.max_takeovers_per_workflow the workflow is
-- cancelled instead of resumed: `abandoned_at` and `reason` say so.
CREATE TABLE workflow_takeovers (
    workflow_id   TEXT PRIMARY KEY,
    event_uuid    TEXT,
    takeovers     INTEGER NOT NULL,
    steps         INTEGER NOT NULL,
    taken_from    TEXT NOT NULL,
    taken_by      TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    abandoned_at  TEXT,
    reason        TEXT
)
