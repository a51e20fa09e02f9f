-- Events are judged by position instead of being marked one by one.
--
-- Marking rewrote every event row (payload included) a second time and kept
-- a partial index of the unmarked ones; at bulk rates that doubled the
-- writes. Now each event-writing transaction takes its ids from
-- event_sequence (one row, updated in place: on PostgreSQL its row lock
-- orders writers, so ids follow commit order, as on SQLite with its single
-- writer), and the engine remembers the last id it judged. An event is
-- processed when its id is at or below engine_state.judged_through.
CREATE TABLE event_sequence (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    last_id  BIGINT NOT NULL
);
INSERT INTO event_sequence (id, last_id)
SELECT 1, COALESCE(MAX(id), 0) FROM honeypot_events;

-- Resume before the oldest event not yet judged. Marking judged events one
-- by one allowed a judged event above an unjudged one only on PostgreSQL
-- with several replicas writing at once; such an event is judged again.
ALTER TABLE engine_state ADD COLUMN judged_through BIGINT NOT NULL DEFAULT 0;
UPDATE engine_state SET judged_through = COALESCE(
    (SELECT MIN(id) - 1 FROM honeypot_events WHERE processed_at IS NULL),
    (SELECT MAX(id) FROM honeypot_events),
    0);

-- processed_at stays, unused: dropping a column rewrites the whole table
-- on SQLite, which on a large database would hold up the start for long.
DROP INDEX honeypot_events_unprocessed;

-- Indexes no query needs: every instant filter and count is on
-- occurred_at, and a source's events are found through
-- honeypot_events_source_time.
DROP INDEX honeypot_events_received;
DROP INDEX honeypot_events_source;
