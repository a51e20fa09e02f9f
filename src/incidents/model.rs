//! The incident record as answered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::detection::ThreatLevel;
use crate::error::{Error, Result};
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Open,
    Acknowledged,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Open, Self::Acknowledged, Self::Resolved]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// What one source did while its incident stayed active.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Incident {
    pub id: i64,
    pub source_ip: String,
    /// The worst threat level among its events.
    pub severity: ThreatLevel,
    pub status: IncidentStatus,
    pub event_count: i64,
    pub first_seen_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub honeypot_ids: Vec<i64>,
    pub action_request_ids: Vec<i64>,
    /// Blocks created by its action requests.
    pub block_ids: Vec<i64>,
    pub summary: String,
}

pub const INCIDENT_COLUMNS: &str =
    "id, source_ip, severity, status, event_count, first_seen_at, last_seen_at, type_counts";

/// An incident's stored columns, in `INCIDENT_COLUMNS` order: as a row
/// gives them, or as a JSON array (`storage::rows_as_json`).
#[derive(Debug, Deserialize)]
pub struct IncidentColumns(i64, String, String, String, i64, i64, i64, String);

/// An incident row before its links are attached.
#[derive(Debug, Clone)]
pub struct IncidentRow {
    pub id: i64,
    pub source_ip: String,
    pub severity: ThreatLevel,
    pub status: IncidentStatus,
    pub event_count: i64,
    pub first_seen_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub type_counts: BTreeMap<String, i64>,
}

impl IncidentRow {
    pub fn from_row(row: &AnyRow) -> Result<Self> {
        Self::from_columns(IncidentColumns(
            row.try_get("id")?,
            row.try_get("source_ip")?,
            row.try_get("severity")?,
            row.try_get("status")?,
            row.try_get("event_count")?,
            row.try_get("first_seen_at")?,
            row.try_get("last_seen_at")?,
            row.try_get("type_counts")?,
        ))
    }

    /// From the stored columns, in `INCIDENT_COLUMNS` order, however read.
    pub fn from_columns(columns: IncidentColumns) -> Result<Self> {
        let IncidentColumns(id, source_ip, severity, status, count, first, last, types) = columns;
        let instant = |millis: i64| {
            Timestamp::from_millis(millis)
                .ok_or_else(|| Error::Internal(format!("incident {id}: an instant out of range")))
        };
        Ok(IncidentRow {
            id,
            source_ip,
            severity: ThreatLevel::parse(&severity)
                .ok_or_else(|| Error::Internal(format!("stored severity {severity}")))?,
            status: IncidentStatus::parse(&status)
                .ok_or_else(|| Error::Internal(format!("stored incident status {status}")))?,
            event_count: count,
            first_seen_at: instant(first)?,
            last_seen_at: instant(last)?,
            type_counts: serde_json::from_str(&types)
                .map_err(|error| Error::Internal(format!("incident {id} type counts: {error}")))?,
        })
    }

    /// A sentence an analyst can read in a list.
    pub fn summary(&self, honeypots: usize) -> String {
        let mut kinds: Vec<(&String, &i64)> = self.type_counts.iter().collect();
        kinds.sort_by(|left, right| right.1.cmp(left.1).then(left.0.cmp(right.0)));
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(kind, count)| format!("{count} {kind}"))
            .collect();
        let plural = if honeypots == 1 { "" } else { "s" };
        format!(
            "{} events from {} on {honeypots} honeypot{plural} ({}); worst {}",
            self.event_count,
            self.source_ip,
            kinds.join(", "),
            self.severity.as_str()
        )
    }
}
