//! Payloads by action type, parsed and checked when a request is filed so
//! that a request which could never execute is refused at once (422).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::model::ActionType;
use crate::blocklist::{Entity, EntityType};
use crate::error::{Error, FieldError, Result};
use crate::http::deserialize_value;
use crate::policy::{Mode, PolicySettings};
use crate::time::Timestamp;

/// `block_entity`: what to block and for how long (permanent if omitted).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockEntityPayload {
    pub entity_type: EntityType,
    pub value: String,
    #[schema(minimum = 1)]
    pub duration_seconds: Option<i64>,
    pub reason: Option<String>,
}

/// `unblock_entity`: either `block_id`, or `entity_type` with `value`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnblockEntityPayload {
    pub block_id: Option<i64>,
    pub entity_type: Option<EntityType>,
    pub value: Option<String>,
}

/// `set_mode`: the mode to switch to.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetModePayload {
    pub mode: Mode,
}

/// Which block an unblock request ends.
#[derive(Debug, Clone, PartialEq)]
pub enum UnblockTarget {
    BlockId(i64),
    Entity(Entity),
}

/// A parsed, canonical payload.
#[derive(Debug, Clone)]
pub enum ActionPayload {
    BlockEntity {
        entity: Entity,
        duration_seconds: Option<i64>,
        reason: Option<String>,
    },
    UnblockEntity(UnblockTarget),
    SetMode(Mode),
    UpdatePolicy(Map<String, Value>),
}

impl ActionPayload {
    /// Parses `payload` as `action_type` demands and checks it against the
    /// current policy. Field errors are reported under `payload.`.
    pub fn parse(
        action_type: ActionType,
        payload: Value,
        policy: &PolicySettings,
        now: Timestamp,
    ) -> Result<Self> {
        let parsed = match action_type {
            ActionType::BlockEntity => {
                deserialize_value(payload).and_then(|payload| parse_block(payload, now))
            }
            ActionType::UnblockEntity => deserialize_value(payload).and_then(parse_unblock),
            ActionType::SetMode => {
                deserialize_value::<SetModePayload>(payload).map(|p| ActionPayload::SetMode(p.mode))
            }
            ActionType::UpdatePolicy => parse_policy_update(payload, policy),
        };
        parsed.map_err(under_payload)
    }

    /// What the request is about, stored beside it so that open requests for
    /// one source or for the mode can be found without reading payloads.
    pub fn subject(&self) -> String {
        match self {
            ActionPayload::BlockEntity { entity, .. }
            | ActionPayload::UnblockEntity(UnblockTarget::Entity(entity)) => subject_of(entity),
            ActionPayload::UnblockEntity(UnblockTarget::BlockId(id)) => format!("block:{id}"),
            ActionPayload::SetMode(_) => "mode".to_string(),
            ActionPayload::UpdatePolicy(_) => "policy".to_string(),
        }
    }

    /// The canonical form stored with the request.
    pub fn to_value(&self) -> Value {
        match self {
            ActionPayload::BlockEntity {
                entity,
                duration_seconds,
                reason,
            } => {
                let mut payload = json!({
                    "entity_type": entity.entity_type(),
                    "value": entity.value(),
                });
                if let Some(seconds) = duration_seconds {
                    payload["duration_seconds"] = json!(seconds);
                }
                if let Some(reason) = reason {
                    payload["reason"] = json!(reason);
                }
                payload
            }
            ActionPayload::UnblockEntity(UnblockTarget::BlockId(id)) => json!({"block_id": id}),
            ActionPayload::UnblockEntity(UnblockTarget::Entity(entity)) => json!({
                "entity_type": entity.entity_type(),
                "value": entity.value(),
            }),
            ActionPayload::SetMode(mode) => json!({"mode": mode}),
            ActionPayload::UpdatePolicy(changes) => Value::Object(changes.clone()),
        }
    }
}

fn parse_block(payload: BlockEntityPayload, now: Timestamp) -> Result<ActionPayload> {
    let entity = Entity::parse_new(payload.entity_type, &payload.value)
        .map_err(|message| Error::invalid_field("value", message))?;
    if let Some(seconds) = payload.duration_seconds {
        crate::blocklist::resolve_expiry(now, Some(seconds), None)?;
    }
    let reason = payload
        .reason
        .as_deref()
        .map(crate::blocklist::parse_reason)
        .transpose()?;
    Ok(ActionPayload::BlockEntity {
        entity,
        duration_seconds: payload.duration_seconds,
        reason,
    })
}

fn parse_unblock(payload: UnblockEntityPayload) -> Result<ActionPayload> {
    let target = match (payload.block_id, payload.entity_type, payload.value) {
        (Some(id), None, None) if id > 0 => UnblockTarget::BlockId(id),
        (Some(_), None, None) => return Err(Error::invalid_field("block_id", "must be positive")),
        (None, Some(kind), Some(value)) => UnblockTarget::Entity(
            Entity::parse(kind, &value)
                .map_err(|message| Error::invalid_field("value", message))?,
        ),
        _ => {
            return Err(Error::invalid_field(
                "block_id",
                "give either block_id, or entity_type and value",
            ))
        }
    };
    Ok(ActionPayload::UnblockEntity(target))
}

fn parse_policy_update(payload: Value, policy: &PolicySettings) -> Result<ActionPayload> {
    let changes = crate::policy::parse_update(payload)?;
    crate::policy::validate_update(policy, changes.clone())?;
    Ok(ActionPayload::UpdatePolicy(changes))
}

fn under_payload(error: Error) -> Error {
    match error {
        Error::Invalid { errors, .. } => Error::invalid_fields(
            errors
                .into_iter()
                .map(|error| {
                    let field = if error.field == "body" {
                        "payload".to_string()
                    } else {
                        format!("payload.{}", error.field)
                    };
                    FieldError::new(field, error.message)
                })
                .collect(),
        ),
        other => other,
    }
}

/// The subject of requests about `entity`, e.g. `ip:203.0.113.7`.
pub fn subject_of(entity: &Entity) -> String {
    format!("{}:{}", entity.entity_type().as_str(), entity.value())
}
