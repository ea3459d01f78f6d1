-- The transactional outbox: events written in the transaction of the
-- change they describe, published to NATS by the relay. seq is the commit
-- order the relay publishes in.
CREATE TABLE outbox (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    aggregate_id TEXT NOT NULL,
    subject      TEXT NOT NULL,
    type         TEXT NOT NULL,
    source       TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    traceparent  TEXT NOT NULL DEFAULT '',
    create_time  BIGINT NOT NULL,
    sent_time    BIGINT
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_time IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_time) WHERE sent_time IS NOT NULL;

-- One relay publishes at a time: the holder of this lease.
CREATE TABLE outbox_lease (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    expires BIGINT NOT NULL
);
