//! Action requests as stored and answered.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::storage;
use crate::time::Timestamp;

/// Who asked for an action. It follows from the principal and cannot be
/// chosen: detectors and the built-in engine are `heimdall`, the policy
/// owner is `tyr`, analysts and admins are `human`, and the server's own
/// escalation logic is `system`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Heimdall,
    Tyr,
    System,
    Human,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Heimdall => "heimdall",
            Source::Tyr => "tyr",
            Source::System => "system",
            Source::Human => "human",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Source::Heimdall, Source::Tyr, Source::System, Source::Human]
            .into_iter()
            .find(|source| source.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    BlockEntity,
    UnblockEntity,
    SetMode,
    UpdatePolicy,
}

impl ActionType {
    /// What a principal must be allowed to do directly to approve or
    /// execute this action: approving a change is making it.
    pub fn capability(self) -> crate::auth::Capability {
        use crate::auth::Capability;
        match self {
            ActionType::BlockEntity | ActionType::UnblockEntity => Capability::ManageBlocks,
            // The mode is a field of the policy.
            ActionType::SetMode | ActionType::UpdatePolicy => Capability::UpdatePolicy,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::BlockEntity => "block_entity",
            ActionType::UnblockEntity => "unblock_entity",
            ActionType::SetMode => "set_mode",
            ActionType::UpdatePolicy => "update_policy",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::BlockEntity,
            Self::UnblockEntity,
            Self::SetMode,
            Self::UpdatePolicy,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Pending,
    Approved,
    Rejected,
    Executed,
    Failed,
}

impl ActionStatus {
    pub const ALL: [ActionStatus; 5] = [
        Self::Pending,
        Self::Approved,
        Self::Rejected,
        Self::Executed,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "pending",
            ActionStatus::Approved => "approved",
            ActionStatus::Rejected => "rejected",
            ActionStatus::Executed => "executed",
            ActionStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// A request for an action, and what became of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionRequest {
    pub id: i64,
    pub source: Source,
    pub action_type: ActionType,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub reason: String,
    pub status: ActionStatus,
    pub requested_by: String,
    pub created_at: Timestamp,
    pub approved_by: Option<String>,
    pub approved_at: Option<Timestamp>,
    /// When it left pending or approved.
    pub resolved_at: Option<Timestamp>,
    pub resolution_notes: Option<String>,
    pub executed_at: Option<Timestamp>,
    /// What execution produced, e.g. `{"block_id": 17}`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why execution failed.
    pub error: Option<String>,
}

pub const ACTION_COLUMNS: &str = "id, source, action_type, payload, reason, status, \
    requested_by, created_at, approved_by, approved_at, resolved_at, resolution_notes, \
    executed_at, result, error";

impl ActionRequest {
    pub fn from_row(row: &AnyRow) -> Result<Self> {
        let source: String = row.try_get("source")?;
        let action_type: String = row.try_get("action_type")?;
        let status: String = row.try_get("status")?;
        let corrupt = |what: &str, value: &str| Error::Internal(format!("stored {what} {value}"));
        Ok(ActionRequest {
            id: row.try_get("id")?,
            source: Source::parse(&source).ok_or_else(|| corrupt("source", &source))?,
            action_type: ActionType::parse(&action_type)
                .ok_or_else(|| corrupt("action type", &action_type))?,
            payload: storage::json(row, "payload")?,
            reason: row.try_get("reason")?,
            status: ActionStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
            requested_by: row.try_get("requested_by")?,
            created_at: storage::timestamp(row, "created_at")?,
            approved_by: row.try_get("approved_by")?,
            approved_at: storage::timestamp_opt(row, "approved_at")?,
            resolved_at: storage::timestamp_opt(row, "resolved_at")?,
            resolution_notes: row.try_get("resolution_notes")?,
            executed_at: storage::timestamp_opt(row, "executed_at")?,
            result: storage::json_opt(row, "result")?,
            error: row.try_get("error")?,
        })
    }
}
