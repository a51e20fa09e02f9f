-- One index by entity instead of two. blocks_one_live_per_entity (unique,
-- live blocks) and blocks_entity (every block) were both keyed on
-- (entity_type, value), and such keys arrive in random order: each import
-- batch rewrote most leaf pages of both. One unique index whose third key
-- is 0 for a live block and NULL for an ended one serves both: live blocks
-- of an entity collide on the same key, while ended ones never do, NULLs
-- being distinct in a unique index on SQLite and PostgreSQL alike.
CREATE UNIQUE INDEX blocks_entity_live ON blocks
    (entity_type, value, (CASE WHEN deactivated_at IS NULL THEN 0 END));
DROP INDEX blocks_one_live_per_entity;
DROP INDEX blocks_entity;
