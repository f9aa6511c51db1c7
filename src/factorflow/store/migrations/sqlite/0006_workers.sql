-- The workflow workers and their heartbeats (see docs/operations.md). A live worker takes over
-- the in-flight workflows of one whose heartbeat stopped: it claims the dead worker's row first
-- (claimed_by, a conditional UPDATE that only one claimant wins), and records when the takeover
-- ended (recovered_at) and how many workflows it resumed. `beat` grows with every heartbeat, so
-- liveness is judged by whether it changes, on the observer's own clock.
CREATE TABLE workers (
    executor_id          TEXT PRIMARY KEY,
    application_version  TEXT NOT NULL,
    host                 TEXT NOT NULL,
    pid                  INTEGER NOT NULL,
    started_at           TEXT NOT NULL,
    heartbeat_at         TEXT NOT NULL,
    beat                 BIGINT NOT NULL DEFAULT 0,
    stopped_at           TEXT,
    claimed_by           TEXT,
    claimed_at           TEXT,
    recovered_at         TEXT,
    recovered_workflows  INTEGER
)
