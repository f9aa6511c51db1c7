CREATE TABLE events (
    seq           INTEGER PRIMARY KEY,
    uuid          TEXT NOT NULL UNIQUE,
    event_type    TEXT NOT NULL,
    published     TEXT NOT NULL,
    published_at  TEXT,
    received_at   TEXT NOT NULL,
    delivery_id   TEXT,
    hook_id       TEXT,
    org           TEXT NOT NULL,
    provenance    TEXT NOT NULL DEFAULT 'hook',
    content_hash  TEXT NOT NULL,
    raw           TEXT NOT NULL
);
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_published_at ON events (published_at);
CREATE INDEX events_type ON events (event_type, published_at);

CREATE TABLE deliveries (
    id                  INTEGER PRIMARY KEY,
    delivery_id         TEXT,
    hook_id             TEXT,
    org                 TEXT NOT NULL,
    received_at         TEXT NOT NULL,
    event_time          TEXT,
    events_total        INTEGER NOT NULL,
    events_new          INTEGER NOT NULL,
    events_duplicate    INTEGER NOT NULL,
    events_quarantined  INTEGER NOT NULL
);
CREATE INDEX deliveries_delivery_id ON deliveries (delivery_id);
CREATE INDEX deliveries_received_at ON deliveries (received_at);

CREATE TABLE quarantine (
    id           INTEGER PRIMARY KEY,
    received_at  TEXT NOT NULL,
    delivery_id  TEXT,
    hook_id      TEXT,
    org          TEXT NOT NULL,
    uuid         TEXT,
    reason_code  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    raw          TEXT NOT NULL
);
CREATE INDEX quarantine_received_at ON quarantine (received_at);
