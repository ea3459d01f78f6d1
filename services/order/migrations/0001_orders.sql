-- Orders of the order service. request_id is the client's idempotency key,
-- unique across all orders; request_hash fingerprints the payload it was
-- first used with. Amounts are integer minor units; times Unix microseconds.
CREATE TABLE orders (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    status       INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    total_minor  BIGINT NOT NULL,
    request_id   TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
);
CREATE UNIQUE INDEX orders_request_id ON orders (request_id);
CREATE INDEX orders_user_id ON orders (user_id, id);

CREATE TABLE order_items (
    order_id         TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line             INTEGER NOT NULL,
    product_id       TEXT NOT NULL,
    quantity         INTEGER NOT NULL,
    unit_price_minor BIGINT NOT NULL,
    PRIMARY KEY (order_id, line)
);
