-- The detection engine (Heimdall): incidents, and what it needs to judge
-- events quickly and without repeating itself.

-- Sliding windows count one source's events by time.
CREATE INDEX honeypot_events_source_time ON honeypot_events (source_ip, occurred_at);
-- Escalation counts high and critical events by time.
CREATE INDEX honeypot_events_level_time ON honeypot_events (threat_level, occurred_at);

-- What an action request is about (`ip:203.0.113.7`, `mode`), so "is there
-- already an open request for this source?" is an indexed lookup rather
-- than a scan of JSON payloads.
ALTER TABLE action_requests ADD COLUMN subject TEXT;
CREATE INDEX action_requests_subject ON action_requests (subject, status);

-- An incident groups what one source did while it stays active.
CREATE TABLE incidents (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    source_ip      TEXT    NOT NULL,
    severity       TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    event_count    INTEGER NOT NULL,
    first_seen_at  INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    -- Events by type, e.g. {"auth_attempt": 30}, for the summary.
    type_counts    TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    resolved_at    INTEGER
);
CREATE INDEX incidents_source ON incidents (source_ip, id);
CREATE INDEX incidents_status ON incidents (status, id);
CREATE INDEX incidents_severity ON incidents (severity, id);

-- Honeypots and action requests linked to an incident.
CREATE TABLE incident_links (
    incident_id  INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    kind         TEXT    NOT NULL,
    ref_id       INTEGER NOT NULL,
    PRIMARY KEY (incident_id, kind, ref_id)
);

-- The engine's own state: one row.
CREATE TABLE engine_state (
    id                     INTEGER PRIMARY KEY CHECK (id = 1),
    -- Last instant the high/critical count was at or above the current
    -- mode's threshold; de-escalation waits a cooldown after it.
    last_hot_at            INTEGER
);
INSERT INTO engine_state (id, last_hot_at) VALUES (1, NULL);
