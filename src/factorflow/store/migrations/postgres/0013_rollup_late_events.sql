-- Events stored into an hour that was already rolled up (stamped by a clock more than the
-- roll-up's five minutes behind, or committed that late) are found by their seq, not by a
-- time: seq_checked is the seq above which stored events are looked at again (their hours'
-- event counts compared with the rolled-up rows), and seq_mark / seq_mark_at the highest seq
-- when the roll-up last took a mark, and when (by the roller's clock). seq_checked moves to
-- the mark once the mark is five minutes old, which leaves time for transactions that took a
-- seq before the mark to commit (PostgreSQL hands out seqs before commit).
ALTER TABLE delivery_gap_rollup ADD COLUMN seq_checked BIGINT;
ALTER TABLE delivery_gap_rollup ADD COLUMN seq_mark BIGINT;
ALTER TABLE delivery_gap_rollup ADD COLUMN seq_mark_at TEXT
