-- Schema version 5 (PostgreSQL): departments' subscription cursors (the
-- adapter API); the same as SQLite's.
CREATE TABLE subscriptions (
    department TEXT NOT NULL,
    name TEXT NOT NULL,
    acked_through BIGINT NOT NULL,
    epoch TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (department, name)
);
