-- The delivery-gap figures rolled up per org and hour (span 'h', period 'YYYY-MM-DDTHH') and per
-- org and UTC day (span 'd', period 'YYYY-MM-DD'), so that a period's figures are read from a
-- few small rows instead of every event stored in it (factorflow.store.delivery_rollup).
-- delivery_gap_rollup says which hours the rows cover, [rolled_from, rolled_until), and up to
-- which time changes made later (System Log confirmations, late hook copies) are in them,
-- changes_seen. lease_owner / lease_until: the process rolling up now (one at a time).
-- The rows are written by whoever reads the figures, never on the hook's path.
CREATE TABLE delivery_gap_rollup (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    rolled_from   TEXT,
    rolled_until  TEXT,
    changes_seen  TEXT,
    lease_owner   TEXT,
    lease_until   TEXT
);
INSERT INTO delivery_gap_rollup (id) VALUES (1);

CREATE TABLE delivery_gap_periods (
    span          TEXT NOT NULL,
    period        TEXT NOT NULL,
    org           TEXT NOT NULL,
    events        INTEGER NOT NULL,
    by_hook       INTEGER NOT NULL,
    recovered     INTEGER NOT NULL,
    never_hooked  INTEGER NOT NULL,
    confirmed     INTEGER NOT NULL,
    failures      INTEGER NOT NULL,
    PRIMARY KEY (span, period, org)
);

-- The hook delays of a period as a histogram: bucket b holds delays d with
-- floor(16 * log2(d)) = b (about 4.4 % wide), with how many and the largest.
CREATE TABLE delivery_delay_buckets (
    span       TEXT NOT NULL,
    period     TEXT NOT NULL,
    org        TEXT NOT NULL,
    bucket     INTEGER NOT NULL,
    delays     INTEGER NOT NULL,
    max_delay  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (span, period, org, bucket)
);

-- What changed after an hour was rolled up: confirmations of hook events, and hook copies that
-- came after the System Log copy.
CREATE INDEX system_log_confirmations_confirmed ON system_log_confirmations (confirmed_at);
CREATE INDEX system_log_confirmations_hooked ON system_log_confirmations (hook_received_at)
    WHERE hook_received_at IS NOT NULL
