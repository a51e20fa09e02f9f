-- The blocklist's change log. Every transaction that changes blocks takes
-- the next number from blocklist_sequence (one row, updated in place, so
-- on PostgreSQL its row lock orders concurrent writers and sequence order
-- is commit order: a reader that has seen number N has seen every change
-- up to N). Each change is written to blocklist_changes, and each block
-- row carries the number of the change that created it and of the last
-- change to it. Replicas follow changed_seq to keep their in-memory index
-- in step; the bouncer feeds use both to tell new blocks from ended ones.
CREATE TABLE blocklist_sequence (
    id        BIGINT PRIMARY KEY CHECK (id = 1),
    last_seq  BIGINT NOT NULL
);
INSERT INTO blocklist_sequence (id, last_seq) VALUES (1, 0);

CREATE TABLE blocklist_changes (
    seq         BIGINT PRIMARY KEY,
    changed_at  BIGINT NOT NULL,
    actor       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    -- The block changed, or NULL for a change to many (an import batch).
    block_id    BIGINT,
    blocks      BIGINT NOT NULL
);

ALTER TABLE blocks ADD COLUMN created_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE blocks ADD COLUMN changed_seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX blocks_changed_seq ON blocks (changed_seq);
