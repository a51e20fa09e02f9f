-- What each CrowdSec bouncer has been sent, one row per token that pulls
-- /v1/decisions/stream. last_seq is the change number read before the
-- blocks of its last pull: every change up to it reached the bouncer, so
-- the next pull sends what changed after it. last_pull_at bounds the
-- expiries the next pull reports as deleted. The address and User-Agent
-- are kept for operators, as `cscli bouncers list` shows them.
CREATE TABLE bouncer_pulls (
    token_id      INTEGER PRIMARY KEY REFERENCES tokens (id),
    token_name    TEXT    NOT NULL,
    last_seq      INTEGER NOT NULL,
    last_pull_at  INTEGER NOT NULL,
    first_pull_at INTEGER NOT NULL,
    ip_address    TEXT,
    user_agent    TEXT
);

-- Incremental pulls report blocks that expired since the bouncer's last
-- pull: a range of expires_at, whether the sweep has closed them or not.
CREATE INDEX blocks_expires_at ON blocks (expires_at);
-- Long blocks are sent to bouncers again at multiples of half the longest
-- duration a bouncer accepts after their creation: ranges of created_at.
CREATE INDEX blocks_created_at ON blocks (created_at);
