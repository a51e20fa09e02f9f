//! The block record as stored and as answered.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use super::entity::{Entity, EntityType};
use crate::actions::Source;
use crate::error::{Error, Result};
use crate::storage;
use crate::time::Timestamp;

/// A blocked entity.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Block {
    pub id: i64,
    pub entity_type: EntityType,
    /// Canonical form: IPv4-mapped IPv6 folded to IPv4, IPv6 compressed.
    pub value: String,
    pub reason: String,
    pub source: Source,
    /// Token name, or the engine that created it.
    pub created_by: String,
    pub action_request_id: Option<i64>,
    pub created_at: Timestamp,
    /// `null` means permanent.
    pub expires_at: Option<Timestamp>,
    /// False once deactivated or expired.
    pub is_active: bool,
    pub deactivated_at: Option<Timestamp>,
    pub deactivated_by: Option<String>,
    pub deactivation_reason: Option<String>,
}

/// The columns `Block::from_row` reads.
pub const BLOCK_COLUMNS: &str = "id, entity_type, value, reason, source, created_by, \
    action_request_id, created_at, expires_at, deactivated_at, deactivated_by, \
    deactivation_reason";

impl Block {
    /// Reads a row; `now` decides whether an unexpired block is active.
    pub fn from_row(row: &AnyRow, now: Timestamp) -> Result<Self> {
        let entity_type: String = row.try_get("entity_type")?;
        let source: String = row.try_get("source")?;
        let expires_at = storage::timestamp_opt(row, "expires_at")?;
        let deactivated_at = storage::timestamp_opt(row, "deactivated_at")?;
        Ok(Block {
            id: row.try_get("id")?,
            entity_type: EntityType::parse(&entity_type)
                .ok_or_else(|| Error::Internal(format!("unknown entity type {entity_type}")))?,
            value: row.try_get("value")?,
            reason: row.try_get("reason")?,
            source: Source::parse(&source)
                .ok_or_else(|| Error::Internal(format!("unknown source {source}")))?,
            created_by: row.try_get("created_by")?,
            action_request_id: row.try_get("action_request_id")?,
            created_at: storage::timestamp(row, "created_at")?,
            expires_at,
            is_active: deactivated_at.is_none() && expires_at.is_none_or(|at| at > now),
            deactivated_at,
            deactivated_by: row.try_get("deactivated_by")?,
            deactivation_reason: row.try_get("deactivation_reason")?,
        })
    }
}

/// A block about to be created (or to extend an existing one).
#[derive(Debug, Clone)]
pub struct NewBlock {
    pub entity: Entity,
    pub reason: String,
    /// `None` means permanent.
    pub expires_at: Option<Timestamp>,
    pub source: Source,
    pub created_by: String,
    pub action_request_id: Option<i64>,
}

/// What blocking did: a new block, or an existing active one kept (its
/// expiry moved to the later of the two).
#[derive(Debug, Clone)]
pub enum BlockOutcome {
    Created(Block),
    Existing(Block),
}

impl BlockOutcome {
    pub fn block(&self) -> &Block {
        match self {
            BlockOutcome::Created(block) | BlockOutcome::Existing(block) => block,
        }
    }
}
