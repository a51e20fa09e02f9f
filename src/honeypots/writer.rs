//! Group commit for honeypot events.
//!
//! Every event write — single POSTs and bulk batches alike — goes through
//! one writer task. It takes the first waiting job, gathers whatever else is
//! queued behind it, and commits the lot in one transaction; only then does
//! each caller get its answer. A 2xx therefore always means committed, while
//! the cost of a commit (an fsync on SQLite) is shared by every request that
//! arrived meanwhile. Each transaction takes its ids from the event
//! sequence, whose row lock it holds until it commits, so ids follow commit
//! order across every writer of every replica: a reader that has seen id N
//! has seen every event up to N, and the engine resumes "after id N".

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, Notify};

use super::events::{HoneypotEvent, NewEvent};
use crate::detection::{classify_event, ThreatLevel};
use crate::error::{Error, Result};
use crate::storage::{self, Db, Tx};
use crate::time::Timestamp;

/// Rows gathered into one transaction at most.
const MAX_GROUP_ROWS: usize = 20_000;

/// Rows per INSERT statement. They travel as one JSON array bound as a
/// single parameter, which the database unpacks itself: sqlx's cost grows
/// with every bound parameter, faster than the parameters' count. The limit
/// only bounds the size of one statement's text.
const ROWS_PER_STATEMENT: usize = 10_000;

/// Bytes of JSON per INSERT statement, about; see `json_chunks`.
const BYTES_PER_STATEMENT: usize = 32 << 20;

/// An event ready to store: classified, with its idempotency fingerprint.
#[derive(Debug)]
pub struct PendingEvent {
    event: NewEvent,
    fingerprint: Option<String>,
    threat_level: ThreatLevel,
    threat_tags: Vec<String>,
}

impl PendingEvent {
    /// Classifies `event`; `fingerprint`, when given, makes a resent copy a no-op.
    pub fn new(event: NewEvent, fingerprint: Option<String>) -> Self {
        let (threat_level, threat_tags) = classify_event(&event);
        Self {
            event,
            fingerprint,
            threat_level,
            threat_tags,
        }
    }

    /// The event as stored under `id`, for answering the request that sent it.
    fn stored(&self, id: i64, honeypot_id: i64, received_at: Timestamp) -> HoneypotEvent {
        let event = &self.event;
        HoneypotEvent {
            id,
            honeypot_id,
            event_type: event.event_type,
            source_ip: event.source_ip.clone(),
            source_port: event.source_port.map(i64::from),
            destination_port: event.destination_port.map(i64::from),
            protocol: event.protocol.clone(),
            username: event.username.clone(),
            password: event
                .password
                .as_ref()
                .map(|password| password.expose().to_string()),
            command: event.command.clone(),
            session_id: event.session_id.clone(),
            payload: event.payload.clone(),
            occurred_at: event.occurred_at,
            received_at,
            threat_level: self.threat_level,
            threat_tags: self.threat_tags.clone(),
            is_processed: false,
        }
    }
}

/// What a write stored.
#[derive(Debug, Default)]
pub struct Written {
    /// Events newly stored; the others were already there.
    pub stored: usize,
    /// The stored rows, when asked for.
    pub rows: Vec<HoneypotEvent>,
}

struct Job {
    honeypot_id: i64,
    received_at: Timestamp,
    events: Vec<PendingEvent>,
    want_rows: bool,
    reply: oneshot::Sender<Result<Written>>,
}

/// The handle requests use to write events.
#[derive(Debug, Clone)]
pub struct EventWriter {
    jobs: mpsc::Sender<Job>,
}

impl EventWriter {
    /// Starts the writer task on the current runtime; `stored` is notified
    /// after each commit, to wake the detection engine.
    pub fn start(db: Db, stored: Arc<Notify>) -> Self {
        let (jobs, queue) = mpsc::channel(1024);
        tokio::spawn(run_writer(db, queue, stored));
        Self { jobs }
    }

    /// Stores `events` from one honeypot; returns once they are committed.
    /// `want_rows` returns the events stored (not the resent copies), for
    /// the few events of a single request.
    pub async fn write(
        &self,
        honeypot_id: i64,
        received_at: Timestamp,
        events: Vec<PendingEvent>,
        want_rows: bool,
    ) -> Result<Written> {
        if events.is_empty() {
            return Ok(Written::default());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            honeypot_id,
            received_at,
            events,
            want_rows,
            reply,
        };
        self.jobs.send(job).await.map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }
}

fn writer_gone() -> Error {
    Error::Unavailable("the event writer has stopped; the server is shutting down".to_string())
}

async fn run_writer(db: Db, mut queue: mpsc::Receiver<Job>, stored: Arc<Notify>) {
    while let Some(first) = queue.recv().await {
        let mut rows = first.events.len();
        let mut group = vec![first];
        while rows < MAX_GROUP_ROWS {
            match queue.try_recv() {
                Ok(job) => {
                    rows += job.events.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }

        match write_group(&db, &group).await {
            Ok(results) => {
                stored.notify_one();
                for (job, written) in group.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(written));
                }
            }
            Err(error) => {
                tracing::error!(%error, jobs = group.len(), "could not store events");
                for job in group {
                    let failed =
                        Error::Unavailable("events could not be stored; retry".to_string());
                    let _ = job.reply.send(Err(failed));
                }
            }
        }
    }
}

/// One transaction for the whole group: ids taken from the event sequence
/// (whose row lock, on PostgreSQL, makes ids follow commit order), the rows
/// inserted thousands a statement, the honeypots' counters updated.
///
/// Each job with fingerprints gets statements of its own, so that the
/// count of rows each inserts tells how many of that job's events were new.
/// Events without a fingerprint can't be duplicates: all jobs' such events
/// share statements, and all of them are stored.
async fn write_group(db: &Db, group: &[Job]) -> Result<Vec<Written>> {
    let mut tx = db.begin().await?;
    let count: usize = group.iter().map(|job| job.events.len()).sum();
    let first_id = take_event_ids(&mut tx, count).await?;

    let mut results = Vec::with_capacity(group.len());
    let mut always_stored = Vec::new();
    let mut next_id = first_id;
    for job in group {
        let rows = event_rows(job, next_id);
        if job
            .events
            .iter()
            .any(|pending| pending.fingerprint.is_some())
        {
            let written = if job.want_rows {
                let ids = insert_rows_returning_ids(&mut tx, db, &rows).await?;
                stored_of(job, next_id, &ids)
            } else {
                let stored = insert_rows(&mut tx, db, &rows).await?;
                Written {
                    stored,
                    rows: Vec::new(),
                }
            };
            results.push(written);
        } else {
            results.push(stored_as_sent(job, next_id));
            always_stored.extend(rows);
        }
        next_id += job.events.len() as i64;
    }
    let stored = insert_rows(&mut tx, db, &always_stored).await?;
    if stored != always_stored.len() {
        return Err(Error::Internal(format!(
            "{} of {} events without a fingerprint were stored",
            stored,
            always_stored.len()
        )));
    }

    count_on_instances(&mut tx, group, &results).await?;
    tx.commit().await?;
    Ok(results)
}

/// Reserves `count` event ids; returns the first. Ids of rows that turn out
/// to be resent copies are simply never used.
///
/// The sequence never hands out an id at or below one already stored:
/// were a row inserted some other way (by hand, by a restore, or by an
/// older release still running during an upgrade, which takes ids from the
/// table's own counter), every later group would collide with it and fail.
/// The largest stored id is one step down the primary key.
async fn take_event_ids(tx: &mut Tx, count: usize) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE event_sequence SET last_id = $1 + ( \
             SELECT CASE WHEN COALESCE(MAX(id), 0) > event_sequence.last_id \
                         THEN MAX(id) ELSE event_sequence.last_id END \
             FROM honeypot_events) \
         WHERE id = 1 RETURNING last_id",
    )
    .bind(count as i64)
    .fetch_one(&mut **tx)
    .await?;
    let last_id: i64 = row.try_get("last_id")?;
    Ok(last_id - count as i64 + 1)
}

/// One event as the INSERT unpacks it: a JSON array, in column order.
#[derive(Serialize)]
struct EventRow<'a>(
    i64,
    i64,
    &'a str,
    &'a str,
    Option<u16>,
    Option<u16>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<String>,
    i64,
    i64,
    &'a str,
    String,
    Option<&'a str>,
);

/// A job's rows, numbered from `first_id`.
fn event_rows(job: &Job, first_id: i64) -> Vec<EventRow<'_>> {
    job.events
        .iter()
        .enumerate()
        .map(|(offset, pending)| {
            let event = &pending.event;
            EventRow(
                first_id + offset as i64,
                job.honeypot_id,
                event.event_type.as_str(),
                &event.source_ip,
                event.source_port,
                event.destination_port,
                event.protocol.as_deref(),
                event.username.as_deref(),
                event.password.as_ref().map(|password| password.expose()),
                event.command.as_deref(),
                event.session_id.as_deref(),
                event.payload.as_ref().map(|payload| payload.to_string()),
                event.occurred_at.millis(),
                job.received_at.millis(),
                pending.threat_level.as_str(),
                serde_json::to_string(&pending.threat_tags).expect("tags serialise"),
                pending.fingerprint.as_deref(),
            )
        })
        .collect()
}

/// Inserts `rows`, a few thousand a statement; rows whose fingerprint is
/// already stored for their honeypot are skipped by `ON CONFLICT … DO
/// NOTHING`. Returns how many were stored.
async fn insert_rows(tx: &mut Tx, db: &Db, rows: &[EventRow<'_>]) -> Result<usize> {
    let sql = insert_sql(db, "");
    let mut stored = 0;
    for chunk in json_chunks(rows) {
        let result = sqlx::query(&sql).bind(chunk).execute(&mut **tx).await?;
        stored += result.rows_affected() as usize;
    }
    Ok(stored)
}

/// As `insert_rows`, returning the ids stored: for the few events whose
/// sender wants them back and which may be resent copies.
async fn insert_rows_returning_ids(
    tx: &mut Tx,
    db: &Db,
    rows: &[EventRow<'_>],
) -> Result<Vec<i64>> {
    let sql = insert_sql(db, " RETURNING id");
    let mut ids = Vec::new();
    for chunk in json_chunks(rows) {
        for row in sqlx::query(&sql).bind(chunk).fetch_all(&mut **tx).await? {
            ids.push(row.try_get("id")?);
        }
    }
    Ok(ids)
}

fn insert_sql(db: &Db, returning: &str) -> String {
    format!(
        "INSERT INTO honeypot_events (id, honeypot_id, event_type, source_ip, source_port, \
             destination_port, protocol, username, password, command, session_id, payload, \
             occurred_at, received_at, threat_level, threat_tags, fingerprint) \
         SELECT CAST(item ->> 0 AS BIGINT), CAST(item ->> 1 AS BIGINT), item ->> 2, \
             item ->> 3, CAST(item ->> 4 AS BIGINT), CAST(item ->> 5 AS BIGINT), item ->> 6, \
             item ->> 7, item ->> 8, item ->> 9, item ->> 10, item ->> 11, \
             CAST(item ->> 12 AS BIGINT), CAST(item ->> 13 AS BIGINT), item ->> 14, \
             item ->> 15, item ->> 16 \
         FROM {} WHERE true \
         ON CONFLICT (honeypot_id, fingerprint) DO NOTHING{returning}",
        storage::json_array_rows(db.backend())
    )
}

/// `rows` as JSON arrays of at most `ROWS_PER_STATEMENT` rows and about
/// `BYTES_PER_STATEMENT` bytes each: events of up to a megabyte each (a
/// request's limit), or more in bulk, must not add up to a parameter that
/// PostgreSQL refuses (1 GB) or that holds much memory.
fn json_chunks(rows: &[EventRow<'_>]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut chunk = String::from("[");
    let mut in_chunk = 0;
    for row in rows {
        if in_chunk == ROWS_PER_STATEMENT || chunk.len() >= BYTES_PER_STATEMENT {
            chunk.push(']');
            chunks.push(std::mem::replace(&mut chunk, String::from("[")));
            in_chunk = 0;
        }
        if in_chunk > 0 {
            chunk.push(',');
        }
        chunk.push_str(&serde_json::to_string(row).expect("an event row serialises"));
        in_chunk += 1;
    }
    if in_chunk > 0 {
        chunk.push(']');
        chunks.push(chunk);
    }
    chunks
}

/// A job without fingerprints, all stored, its events numbered from `first_id`.
fn stored_as_sent(job: &Job, first_id: i64) -> Written {
    let ids: Vec<i64> = (first_id..).take(job.events.len()).collect();
    stored_of(job, first_id, &ids)
}

/// What a job stored: the events numbered from `first_id` whose ids are in
/// `stored_ids`, built in memory when the sender wants them back.
fn stored_of(job: &Job, first_id: i64, stored_ids: &[i64]) -> Written {
    let rows = if job.want_rows {
        stored_ids
            .iter()
            .filter_map(|id| {
                let pending = job.events.get(usize::try_from(id - first_id).ok()?)?;
                Some(pending.stored(*id, job.honeypot_id, job.received_at))
            })
            .collect()
    } else {
        Vec::new()
    };
    Written {
        stored: stored_ids.len(),
        rows,
    }
}

/// Adds what was stored to each honeypot's counters, one statement a honeypot.
async fn count_on_instances(tx: &mut Tx, group: &[Job], results: &[Written]) -> Result<()> {
    let mut by_honeypot: BTreeMap<i64, (usize, Timestamp)> = BTreeMap::new();
    for (job, written) in group.iter().zip(results).filter(|(_, w)| w.stored > 0) {
        let entry = by_honeypot
            .entry(job.honeypot_id)
            .or_insert((0, job.received_at));
        entry.0 += written.stored;
        entry.1 = entry.1.max(job.received_at);
    }

    for (honeypot_id, (stored, received_at)) in by_honeypot {
        sqlx::query(
            "UPDATE honeypot_instances SET event_count = event_count + $1, \
                 last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < $2 \
                                     THEN $2 ELSE last_seen_at END \
             WHERE id = $3",
        )
        .bind(stored as i64)
        .bind(received_at.millis())
        .bind(honeypot_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn row(id: i64, payload: &str) -> EventRow<'_> {
        EventRow(
            id,
            1,
            "scan",
            "192.0.2.1",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some(payload.to_string()),
            0,
            0,
            "low",
            "[]".to_string(),
            None,
        )
    }

    #[test]
    fn statements_are_cut_by_size_as_well_as_by_rows() {
        let large = "x".repeat(12 << 20);
        let rows: Vec<EventRow<'_>> = (1..=4).map(|id| row(id, &large)).collect();

        let chunks = json_chunks(&rows);

        let sizes: Vec<usize> = chunks
            .iter()
            .map(|chunk| serde_json::from_str::<Vec<Value>>(chunk).unwrap().len())
            .collect();
        assert_eq!(sizes, [3, 1]);
        assert!(chunks
            .iter()
            .all(|chunk| chunk.len() < BYTES_PER_STATEMENT + (13 << 20)));
    }

    #[test]
    fn small_rows_are_cut_by_count() {
        let rows: Vec<EventRow<'_>> = (0..ROWS_PER_STATEMENT as i64 + 1)
            .map(|id| row(id, "{}"))
            .collect();

        let sizes: Vec<usize> = json_chunks(&rows)
            .iter()
            .map(|chunk| serde_json::from_str::<Vec<Value>>(chunk).unwrap().len())
            .collect();

        assert_eq!(sizes, [ROWS_PER_STATEMENT, 1]);
        assert!(json_chunks(&[]).is_empty());
    }
}
