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
