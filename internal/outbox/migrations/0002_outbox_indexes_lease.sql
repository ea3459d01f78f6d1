-- Portable part of the outbox (both backends): the index the relay reads
-- pending events by, the one pruning uses, and the relay lease.
CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_time IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_time) WHERE sent_time IS NOT NULL;

-- One relay publishes at a time: the holder of this lease.
CREATE TABLE outbox_lease (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    expires BIGINT NOT NULL
);
