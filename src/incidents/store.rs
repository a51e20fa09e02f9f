//! Recording activity into incidents, and reading them with their links.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Any, Executor, Row};

use super::model::{Incident, IncidentColumns, IncidentRow, IncidentStatus, INCIDENT_COLUMNS};
use crate::detection::ThreatLevel;
use crate::error::{Error, Result};
use crate::storage::{self, Backend, Tx};
use crate::time::Timestamp;

/// How long a source may stay quiet before its next event opens a new
/// incident instead of extending the current one.
pub const INCIDENT_QUIET_SECONDS: i64 = 24 * 3600;

/// One source's newly judged events.
#[derive(Debug, Clone)]
pub struct SourceActivity {
    pub source_ip: String,
    pub event_count: i64,
    pub worst: ThreatLevel,
    pub first_seen_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub type_counts: BTreeMap<String, i64>,
    pub honeypot_ids: BTreeSet<i64>,
}

/// Adds each source's activity to its active incident, or opens one, with a
/// handful of statements per batch whatever the number of sources: the
/// sources travel as one JSON parameter (see `storage::json_array_rows`).
/// Activity that is only informational (connections) extends an incident
/// but never opens one. Returns the incident of each source that has one.
pub async fn record_activities(
    tx: &mut Tx,
    backend: Backend,
    now: Timestamp,
    activities: &[SourceActivity],
) -> Result<BTreeMap<String, i64>> {
    if activities.is_empty() {
        return Ok(BTreeMap::new());
    }
    let current = active_incidents(tx, backend, activities).await?;

    let mut incidents = BTreeMap::new();
    let mut extensions = Vec::new();
    let mut new_incidents = Vec::new();
    for activity in activities {
        match current.get(&activity.source_ip) {
            Some(row) => {
                incidents.insert(activity.source_ip.clone(), row.id);
                extensions.push((row, activity));
            }
            None if activity.worst == ThreatLevel::Info => {}
            None => new_incidents.push(activity),
        }
    }
    extend_incidents(tx, backend, now, &extensions).await?;
    incidents.extend(open_incidents(tx, backend, now, &new_incidents).await?);

    let links: Vec<(i64, i64)> = activities
        .iter()
        .filter_map(|activity| Some((*incidents.get(&activity.source_ip)?, activity)))
        .flat_map(|(incident, activity)| {
            activity
                .honeypot_ids
                .iter()
                .map(move |honeypot| (incident, *honeypot))
        })
        .collect();
    link_honeypots(tx, backend, &links).await?;
    Ok(incidents)
}

/// Each source's newest unresolved incident that its new activity falls
/// within (at most `INCIDENT_QUIET_SECONDS` after the incident's last event).
async fn active_incidents(
    tx: &mut Tx,
    backend: Backend,
    activities: &[SourceActivity],
) -> Result<BTreeMap<String, IncidentRow>> {
    let earliest = activities
        .iter()
        .map(|activity| activity.first_seen_at)
        .min()
        .expect("activities are not empty");
    let since = earliest.minus_seconds(INCIDENT_QUIET_SECONDS);
    let sources: Vec<[&str; 1]> = activities
        .iter()
        .map(|activity| [activity.source_ip.as_str()])
        .collect();
    let select = format!(
        "SELECT incidents.id, source_ip, severity, status, event_count, first_seen_at, \
             last_seen_at, type_counts \
         FROM {} JOIN incidents ON incidents.source_ip = batch.item ->> 0 \
         WHERE incidents.status <> 'resolved' AND incidents.last_seen_at >= $2",
        storage::json_array_rows(backend)
    );
    let sql = storage::rows_as_json(backend, INCIDENT_COLUMNS, &select);
    let row = sqlx::query(&sql)
        .bind(serde_json::to_string(&sources).expect("strings serialise"))
        .bind(since.millis())
        .fetch_one(&mut **tx)
        .await?;
    let mut rows = storage::parse_json_rows::<IncidentColumns>(&row)?
        .into_iter()
        .map(IncidentRow::from_columns)
        .collect::<Result<Vec<_>>>()?;
    rows.sort_unstable_by_key(|row| row.id);

    let by_source: BTreeMap<&str, &SourceActivity> = activities
        .iter()
        .map(|activity| (activity.source_ip.as_str(), activity))
        .collect();
    let mut current = BTreeMap::new();
    for row in rows {
        let activity = by_source[row.source_ip.as_str()];
        if row.last_seen_at >= activity.first_seen_at.minus_seconds(INCIDENT_QUIET_SECONDS) {
            current.insert(row.source_ip.clone(), row);
        }
    }
    Ok(current)
}

/// One INSERT for the sources that need a new incident.
async fn open_incidents(
    tx: &mut Tx,
    backend: Backend,
    now: Timestamp,
    activities: &[&SourceActivity],
) -> Result<Vec<(String, i64)>> {
    if activities.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<_> = activities
        .iter()
        .map(|activity| {
            (
                &activity.source_ip,
                activity.worst.as_str(),
                activity.event_count,
                activity.first_seen_at.millis(),
                activity.last_seen_at.millis(),
                serde_json::to_string(&activity.type_counts).expect("counts serialise"),
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO incidents (source_ip, severity, status, event_count, first_seen_at, \
             last_seen_at, type_counts, created_at, updated_at) \
         SELECT item ->> 0, item ->> 1, 'open', CAST(item ->> 2 AS BIGINT), \
             CAST(item ->> 3 AS BIGINT), CAST(item ->> 4 AS BIGINT), item ->> 5, $2, $2 \
         FROM {} RETURNING id, source_ip",
        storage::json_array_rows(backend)
    );
    let opened = sqlx::query(&sql)
        .bind(serde_json::to_string(&rows).expect("rows serialise"))
        .bind(now.millis())
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("source_ip")?, row.try_get("id")?)))
        .collect::<Result<Vec<(String, i64)>>>()?;
    tracing::info!(incidents = opened.len(), "incidents opened");
    Ok(opened)
}

/// One UPDATE for every incident that new activity extends: severity the
/// worse of the two, counts added, the seen span widened.
async fn extend_incidents(
    tx: &mut Tx,
    backend: Backend,
    now: Timestamp,
    extensions: &[(&IncidentRow, &SourceActivity)],
) -> Result<()> {
    if extensions.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = extensions
        .iter()
        .map(|(current, activity)| {
            let mut type_counts = current.type_counts.clone();
            for (kind, count) in &activity.type_counts {
                *type_counts.entry(kind.clone()).or_default() += count;
            }
            (
                current.id,
                current.severity.max(activity.worst).as_str(),
                activity.event_count,
                current.first_seen_at.min(activity.first_seen_at).millis(),
                current.last_seen_at.max(activity.last_seen_at).millis(),
                serde_json::to_string(&type_counts).expect("counts serialise"),
            )
        })
        .collect();
    let sql = format!(
        "UPDATE incidents SET severity = batch.item ->> 1, \
             event_count = incidents.event_count + CAST(batch.item ->> 2 AS BIGINT), \
             first_seen_at = CAST(batch.item ->> 3 AS BIGINT), \
             last_seen_at = CAST(batch.item ->> 4 AS BIGINT), \
             type_counts = batch.item ->> 5, updated_at = $2 \
         FROM {} WHERE incidents.id = CAST(batch.item ->> 0 AS BIGINT)",
        storage::json_array_rows(backend)
    );
    sqlx::query(&sql)
        .bind(serde_json::to_string(&rows).expect("rows serialise"))
        .bind(now.millis())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Links `(incident, honeypot)` pairs in one statement.
async fn link_honeypots(tx: &mut Tx, backend: Backend, pairs: &[(i64, i64)]) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO incident_links (incident_id, kind, ref_id) \
         SELECT CAST(item ->> 0 AS BIGINT), 'honeypot', CAST(item ->> 1 AS BIGINT) \
         FROM {} WHERE true \
         ON CONFLICT (incident_id, kind, ref_id) DO NOTHING",
        storage::json_array_rows(backend)
    );
    sqlx::query(&sql)
        .bind(serde_json::to_string(pairs).expect("pairs serialise"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records that incident `incident_id` led to action request `request_id`.
pub async fn link_action_request(tx: &mut Tx, incident_id: i64, request_id: i64) -> Result<()> {
    link(tx, incident_id, "action_request", request_id).await
}

async fn link(tx: &mut Tx, incident_id: i64, kind: &str, ref_id: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO incident_links (incident_id, kind, ref_id) VALUES ($1, $2, $3) \
         ON CONFLICT (incident_id, kind, ref_id) DO NOTHING",
    )
    .bind(incident_id)
    .bind(kind)
    .bind(ref_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Attaches links, linked blocks and summaries to incident rows, with one
/// query for the links and one for the blocks whatever the number of rows.
pub async fn with_links<'e, E>(executor: E, rows: Vec<IncidentRow>) -> Result<Vec<Incident>>
where
    E: Executor<'e, Database = Any> + Copy,
{
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows.iter().map(|row| row.id.to_string()).collect();
    let links = sqlx::query(&format!(
        "SELECT incident_id, kind, ref_id FROM incident_links WHERE incident_id IN ({}) \
         ORDER BY ref_id",
        ids.join(", ")
    ))
    .fetch_all(executor)
    .await?;
    let mut honeypots: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut requests: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for link in &links {
        let incident: i64 = link.try_get("incident_id")?;
        let kind: String = link.try_get("kind")?;
        let target = if kind == "honeypot" {
            &mut honeypots
        } else {
            &mut requests
        };
        target
            .entry(incident)
            .or_default()
            .push(link.try_get("ref_id")?);
    }

    let blocks =
        blocks_by_request(executor, requests.values().flatten().copied().collect()).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let honeypot_ids = honeypots.remove(&row.id).unwrap_or_default();
            let action_request_ids = requests.remove(&row.id).unwrap_or_default();
            let block_ids = action_request_ids
                .iter()
                .filter_map(|request| blocks.get(request))
                .flatten()
                .copied()
                .collect();
            Incident {
                summary: row.summary(honeypot_ids.len()),
                id: row.id,
                source_ip: row.source_ip,
                severity: row.severity,
                status: row.status,
                event_count: row.event_count,
                first_seen_at: row.first_seen_at,
                last_seen_at: row.last_seen_at,
                honeypot_ids,
                action_request_ids,
                block_ids,
            }
        })
        .collect())
}

async fn blocks_by_request<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    request_ids: Vec<i64>,
) -> Result<BTreeMap<i64, Vec<i64>>> {
    let mut blocks: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    if request_ids.is_empty() {
        return Ok(blocks);
    }
    let ids: Vec<String> = request_ids.iter().map(i64::to_string).collect();
    let rows = sqlx::query(&format!(
        "SELECT id, action_request_id FROM blocks WHERE action_request_id IN ({}) ORDER BY id",
        ids.join(", ")
    ))
    .fetch_all(executor)
    .await?;
    for row in &rows {
        blocks
            .entry(row.try_get("action_request_id")?)
            .or_default()
            .push(row.try_get("id")?);
    }
    Ok(blocks)
}

/// open → acknowledged → resolved, or open → resolved; anything else is 409.
/// The `WHERE status IN (…)` makes a racing second caller see zero rows.
pub async fn transition_incident(
    tx: &mut Tx,
    now: Timestamp,
    id: i64,
    to: IncidentStatus,
) -> Result<IncidentRow> {
    let from = match to {
        IncidentStatus::Acknowledged => "('open')",
        IncidentStatus::Resolved => "('open', 'acknowledged')",
        IncidentStatus::Open => "()",
    };
    let resolved_at = (to == IncidentStatus::Resolved).then_some(now.millis());
    let sql = format!(
        "UPDATE incidents SET status = $1, updated_at = $2, resolved_at = $3 \
         WHERE id = $4 AND status IN {from} RETURNING {INCIDENT_COLUMNS}"
    );
    let sql = if to == IncidentStatus::Open {
        None
    } else {
        Some(sql)
    };
    let updated = match sql {
        Some(sql) => {
            sqlx::query(&sql)
                .bind(to.as_str())
                .bind(now.millis())
                .bind(resolved_at)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?
        }
        None => None,
    };
    match updated {
        Some(row) => IncidentRow::from_row(&row),
        None => {
            let current = find_incident_row(&mut **tx, id).await?;
            Err(Error::Conflict(format!(
                "incident {id} is {}; it cannot become {}",
                current.status.as_str(),
                to.as_str()
            )))
        }
    }
}

/// One incident row, or 404.
pub async fn find_incident_row<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    id: i64,
) -> Result<IncidentRow> {
    let row = sqlx::query(&format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| Error::NotFound(format!("no incident with id {id}")))?;
    IncidentRow::from_row(&row)
}
