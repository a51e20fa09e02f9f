-- Bulk uploads are retried by shippers after timeouts. Each record's
-- fingerprint (a digest of its format and content) is unique per honeypot,
-- so a resent record is recognised and stored once. Events posted one at a
-- time carry no fingerprint; NULLs never collide in a unique index.
ALTER TABLE honeypot_events ADD COLUMN fingerprint TEXT;
CREATE UNIQUE INDEX honeypot_events_fingerprint ON honeypot_events (honeypot_id, fingerprint);
