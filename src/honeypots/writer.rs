//! Group commit for honeypot events.
//!
//! Every event write — single POSTs and bulk batches alike — goes through
//! one writer task. It takes the first waiting job, gathers whatever else is
//! queued behind it, and commits the lot in one transaction; only then does
//! each caller get its answer. A 2xx therefore always means committed, while
//! the cost of a commit (an fsync on SQLite) is shared by every request that
//! arrived meanwhile. One writer also means events are numbered in commit
//! order, which lets a reader resume "after id N" without gaps.

use std::collections::{BTreeMap, HashSet};
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
const ROWS_PER_STATEMENT: usize = 5_000;

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
/// inserted a few thousand a statement, the honeypots' counters updated.
async fn write_group(db: &Db, group: &[Job]) -> Result<Vec<Written>> {
    let mut tx = db.begin().await?;
    let count: usize = group.iter().map(|job| job.events.len()).sum();
    let first_id = take_event_ids(&mut tx, count).await?;

    let rows = event_rows(group, first_id);
    let mut stored_ids = HashSet::with_capacity(count);
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        stored_ids.extend(insert_rows(&mut tx, db, chunk).await?);
    }

    let results = written_by_job(group, first_id, &stored_ids);
    count_on_instances(&mut tx, group, &results).await?;
    tx.commit().await?;
    Ok(results)
}

/// Reserves `count` event ids; returns the first. Ids of rows that turn out
/// to be resent copies are simply never used.
async fn take_event_ids(tx: &mut Tx, count: usize) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE event_sequence SET last_id = last_id + $1 WHERE id = 1 RETURNING last_id",
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

/// The group's rows, numbered from `first_id` in job order.
fn event_rows(group: &[Job], first_id: i64) -> Vec<EventRow<'_>> {
    let pending = group
        .iter()
        .flat_map(|job| job.events.iter().map(move |pending| (job, pending)));
    pending
        .enumerate()
        .map(|(offset, (job, pending))| {
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

/// One INSERT for `rows`; rows whose fingerprint is already stored for their
/// honeypot are skipped by `ON CONFLICT … DO NOTHING`. Returns the ids stored.
async fn insert_rows(tx: &mut Tx, db: &Db, rows: &[EventRow<'_>]) -> Result<Vec<i64>> {
    let sql = format!(
        "INSERT INTO honeypot_events (id, honeypot_id, event_type, source_ip, source_port, \
             destination_port, protocol, username, password, command, session_id, payload, \
             occurred_at, received_at, threat_level, threat_tags, fingerprint) \
         SELECT CAST(item ->> 0 AS BIGINT), CAST(item ->> 1 AS BIGINT), item ->> 2, \
             item ->> 3, CAST(item ->> 4 AS BIGINT), CAST(item ->> 5 AS BIGINT), item ->> 6, \
             item ->> 7, item ->> 8, item ->> 9, item ->> 10, item ->> 11, \
             CAST(item ->> 12 AS BIGINT), CAST(item ->> 13 AS BIGINT), item ->> 14, \
             item ->> 15, item ->> 16 \
         FROM {} WHERE true \
         ON CONFLICT (honeypot_id, fingerprint) DO NOTHING RETURNING id",
        storage::json_array_rows(db.backend())
    );
    let rows = serde_json::to_string(rows).expect("event rows serialise");
    let stored = sqlx::query(&sql).bind(rows).fetch_all(&mut **tx).await?;
    stored.iter().map(|row| Ok(row.try_get("id")?)).collect()
}

/// What each job stored, by the ids its events were given.
fn written_by_job(group: &[Job], first_id: i64, stored_ids: &HashSet<i64>) -> Vec<Written> {
    let mut next_id = first_id;
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        let mut written = Written::default();
        for pending in &job.events {
            let id = next_id;
            next_id += 1;
            if !stored_ids.contains(&id) {
                continue;
            }
            written.stored += 1;
            if job.want_rows {
                let row = pending.stored(id, job.honeypot_id, job.received_at);
                written.rows.push(row);
            }
        }
        results.push(written);
    }
    results
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
