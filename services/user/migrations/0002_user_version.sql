-- version counts the changes of a user: the etag of AIP-154 and the
-- condition of conditional updates and deletes.
ALTER TABLE users ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
