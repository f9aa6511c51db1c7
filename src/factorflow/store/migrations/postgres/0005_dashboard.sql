-- The dashboard and `factorflow report` (docs/dashboard.md). Every list is a keyset scan of an
-- index, newest first, and the overview's figures are an index-only scan of facts over a time
-- window. New indexes go on the worker's tables: the hook's hot path (events, deliveries)
-- gets one partial index that holds no row the hook inserts (only events the System Log
-- reconciler recovered and the hook never sent), and quarantine one for its rare rows.
CREATE INDEX facts_dash_user ON facts (user_id, received_at);
CREATE INDEX facts_dash_login ON facts (lower(user_login), received_at);
CREATE INDEX facts_dash_factor ON facts (factor_type, received_at);
CREATE INDEX facts_dash_enrolled_by ON facts (enrolled_by, received_at);
CREATE INDEX facts_dash_outcome ON facts (outcome, received_at);
CREATE INDEX facts_dash_pending ON facts (received_at) WHERE status = 'pending';
CREATE INDEX facts_dash_enrollments ON facts (
    kind, published_at, org, status, outcome, strength, enrolled_by, factor_type
);
CREATE INDEX events_dash_log ON events (received_at) WHERE provenance = 'log';
CREATE INDEX quarantine_dash_uuid ON quarantine (uuid);
CREATE INDEX action_results_dash_rule ON action_results (rule_id, event_uuid);
CREATE INDEX action_attempts_dash_result ON action_attempts (result, id);
CREATE INDEX dead_letters_dash_event ON dead_letters (event_uuid);
CREATE INDEX dead_letters_dash_status ON dead_letters (status, id)
