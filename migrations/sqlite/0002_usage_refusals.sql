-- Refusals by reason (SQLite): for each key and hour, how many of the `refused` requests of
-- key_usage were answered with each SPEC §7 error code. Written in the same transaction as
-- the key_usage row they break down.
CREATE TABLE key_usage_refusals (
    key_id  TEXT    NOT NULL REFERENCES api_keys (key_id),
    hour    INTEGER NOT NULL,
    code    TEXT    NOT NULL,
    refused INTEGER NOT NULL,
    PRIMARY KEY (key_id, hour, code)
);
