-- Refusals by reason (PostgreSQL): for each key and hour, how many of the `refused` requests
-- of key_usage were answered with each SPEC §7 error code. Written in the same transaction as
-- the key_usage row they break down. Codes use the "C" collation: byte order, as in SQLite.
CREATE TABLE key_usage_refusals (
    key_id  TEXT             NOT NULL REFERENCES api_keys (key_id),
    hour    BIGINT           NOT NULL,
    code    TEXT COLLATE "C" NOT NULL,
    refused BIGINT           NOT NULL,
    PRIMARY KEY (key_id, hour, code)
);
