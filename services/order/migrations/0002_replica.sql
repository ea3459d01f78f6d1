-- The order service's replica of users, kept from trellis.user.v1.*
-- events; deleted users stay as tombstones so new orders are refused even
-- when the user service cannot be asked. version is the event time
-- (Unix microseconds): an older event never overwrites a newer one.
CREATE TABLE known_users (
    id      TEXT PRIMARY KEY,
    email   TEXT NOT NULL,
    name    TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    version BIGINT NOT NULL
);

-- Events a consumer has applied, recorded in the transaction of the
-- effect: a redelivered event finds its id here and changes nothing.
CREATE TABLE processed_events (
    consumer       TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    processed_time BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE INDEX orders_status ON orders (status, id);
