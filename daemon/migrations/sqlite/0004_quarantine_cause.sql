-- Schema version 4: why each quarantined record was refused, as the node's
-- rules act on it (store::RefusalCause); the reason column keeps the text.
ALTER TABLE quarantine ADD COLUMN cause TEXT NOT NULL DEFAULT 'unknown';
-- Rows from before: the one cause the node acts on by itself (replay once
-- the signer's key arrives) is recognised by the text it was written with.
UPDATE quarantine SET cause = 'unknown-signer'
    WHERE reason LIKE '%no signing key known for origin%';
