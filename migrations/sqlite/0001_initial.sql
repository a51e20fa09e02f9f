-- Valhalla's schema on SQLite.
--
-- Instants are INTEGER milliseconds since the Unix epoch (UTC); documents
-- (policy, payloads, results, audit values) are JSON text. Nothing uses
-- BOOLEAN: a flag is the instant it became true (`deactivated_at`,
-- `revoked_at`, `processed_at`), which also answers "since when".

-- The one policy of the deployment; `document` holds its writable fields.
CREATE TABLE policy (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    document    TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT    NOT NULL
);

-- Every version the policy has had, with the fields that changed.
CREATE TABLE policy_history (
    version      INTEGER PRIMARY KEY,
    changed_at   INTEGER NOT NULL,
    changed_by   TEXT    NOT NULL,
    document     TEXT    NOT NULL,
    changes      TEXT    NOT NULL
);

-- API tokens, stored as SHA-256 hashes of the random secret.
CREATE TABLE tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    token_hash    TEXT    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
-- A name is unique among working tokens; a revoked name may be issued again.
CREATE UNIQUE INDEX tokens_name_unique ON tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE action_requests (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    source            TEXT    NOT NULL,
    action_type       TEXT    NOT NULL,
    payload           TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    requested_by      TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    approved_by       TEXT,
    approved_at       INTEGER,
    resolved_at       INTEGER,
    resolution_notes  TEXT,
    executed_at       INTEGER,
    result            TEXT,
    error             TEXT
);
CREATE INDEX action_requests_status ON action_requests (status, id);
CREATE INDEX action_requests_source ON action_requests (source, id);
CREATE INDEX action_requests_type ON action_requests (action_type, id);

-- Blocked entities. For `ip` and `cidr`, `family` (4 or 6) and the first and
-- last address as 32 lower-case hex digits let SQL answer containment and
-- overlap with plain comparisons.
CREATE TABLE blocks (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_type          TEXT    NOT NULL,
    value                TEXT    NOT NULL,
    family               INTEGER,
    range_start          TEXT,
    range_end            TEXT,
    reason               TEXT    NOT NULL,
    source               TEXT    NOT NULL,
    created_by           TEXT    NOT NULL,
    action_request_id    INTEGER REFERENCES action_requests (id),
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER,
    deactivated_at       INTEGER,
    deactivated_by       TEXT,
    deactivation_reason  TEXT
);
-- At most one block per entity that has not been deactivated: duplicates
-- extend the existing block instead, even under concurrent requests.
CREATE UNIQUE INDEX blocks_one_live_per_entity ON blocks (entity_type, value)
    WHERE deactivated_at IS NULL;
CREATE INDEX blocks_live ON blocks (id) WHERE deactivated_at IS NULL;
CREATE INDEX blocks_live_ranges ON blocks (family, range_start, range_end)
    WHERE deactivated_at IS NULL;
CREATE INDEX blocks_entity ON blocks (entity_type, value, id);
CREATE INDEX blocks_source ON blocks (source, id);
CREATE INDEX blocks_expires ON blocks (expires_at) WHERE deactivated_at IS NULL;

CREATE TABLE honeypot_instances (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    honeypot_type   TEXT    NOT NULL,
    location        TEXT,
    latitude        REAL,
    longitude       REAL,
    description     TEXT,
    key_hash        TEXT    NOT NULL UNIQUE,
    created_at      INTEGER NOT NULL,
    deactivated_at  INTEGER,
    last_seen_at    INTEGER,
    event_count     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX honeypot_instances_live ON honeypot_instances (id) WHERE deactivated_at IS NULL;

CREATE TABLE honeypot_events (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    honeypot_id       INTEGER NOT NULL REFERENCES honeypot_instances (id) ON DELETE CASCADE,
    event_type        TEXT    NOT NULL,
    source_ip         TEXT    NOT NULL,
    source_port       INTEGER,
    destination_port  INTEGER,
    protocol          TEXT,
    username          TEXT,
    password          TEXT,
    command           TEXT,
    session_id        TEXT,
    payload           TEXT,
    occurred_at       INTEGER NOT NULL,
    received_at       INTEGER NOT NULL,
    threat_level      TEXT    NOT NULL,
    threat_tags       TEXT    NOT NULL,
    processed_at      INTEGER
);
CREATE INDEX honeypot_events_honeypot ON honeypot_events (honeypot_id, id);
CREATE INDEX honeypot_events_type ON honeypot_events (event_type, id);
CREATE INDEX honeypot_events_source ON honeypot_events (source_ip, id);
CREATE INDEX honeypot_events_level ON honeypot_events (threat_level, id);
CREATE INDEX honeypot_events_occurred ON honeypot_events (occurred_at);
CREATE INDEX honeypot_events_received ON honeypot_events (received_at);
CREATE INDEX honeypot_events_unprocessed ON honeypot_events (id) WHERE processed_at IS NULL;

-- Every state change: who, when, what, and the value before and after.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    occurred_at   INTEGER NOT NULL,
    actor         TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    subject_type  TEXT    NOT NULL,
    subject_id    TEXT,
    old_value     TEXT,
    new_value     TEXT
);
CREATE INDEX audit_log_kind ON audit_log (kind, id);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
