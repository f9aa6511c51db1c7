-- Nothing reads events by type or by published time (the facts table carries those indexes),
-- and every index is paid for on the hot path.
DROP INDEX events_type;
DROP INDEX events_published_at
