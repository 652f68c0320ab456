-- Schema version 2 (PostgreSQL): the tamper-evident audit log. The same table
-- and meaning as migrations/sqlite/0002_audit.sql; see there and src/audit.rs.
CREATE TABLE audit (
    entry     BIGINT PRIMARY KEY,
    at_ms     BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    record_id TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms, entry);
