-- Schema version 5: departments' subscription cursors (the adapter API).
-- One row per department and subscription name: how far the department has
-- acknowledged this node's change log, in which epoch of the log.
CREATE TABLE subscriptions (
    department TEXT NOT NULL,
    name TEXT NOT NULL,
    acked_through INTEGER NOT NULL,
    epoch TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (department, name)
) WITHOUT ROWID;
