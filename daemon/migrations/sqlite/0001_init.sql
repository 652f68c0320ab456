-- Schema version 1 of a tiersync node store (SQLite).
--
-- `records` holds the current version of every record this node may hold.
-- `seq` is the node's change log: every applied change (own or received) takes
-- the next sequence number, so "the log after N" is a range scan of the seq
-- index. Like CouchDB's by-seq index the log is compacted: a record appears
-- once, at the seq of its latest change. Receivers only ever need the latest
-- version, because apply is idempotent and ordered by the owner's version.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE records (
    seq        INTEGER PRIMARY KEY,
    id         BLOB NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted    INTEGER NOT NULL,
    -- a scoped tombstone: the record lives on elsewhere, not here
    withdrawn  INTEGER NOT NULL,
    -- the direct peer it arrived from, '' for records written here
    via        TEXT NOT NULL,
    body       BLOB NOT NULL
);
CREATE INDEX records_kind ON records (kind, id);

-- Natural keys (e.g. a resident's keyed ID-number digest) index records by
-- an 8-byte hash of (kind, name, value) and the record's current seq. The
-- entry is ~15 bytes instead of the key itself: digests are random, so every
-- insert lands on a random page, and a small index keeps the pages a batch
-- dirties (and writes to the WAL) few. Measured: with full keys in the index
-- the apply rate halved. Lookups check the key on the record itself, so a
-- hash collision never returns a wrong record.
CREATE TABLE natural_keys (
    key_hash   INTEGER NOT NULL,
    record_seq INTEGER NOT NULL,
    PRIMARY KEY (key_hash, record_seq)
) WITHOUT ROWID;

-- Receiver-owned cursors: "applied through N of peer P's log", written in the
-- same transaction as the records of the batch. The key is the peer's division
-- code only, never an address or a credential, so neither a new address nor a
-- renewed certificate rewinds a link.
CREATE TABLE cursors (
    peer            TEXT PRIMARY KEY NOT NULL,
    applied_through INTEGER NOT NULL,
    peer_epoch      TEXT NOT NULL,
    updated_at_ms   INTEGER NOT NULL
);

-- Records refused on arrival, kept with their reason so one bad record never
-- halts a link and an operator can inspect and replay it.
CREATE TABLE quarantine (
    qid       INTEGER PRIMARY KEY AUTOINCREMENT,
    peer      TEXT NOT NULL,
    record_id BLOB,
    kind      TEXT NOT NULL,
    origin    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    body      BLOB NOT NULL,
    at_ms     INTEGER NOT NULL,
    resolved  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX quarantine_open ON quarantine (resolved, qid);
