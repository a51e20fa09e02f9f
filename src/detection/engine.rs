//! Heimdall's loop: judges stored events in order, records how far it got
//! in the same transaction as the incidents and requests they lead to, and
//! on a steady tick sweeps expired blocks and steps the mode down.
//!
//! Event ids follow commit order (the event writer takes them under the
//! event sequence's row lock), so "every event after the last one judged"
//! is a prefix that only grows: after a restart the engine resumes exactly
//! where it stopped, and no event commits behind its position. Recording
//! the position and judging commit together, so none is judged twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::sync::Notify;

use super::{auto_block, escalation, ThreatLevel};
use crate::actions::{self, FiledRequest, AUTO_APPROVER};
use crate::blocklist::{self, SharedIndex};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::incidents::{self, SourceActivity};
use crate::policy::{load_policy, SharedPolicy};
use crate::storage::{self, Backend, Db, Tx};
use crate::time::Timestamp;

/// Events judged per transaction.
const BATCH: i64 = 10_000;

/// How often expiry and de-escalation are looked at when nothing arrives.
const TICK: Duration = Duration::from_secs(1);

/// After a wake-up, how long to let events gather before judging: one batch
/// of many events costs one transaction (and on SQLite one fsync and one
/// turn of the single writer) instead of one per commit of the ingest path.
const GATHER: Duration = Duration::from_millis(50);

/// Key for `pg_try_advisory_xact_lock`: among replicas sharing PostgreSQL,
/// one judges a batch at a time.
const ENGINE_LOCK_KEY: i64 = 0x4845_494d_4441_4c4c;

/// An event as the engine reads it.
#[derive(Debug, Clone)]
pub struct JudgedEvent {
    pub id: i64,
    pub honeypot_id: i64,
    pub event_type: String,
    pub source_ip: String,
    pub occurred_at: Timestamp,
    pub threat_level: ThreatLevel,
}

/// The engine: clone-cheap, started once per server.
#[derive(Clone)]
pub struct Engine {
    db: Db,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    blocklist: SharedIndex,
    /// Escalation changes the mode through action requests; what they
    /// commit reaches the rate limiter through this.
    policy: SharedPolicy,
}

impl Engine {
    pub fn new(
        db: Db,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
        blocklist: SharedIndex,
        policy: SharedPolicy,
    ) -> Self {
        Self {
            db,
            clock,
            wake,
            blocklist,
            policy,
        }
    }

    /// Runs until the task is aborted. Errors are logged and retried on the
    /// next round, never fatal: the events wait, unprocessed, in the table.
    pub async fn run(self) {
        let mut last_tick = tokio::time::Instant::now();
        loop {
            let judged = self.judge_next_batch().await.unwrap_or_else(|error| {
                tracing::error!(%error, "judging events failed; retrying");
                0
            });
            if let Err(error) = self.execute_auto_approved().await {
                tracing::error!(%error, "executing auto-approved requests failed");
            }

            // Expiry and stepping down happen when idle, and at least every
            // tick while events keep arriving.
            if judged == 0 || last_tick.elapsed() >= TICK {
                if let Err(error) = self.tick().await {
                    tracing::error!(%error, "engine tick failed");
                }
                last_tick = tokio::time::Instant::now();
            }

            // A full batch means a backlog: judge on at once. Otherwise let
            // events gather, so that a steady trickle costs a transaction
            // every `GATHER` rather than one for each commit of the writer.
            if judged >= BATCH as usize {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => tokio::time::sleep(GATHER).await,
                () = tokio::time::sleep(TICK) => {},
            }
        }
    }

    /// Judges up to `BATCH` unprocessed events; returns how many.
    pub async fn judge_next_batch(&self) -> Result<usize> {
        let mut tx = self.db.begin().await?;
        if !self.holds_engine_lock(&mut tx).await? {
            return Ok(0);
        }
        let judged_through = judged_through(&mut tx).await?;
        let events = events_after(&mut tx, self.db.backend(), judged_through).await?;
        let Some(last) = events.last().map(|event| event.id) else {
            return Ok(0);
        };
        // Read after the batch, so that every event in it arrived before
        // `now`: a block that ended just before a source's next burst is
        // then seen as ended, not as still holding the source.
        let now = self.clock.now();

        let policy = load_policy(&mut *tx).await?;
        let groups = by_source(&events);
        let activities: Vec<SourceActivity> = groups
            .iter()
            .map(|(source, events)| activity_of(source, events))
            .collect();
        let incident_of =
            incidents::record_activities(&mut tx, self.db.backend(), now, &activities).await?;
        let suspects = auto_block::sources_near_threshold(
            &mut tx,
            self.db.backend(),
            &policy.settings,
            &groups,
        )
        .await?;
        let mut filed = Vec::new();
        for (source_ip, events) in groups
            .iter()
            .filter(|(source, _)| suspects.contains(**source))
        {
            let request = auto_block::consider(&mut tx, now, &policy.settings, events).await?;
            if let Some(request) = request {
                if let Some(incident) = incident_of.get(*source_ip) {
                    incidents::link_action_request(&mut tx, *incident, request.request.id).await?;
                }
                filed.push(request);
            }
        }
        filed.extend(escalation::consider_raising(&mut tx, now, &policy.settings).await?);
        record_position(&mut tx, last).await?;
        tx.commit().await?;

        tracing::debug!(
            events = events.len(),
            requests = filed.len(),
            "events judged"
        );
        self.execute(filed).await;
        Ok(events.len())
    }

    /// Executes requests the policy approved, after their filing committed.
    async fn execute(&self, filed: Vec<FiledRequest>) {
        for request in filed.into_iter().filter(|filed| filed.auto_approved) {
            let id = request.request.id;
            if let Err(error) = self.execute_as_policy(id).await {
                tracing::warn!(action_request.id = id, %error, "auto-approved request failed");
            }
        }
    }

    /// Executes one request the policy approved, as the auto-approver.
    async fn execute_as_policy(&self, id: i64) -> Result<actions::ActionRequest> {
        let now = self.clock.now();
        actions::execute_action_request(
            &self.db,
            &self.blocklist,
            &self.policy,
            now,
            id,
            AUTO_APPROVER,
            None,
        )
        .await
    }

    /// Picks up approved-by-policy requests left unexecuted (a stop between
    /// filing and execution); execution is exactly-once, so a race is harmless.
    async fn execute_auto_approved(&self) -> Result<()> {
        for id in actions::auto_approved_backlog(&self.db).await? {
            match self.execute_as_policy(id).await {
                Ok(_) | Err(Error::Conflict(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// What does not wait for events: expiry and stepping the mode down.
    pub async fn tick(&self) -> Result<()> {
        let now = self.clock.now();
        let expired = blocklist::expire_due_blocks(&self.db, now).await?;
        self.blocklist.apply(expired);

        let mut tx = self.db.begin().await?;
        if !self.holds_engine_lock(&mut tx).await? {
            return Ok(());
        }
        let policy = load_policy(&mut *tx).await?;
        let filed = escalation::consider_lowering(&mut tx, now, &policy).await?;
        tx.commit().await?;
        self.execute(filed.into_iter().collect()).await;
        Ok(())
    }

    async fn holds_engine_lock(&self, tx: &mut Tx) -> Result<bool> {
        if self.db.backend() != Backend::Postgres {
            return Ok(true);
        }
        let row = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS held")
            .bind(ENGINE_LOCK_KEY)
            .fetch_one(&mut **tx)
            .await?;
        Ok(row.try_get::<bool, _>("held")?)
    }
}

/// The id of the last event judged.
async fn judged_through(tx: &mut Tx) -> Result<i64> {
    let row = sqlx::query("SELECT judged_through FROM engine_state WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?;
    Ok(row.try_get("judged_through")?)
}

/// The next batch of events after `judged_through`, oldest first.
async fn events_after(
    tx: &mut Tx,
    backend: Backend,
    judged_through: i64,
) -> Result<Vec<JudgedEvent>> {
    let sql = storage::rows_as_json(
        backend,
        "id, honeypot_id, event_type, source_ip, occurred_at, threat_level",
        "SELECT id, honeypot_id, event_type, source_ip, occurred_at, threat_level \
         FROM honeypot_events WHERE id > $1 ORDER BY id LIMIT $2",
    );
    let row = sqlx::query(&sql)
        .bind(judged_through)
        .bind(BATCH)
        .fetch_one(&mut **tx)
        .await?;
    let rows: Vec<(i64, i64, String, String, i64, String)> = storage::parse_json_rows(&row)?;

    let mut events = rows
        .into_iter()
        .map(
            |(id, honeypot_id, event_type, source_ip, occurred_at, level)| {
                Ok(JudgedEvent {
                    id,
                    honeypot_id,
                    event_type,
                    source_ip,
                    occurred_at: Timestamp::from_millis(occurred_at).ok_or_else(|| {
                        Error::Internal(format!("event {id} holds an out-of-range instant"))
                    })?,
                    threat_level: ThreatLevel::parse(&level)
                        .ok_or_else(|| Error::Internal(format!("stored threat level {level}")))?,
                })
            },
        )
        .collect::<Result<Vec<_>>>()?;
    events.sort_unstable_by_key(|event| event.id);
    Ok(events)
}

/// Events grouped by source, each group in id (commit) order.
fn by_source(events: &[JudgedEvent]) -> BTreeMap<&str, Vec<JudgedEvent>> {
    let mut groups: BTreeMap<&str, Vec<JudgedEvent>> = BTreeMap::new();
    for event in events {
        groups
            .entry(event.source_ip.as_str())
            .or_default()
            .push(event.clone());
    }
    groups
}

fn activity_of(source_ip: &str, events: &[JudgedEvent]) -> SourceActivity {
    let mut type_counts = BTreeMap::new();
    for event in events {
        *type_counts.entry(event.event_type.clone()).or_insert(0) += 1;
    }
    SourceActivity {
        source_ip: source_ip.to_string(),
        event_count: events.len() as i64,
        worst: events
            .iter()
            .map(|event| event.threat_level)
            .max()
            .unwrap_or(ThreatLevel::Info),
        first_seen_at: events
            .iter()
            .map(|event| event.occurred_at)
            .min()
            .expect("a group"),
        last_seen_at: events
            .iter()
            .map(|event| event.occurred_at)
            .max()
            .expect("a group"),
        type_counts,
        honeypot_ids: events.iter().map(|event| event.honeypot_id).collect(),
    }
}

async fn record_position(tx: &mut Tx, last_judged: i64) -> Result<()> {
    sqlx::query("UPDATE engine_state SET judged_through = $1 WHERE id = 1")
        .bind(last_judged)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
