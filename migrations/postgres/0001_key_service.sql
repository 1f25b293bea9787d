-- The key service's tables (PostgreSQL). Times are Unix seconds; scopes, custom_claims and
-- rate_limit are JSON text; hash is the key's SHA-256 in lowercase hex.
-- Text ids use the "C" collation: byte order, as in SQLite, so keyset pages sort the same on
-- both engines and the indexes compare bytes.
CREATE TABLE api_keys (
    key_id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    hash              TEXT COLLATE "C" NOT NULL,
    tenant_id         TEXT COLLATE "C" NOT NULL,
    user_id           TEXT COLLATE "C",
    name              TEXT    NOT NULL,
    scopes            TEXT    NOT NULL,
    rate_limit        TEXT,
    tokens_per_minute BIGINT,
    expires_at        BIGINT,
    revoked           BIGINT  NOT NULL DEFAULT 0,
    custom_claims     TEXT    NOT NULL,
    description       TEXT,
    created_at        BIGINT  NOT NULL,
    created_by        TEXT    NOT NULL,
    revoked_at        BIGINT,
    last_used_at      BIGINT,
    rotated_from      TEXT,
    rotated_to        TEXT
);
-- The request path's lookup, and what makes a duplicate hash a conflict.
CREATE UNIQUE INDEX api_keys_hash ON api_keys (hash);
-- Keyset pages of one tenant, and of one user of a tenant (also the per-user key count).
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, key_id);
CREATE INDEX api_keys_tenant_user ON api_keys (tenant_id, user_id, key_id);

CREATE TABLE audit_log (
    seq        BIGSERIAL PRIMARY KEY,
    time       BIGINT  NOT NULL,
    tenant_id  TEXT,
    actor      TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    result     TEXT    NOT NULL,
    request_id TEXT
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq);

CREATE TABLE key_usage (
    key_id   TEXT    NOT NULL REFERENCES api_keys (key_id),
    hour     BIGINT  NOT NULL,
    requests BIGINT  NOT NULL,
    refused  BIGINT  NOT NULL,
    tokens   BIGINT  NOT NULL,
    PRIMARY KEY (key_id, hour)
);
