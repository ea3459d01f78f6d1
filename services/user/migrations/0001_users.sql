-- Users of the user service. email_key is the lower-cased email: the
-- unique index makes emails unique case-insensitively on both backends.
-- Times are Unix microseconds (portable across SQLite and PostgreSQL).
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    email_key     TEXT NOT NULL,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    create_time   BIGINT NOT NULL,
    update_time   BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email_key ON users (email_key);
