-- The transactional outbox: events written in the transaction of the
-- change they describe, published to NATS by the relay. seq is the commit
-- order the relay publishes in.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    aggregate_id TEXT NOT NULL,
    subject      TEXT NOT NULL,
    type         TEXT NOT NULL,
    source       TEXT NOT NULL,
    payload      BLOB NOT NULL,
    traceparent  TEXT NOT NULL DEFAULT '',
    create_time  BIGINT NOT NULL,
    sent_time    BIGINT
);
