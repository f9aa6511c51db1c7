ALTER TABLE events ADD COLUMN dispatched_at TEXT;
CREATE INDEX events_undispatched ON events (seq) WHERE dispatched_at IS NULL;

CREATE TABLE facts (
    uuid           TEXT PRIMARY KEY,
    org            TEXT NOT NULL,
    kind           TEXT NOT NULL,
    user_id        TEXT,
    user_login     TEXT,
    factor_type    TEXT NOT NULL,
    strength       TEXT NOT NULL,
    enrolled_by    TEXT NOT NULL,
    published_at   TEXT,
    received_at    TEXT,
    delay_seconds  REAL,
    outcome        TEXT,
    status         TEXT NOT NULL,
    status_reason  TEXT,
    fact           TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX facts_user ON facts (user_id, published_at);
CREATE INDEX facts_published ON facts (published_at);
CREATE INDEX facts_kind ON facts (kind, published_at);

CREATE TABLE twin_claims (
    user_id      TEXT NOT NULL,
    published    TEXT NOT NULL,
    family       TEXT NOT NULL,
    event_uuid   TEXT NOT NULL,
    PRIMARY KEY (user_id, published, family)
);

CREATE TABLE decisions (
    id           INTEGER PRIMARY KEY,
    event_uuid   TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    decided_at   TEXT NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT,
    enrichment   TEXT NOT NULL,
    decision     TEXT NOT NULL,
    UNIQUE (event_uuid, run_id)
);
CREATE INDEX decisions_event ON decisions (event_uuid);

CREATE TABLE suppressions (
    rule_id      TEXT NOT NULL,
    key          TEXT NOT NULL,
    last_at      TEXT NOT NULL,
    event_uuid   TEXT NOT NULL,
    PRIMARY KEY (rule_id, key)
);

CREATE TABLE action_results (
    idempotency_key  TEXT PRIMARY KEY,
    event_uuid       TEXT NOT NULL,
    rule_id          TEXT NOT NULL,
    action_id        TEXT NOT NULL,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL,
    detail           TEXT NOT NULL,
    reference        TEXT,
    attempts         INTEGER NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX action_results_event ON action_results (event_uuid);
CREATE INDEX action_results_status ON action_results (status, updated_at);

CREATE TABLE action_attempts (
    id               INTEGER PRIMARY KEY,
    idempotency_key  TEXT NOT NULL,
    event_uuid       TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    at               TEXT NOT NULL,
    result           TEXT NOT NULL,
    detail           TEXT NOT NULL
);
CREATE INDEX action_attempts_key ON action_attempts (idempotency_key);
CREATE INDEX action_attempts_event ON action_attempts (event_uuid);

CREATE TABLE dead_letters (
    id               INTEGER PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    event_uuid       TEXT NOT NULL,
    rule_id          TEXT NOT NULL,
    action_id        TEXT NOT NULL,
    kind             TEXT NOT NULL,
    request          TEXT NOT NULL,
    reason           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    status           TEXT NOT NULL,
    retries          INTEGER NOT NULL DEFAULT 0,
    resolved_at      TEXT,
    resolved_by      TEXT
);
CREATE INDEX dead_letters_status ON dead_letters (status, created_at)
