-- version counts the status changes of an order: its AIP-154 etag.
ALTER TABLE orders ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
