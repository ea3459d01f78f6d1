-- Sign-in. roles is a comma list of the user's roles ("admin"), set only
-- by `trellis users grant-admin`. signing_keys hold the ES256 keys of the
-- access tokens (PKCS#8, base64): every replica signs with the newest and
-- publishes all of them. refresh_tokens hold only SHA-256 hashes of the
-- refresh tokens; family_id groups the tokens rotated from one sign-in,
-- so that reuse of a used one revokes them all.
ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT '';
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_key TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    expire_time BIGINT NOT NULL,
    used        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
