//! `GET /security/dashboard`: the whole security state in one call, read in
//! one snapshot so its numbers agree with each other; `GET /metrics` gives
//! the same numbers to Prometheus (`metrics.rs`).

mod metrics;

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::actions::{ActionRequest, ActionStatus};
use crate::auth::{Capability, Principal};
use crate::blocklist::{Block, EntityType};
use crate::detection::ThreatLevel;
use crate::error::Result;
use crate::honeypots::EventType;
use crate::policy::{load_policy, Mode};
use crate::server::AppState;
use crate::storage::Backend;
use crate::time::Timestamp;

const RECENT: i64 = 10;
const DAY_SECONDS: i64 = 24 * 3600;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_dashboard))
        .routes(routes!(metrics::get_metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Dashboard {
    pub generated_at: Timestamp,
    pub mode: Mode,
    pub policy: PolicySummary,
    pub incidents: IncidentSummary,
    pub blocklist: BlocklistSummary,
    pub honeypots: HoneypotSummary,
    pub actions: ActionSummary,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicySummary {
    pub version: i64,
    pub updated_at: Timestamp,
    pub auto_escalation_enabled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentSummary {
    pub open: i64,
    pub by_severity: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BlocklistSummary {
    pub active: i64,
    pub by_type: BTreeMap<String, i64>,
    pub expiring_24h: i64,
    pub recent: Vec<Block>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoneypotSummary {
    pub instances_total: i64,
    pub instances_active: i64,
    pub events_24h: i64,
    pub events_by_type_24h: BTreeMap<String, i64>,
    pub unprocessed: i64,
    pub top_sources_24h: Vec<SourceCount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceCount {
    pub source_ip: String,
    pub events: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActionSummary {
    pub pending: i64,
    pub by_status: BTreeMap<String, i64>,
    pub recent: Vec<ActionRequest>,
}

/// The whole security state.
#[utoipa::path(get, path = "/security/dashboard", tag = "dashboard",
    responses((status = 200, body = Dashboard)), security(("bearer" = [])))]
async fn get_dashboard(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Dashboard>> {
    principal.require(Capability::ReadSecurityState)?;

    Ok(Json(snapshot(&state).await?))
}

/// The dashboard's numbers, all read in one snapshot of the database.
async fn snapshot(state: &AppState) -> Result<Dashboard> {
    let now = state.clock.now();
    let mut tx = state.db.reader().begin().await?;
    if state.db.backend() == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    let policy = load_policy(&mut *tx).await?;
    let dashboard = Dashboard {
        generated_at: now,
        mode: policy.settings.mode,
        policy: PolicySummary {
            version: policy.version,
            updated_at: policy.updated_at,
            auto_escalation_enabled: policy.settings.auto_escalation_enabled,
        },
        incidents: incident_summary(&mut tx).await?,
        blocklist: blocklist_summary(&mut tx, now).await?,
        honeypots: honeypot_summary(&mut tx, now).await?,
        actions: action_summary(&mut tx).await?,
    };
    tx.commit().await?;
    Ok(dashboard)
}

/// Unresolved incidents (open or acknowledged), by severity.
async fn incident_summary(tx: &mut Transaction<'static, Any>) -> Result<IncidentSummary> {
    let rows = sqlx::query(
        "SELECT severity, COUNT(*) AS count FROM incidents WHERE status <> 'resolved' \
         GROUP BY severity",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut by_severity: BTreeMap<String, i64> = [
        ThreatLevel::Low,
        ThreatLevel::Medium,
        ThreatLevel::High,
        ThreatLevel::Critical,
    ]
    .into_iter()
    .map(|level| (level.as_str().to_string(), 0))
    .collect();
    for row in &rows {
        let severity: String = row.try_get("severity")?;
        *by_severity.entry(severity).or_insert(0) += row.try_get::<i64, _>("count")?;
    }
    Ok(IncidentSummary {
        open: by_severity.values().sum(),
        by_severity,
    })
}

async fn blocklist_summary(
    tx: &mut Transaction<'static, Any>,
    now: Timestamp,
) -> Result<BlocklistSummary> {
    let live = "deactivated_at IS NULL AND (expires_at IS NULL OR expires_at > $1)";
    let rows = sqlx::query(&format!(
        "SELECT entity_type, COUNT(*) AS count FROM blocks WHERE {live} GROUP BY entity_type"
    ))
    .bind(now.millis())
    .fetch_all(&mut **tx)
    .await?;
    let mut by_type: BTreeMap<String, i64> = EntityType::ALL
        .iter()
        .map(|kind| (kind.as_str().to_string(), 0))
        .collect();
    for row in &rows {
        by_type.insert(row.try_get("entity_type")?, row.try_get("count")?);
    }

    let expiring = sqlx::query(&format!(
        "SELECT COUNT(*) AS count FROM blocks WHERE {live} AND expires_at <= $2"
    ))
    .bind(now.millis())
    .bind(now.plus_seconds(DAY_SECONDS).unwrap_or(now).millis())
    .fetch_one(&mut **tx)
    .await?;

    let recent = sqlx::query(&format!(
        "SELECT {} FROM blocks WHERE {live} ORDER BY id DESC LIMIT {RECENT}",
        crate::blocklist::BLOCK_COLUMNS
    ))
    .bind(now.millis())
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| Block::from_row(row, now))
    .collect::<Result<Vec<_>>>()?;

    Ok(BlocklistSummary {
        active: by_type.values().sum(),
        by_type,
        expiring_24h: expiring.try_get("count")?,
        recent,
    })
}

async fn honeypot_summary(
    tx: &mut Transaction<'static, Any>,
    now: Timestamp,
) -> Result<HoneypotSummary> {
    let instances = sqlx::query(
        "SELECT COUNT(*) AS total, \
                COUNT(*) - COUNT(deactivated_at) AS active \
         FROM honeypot_instances",
    )
    .fetch_one(&mut **tx)
    .await?;

    let since = now.minus_seconds(DAY_SECONDS).millis();
    let rows = sqlx::query(
        "SELECT event_type, COUNT(*) AS count FROM honeypot_events \
         WHERE occurred_at >= $1 GROUP BY event_type",
    )
    .bind(since)
    .fetch_all(&mut **tx)
    .await?;
    let mut by_type: BTreeMap<String, i64> = EventType::ALL
        .iter()
        .map(|kind| (kind.as_str().to_string(), 0))
        .collect();
    for row in &rows {
        by_type.insert(row.try_get("event_type")?, row.try_get("count")?);
    }

    let unprocessed = sqlx::query(
        "SELECT COUNT(*) AS count FROM honeypot_events \
         WHERE id > (SELECT judged_through FROM engine_state)",
    )
    .fetch_one(&mut **tx)
    .await?;

    let top_sources = sqlx::query(
        "SELECT source_ip, COUNT(*) AS events FROM honeypot_events WHERE occurred_at >= $1 \
         GROUP BY source_ip ORDER BY events DESC, source_ip LIMIT 10",
    )
    .bind(since)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| {
        Ok(SourceCount {
            source_ip: row.try_get("source_ip")?,
            events: row.try_get("events")?,
        })
    })
    .collect::<Result<Vec<_>>>()?;

    Ok(HoneypotSummary {
        instances_total: instances.try_get("total")?,
        instances_active: instances.try_get("active")?,
        events_24h: by_type.values().sum(),
        events_by_type_24h: by_type,
        unprocessed: unprocessed.try_get("count")?,
        top_sources_24h: top_sources,
    })
}

async fn action_summary(tx: &mut Transaction<'static, Any>) -> Result<ActionSummary> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS count FROM action_requests GROUP BY status")
        .fetch_all(&mut **tx)
        .await?;
    let mut by_status: BTreeMap<String, i64> = ActionStatus::ALL
        .iter()
        .map(|status| (status.as_str().to_string(), 0))
        .collect();
    for row in &rows {
        by_status.insert(row.try_get("status")?, row.try_get("count")?);
    }

    let recent = sqlx::query(&format!(
        "SELECT {} FROM action_requests ORDER BY id DESC LIMIT {RECENT}",
        crate::actions::ACTION_COLUMNS
    ))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(ActionRequest::from_row)
    .collect::<Result<Vec<_>>>()?;

    Ok(ActionSummary {
        pending: by_status.get("pending").copied().unwrap_or(0),
        by_status,
        recent,
    })
}
