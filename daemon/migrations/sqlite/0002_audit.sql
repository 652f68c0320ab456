-- Schema version 2 (SQLite): the tamper-evident audit log (src/audit.rs).
--
-- Append-only: entries are numbered 1, 2, 3, ... and each row carries the
-- previous entry's hash and its own, SM3 over a tagged (`tiersync.audit.v1`),
-- length-prefixed encoding of every other column plus prev_hash (the exact
-- encoding is documented and pinned in src/audit.rs). Each entry is written in
-- the transaction of the event it records. `record_id` is the id as people
-- read it (a UUID), '' when the event concerns no record.
CREATE TABLE audit (
    entry     INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    record_id TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms, entry);
