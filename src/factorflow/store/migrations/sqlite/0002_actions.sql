CREATE TABLE audit_log (
    seq              INTEGER PRIMARY KEY,
    at               TEXT NOT NULL,
    kind             TEXT NOT NULL,
    summary          TEXT NOT NULL,
    actor            TEXT NOT NULL,
    event_uuid       TEXT,
    idempotency_key  TEXT UNIQUE,
    details          TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE INDEX audit_log_event_uuid ON audit_log (event_uuid);

CREATE TABLE audit_chain_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq   INTEGER NOT NULL,
    last_hash  TEXT NOT NULL
);
INSERT INTO audit_chain_head (id, last_seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE campaign_checkpoints (
    campaign         TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    user_login       TEXT,
    completed_at     TEXT NOT NULL,
    recorded_at      TEXT NOT NULL,
    event_uuid       TEXT NOT NULL,
    factor_type      TEXT NOT NULL,
    factor_strength  TEXT NOT NULL,
    rule_id          TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    PRIMARY KEY (campaign, user_id)
);
CREATE INDEX campaign_checkpoints_completed ON campaign_checkpoints (campaign, completed_at);

CREATE TABLE register_entries (
    id               INTEGER PRIMARY KEY,
    register         TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    expires_at       TEXT,
    user_id          TEXT,
    user_login       TEXT,
    factor_type      TEXT NOT NULL,
    event_uuid       TEXT NOT NULL,
    rule_id          TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    fields           TEXT NOT NULL
);
CREATE INDEX register_entries_register ON register_entries (register, id);

CREATE TABLE webhook_sends (
    idempotency_key  TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    event_uuid       TEXT NOT NULL,
    rule_id          TEXT NOT NULL,
    action_id        TEXT NOT NULL,
    status_code      INTEGER NOT NULL,
    sent_at          TEXT NOT NULL
);
CREATE INDEX webhook_sends_event ON webhook_sends (event_uuid)
