-- Schema version 3 (PostgreSQL only): the active daemon's renewable lease.
-- The advisory lock alone (store/postgres/lease.rs) ends only with its
-- session, and a hung process keeps its session; this row has an expiry the
-- active daemon must keep pushing forward, so a standby can tell a hung
-- holder from a live one and take over. Times are the database's clock, so
-- the hosts' clocks do not matter.
CREATE TABLE active_lease (
    node        TEXT PRIMARY KEY,
    -- the holder's application_name on every session it opens (lease and
    -- store pool), so a standby can end them all
    holder      TEXT NOT NULL,
    -- host and process id, for operators
    host        TEXT NOT NULL,
    -- the fencing token the holder writes with (meta.fence when it renewed)
    fence       BIGINT NOT NULL,
    -- the session holding the advisory lock
    backend_pid INT NOT NULL,
    renewed_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
