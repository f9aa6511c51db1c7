-- System Log reconciliation (docs/okta.md). One row per org: where the poller stands. The cursor
-- is Okta's opaque next link (next_url), kept with the filter it was made for. cursor_published
-- is the published time of the newest System Log event read, polled_at the last successful poll.
-- lease_owner / lease_until: the worker whose poller reads this org now (one at a time).
CREATE TABLE reconciler_state (
    org               TEXT PRIMARY KEY,
    cursor_published  TEXT,
    polled_at         TEXT,
    next_url          TEXT,
    filter            TEXT,
    started_since     TEXT,
    pages_read        INTEGER NOT NULL DEFAULT 0,
    events_read       INTEGER NOT NULL DEFAULT 0,
    events_recovered  INTEGER NOT NULL DEFAULT 0,
    events_confirmed  INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    last_error_at     TEXT,
    lease_owner       TEXT,
    lease_until       TEXT
);

-- One row per stored event that the System Log also holds. recovered = 1: the System Log copy
-- was stored first (the hook had not delivered it when the log was read). hook_received_at and
-- hook_delay_seconds: when a hook copy of a recovered event arrived later, and how late it was.
CREATE TABLE system_log_confirmations (
    event_uuid          TEXT PRIMARY KEY,
    org                 TEXT,
    confirmed_at        TEXT,
    recovered           INTEGER NOT NULL DEFAULT 0,
    hook_received_at    TEXT,
    hook_delay_seconds  REAL
);
CREATE INDEX system_log_confirmations_org ON system_log_confirmations (org, confirmed_at)
