-- The client's key is named for what it is: an idempotency key, not the
-- request id that correlates logs and traces (x-request-id). The wire
-- field stays request_id (the contract); the column and the code say
-- idempotency_key.
ALTER TABLE orders RENAME COLUMN request_id TO idempotency_key;
ALTER TABLE orders RENAME COLUMN request_hash TO payload_hash;
