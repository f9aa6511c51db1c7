-- The ledger is read newest first by id and counted, never looked up by received time: this
-- index took one to three page writes per commit on the hook's hot path (its right-hand end is
-- rewritten by every commit).
DROP INDEX deliveries_received_at
