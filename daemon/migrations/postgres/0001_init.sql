-- Schema version 1 of a tiersync node store (PostgreSQL). The same tables
-- and meaning as migrations/sqlite/0001_init.sql; see there for the why of
-- each. Differences: native types (BYTEA, BIGINT, BOOLEAN), an identity
-- column for quarantine ids, and a `fence` row in `meta` (the fencing token
-- of the standby takeover, see store/postgres.rs).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE records (
    seq        BIGINT PRIMARY KEY,
    id         BYTEA NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted    BOOLEAN NOT NULL,
    withdrawn  BOOLEAN NOT NULL,
    via        TEXT NOT NULL,
    body       BYTEA NOT NULL
);
-- get-by-id uses the UNIQUE index on id; the change-log scan the primary key
-- on seq; listing by kind this one.
CREATE INDEX records_kind ON records (kind, id);

-- 8-byte hash of (kind, name, value) and the record's current seq; lookups
-- check the key on the record itself, so a collision never returns a wrong
-- record.
CREATE TABLE natural_keys (
    key_hash   BIGINT NOT NULL,
    record_seq BIGINT NOT NULL,
    PRIMARY KEY (key_hash, record_seq)
);

CREATE TABLE cursors (
    peer            TEXT PRIMARY KEY,
    applied_through BIGINT NOT NULL,
    peer_epoch      TEXT NOT NULL,
    updated_at_ms   BIGINT NOT NULL
);

CREATE TABLE quarantine (
    qid       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    peer      TEXT NOT NULL,
    record_id BYTEA,
    kind      TEXT NOT NULL,
    origin    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    body      BYTEA NOT NULL,
    at_ms     BIGINT NOT NULL,
    resolved  BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX quarantine_open ON quarantine (resolved, qid);

INSERT INTO meta (key, value) VALUES ('fence', '0');
