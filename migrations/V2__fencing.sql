-- One owner per attempt (docs/exactly-once.md, "Fencing").
--
-- fence:  the token of the newest claim on the key. Every claim takes
--         fence + 1; every later write for that attempt is conditional on
--         its token, so a holder that was presumed dead and resumed finds
--         zero rows and stops.
-- holder: the worker that holds the newest token; its lease (below) says
--         whether it is alive.
-- task:   the task as claimed, so a row whose holder died can be put back on
--         the queue without any copy in Redis.
ALTER TABLE deliveries
    ADD COLUMN fence  BIGINT NOT NULL DEFAULT 0 CHECK (fence >= 0),
    ADD COLUMN holder TEXT,
    ADD COLUMN task   JSONB;

-- Worker leases on the database's clock. A holder may move a row to
-- `sending` only while its lease is live, and a row is taken from a holder
-- (by a claim or by the sweeper) only once its lease has lapsed: both are
-- judged by one clock, Postgres's `now()`.
CREATE TABLE worker_leases (
    worker_id  TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

-- The sweeper's scan: rows in flight, oldest first. Small (in-flight rows
-- only), so it costs the hot path little.
CREATE INDEX deliveries_in_flight ON deliveries (updated_at)
    WHERE state IN ('processing', 'sending');
