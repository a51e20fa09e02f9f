//! Executing an approved request: its effect and the `executed` mark commit
//! together, or neither does and the request is marked `failed`.

use serde_json::{json, Value};

use super::model::{ActionRequest, ActionStatus};
use super::payload::{ActionPayload, UnblockTarget};
use super::store::{self, audit_transition};
use crate::blocklist::{self, BlockChanges, NewBlock, SharedIndex};
use crate::error::{Error, Result};
use crate::policy::{self, load_policy, Policy, SharedPolicy};
use crate::storage::{Db, Tx};
use crate::time::Timestamp;

/// Executes request `id`, which must be approved (else 409). Returns the
/// request as `executed` with its result, or as `failed` with the reason.
/// What it did to the blocklist reaches `blocklist`, and a new policy
/// reaches `policy`, once it has committed.
pub async fn execute_action_request(
    db: &Db,
    blocklist: &SharedIndex,
    policy: &SharedPolicy,
    now: Timestamp,
    id: i64,
    actor: &str,
    notes: Option<&str>,
) -> Result<ActionRequest> {
    let mut tx = db.begin().await?;
    let claimed = store::claim_for_execution(&mut tx, now, id, notes).await?;
    match apply_effect(&mut tx, now, &claimed).await {
        Ok(effect) => {
            store::record_result(&mut tx, id, &effect.result).await?;
            let executed = ActionRequest {
                result: Some(effect.result),
                ..claimed
            };
            audit_transition(&mut tx, now, &executed, ActionStatus::Approved, actor).await?;
            tx.commit().await?;
            blocklist.apply(effect.blocks);
            if let Some(new_policy) = effect.policy {
                policy.replace(new_policy);
            }
            Ok(executed)
        }
        Err(error) if is_refusal(&error) => {
            tx.rollback().await?;
            record_failure(db, now, id, actor, &error, notes).await
        }
        Err(error) => Err(error),
    }
}

/// Errors that say the effect cannot be applied (rather than that the
/// server could not try): they fail the request instead of the call.
fn is_refusal(error: &Error) -> bool {
    matches!(
        error,
        Error::Conflict(_) | Error::NotFound(_) | Error::Invalid { .. } | Error::Forbidden(_)
    )
}

async fn record_failure(
    db: &Db,
    now: Timestamp,
    id: i64,
    actor: &str,
    error: &Error,
    notes: Option<&str>,
) -> Result<ActionRequest> {
    let message = match error {
        Error::Invalid { detail, .. } => detail.clone(),
        Error::Conflict(detail) | Error::NotFound(detail) | Error::Forbidden(detail) => {
            detail.clone()
        }
        other => other.to_string(),
    };
    tracing::warn!(action_request.id = id, error = %message, "action request failed");
    let mut tx = db.begin().await?;
    let failed = store::mark_failed(&mut tx, now, id, actor, &message, notes).await?;
    tx.commit().await?;
    Ok(failed)
}

/// What executing a request did, for the caches once it commits.
struct Effect {
    /// The request's `result`.
    result: Value,
    blocks: BlockChanges,
    /// The policy as the request left it, if it changed the policy.
    policy: Option<Policy>,
}

impl Effect {
    fn on_blocklist(result: Value, blocks: BlockChanges) -> Self {
        Self {
            result,
            blocks,
            policy: None,
        }
    }
}

/// Applies the request's payload; the payload is parsed again because the
/// policy may have changed since the request was filed.
async fn apply_effect(tx: &mut Tx, now: Timestamp, request: &ActionRequest) -> Result<Effect> {
    let policy = load_policy(&mut **tx).await?;
    let payload = ActionPayload::parse(
        request.action_type,
        request.payload.clone(),
        &policy.settings,
        now,
    )?;
    match payload {
        ActionPayload::BlockEntity {
            entity,
            duration_seconds,
            reason,
        } => {
            let expires_at = blocklist::resolve_expiry(now, duration_seconds, None)?;
            let new_block = NewBlock {
                entity,
                reason: reason.unwrap_or_else(|| request.reason.clone()),
                expires_at,
                source: request.source,
                created_by: request.requested_by.clone(),
                action_request_id: Some(request.id),
            };
            let outcome = blocklist::block_entity(tx, now, new_block).await?;
            let changes = BlockChanges::of(outcome.block());
            let result = json!({"block_id": outcome.block().id});
            Ok(Effect::on_blocklist(result, changes))
        }
        ActionPayload::UnblockEntity(target) => {
            let block_id = match target {
                UnblockTarget::BlockId(id) => id,
                UnblockTarget::Entity(entity) => {
                    blocklist::find_live_block(&mut **tx, &entity, now)
                        .await?
                        .filter(|block| block.is_active)
                        .map(|block| block.id)
                        .ok_or_else(|| {
                            Error::NotFound(format!("{} has no active block", entity.value()))
                        })?
                }
            };
            let reason = format!("action request {}", request.id);
            let block =
                blocklist::deactivate_block(tx, now, block_id, &request.requested_by, &reason)
                    .await?;
            let result = json!({"block_id": block.id});
            Ok(Effect::on_blocklist(result, BlockChanges::of(&block)))
        }
        ActionPayload::SetMode(mode) => {
            let policy = policy::set_mode(tx, now, &request.requested_by, mode).await?;
            let result = json!({"mode": policy.settings.mode, "policy_version": policy.version});
            Ok(Effect {
                result,
                blocks: BlockChanges::new(),
                policy: Some(policy),
            })
        }
        ActionPayload::UpdatePolicy(changes) => {
            let allowlist_changed = changes.contains_key("allowlist");
            let policy = policy::update_policy(tx, now, &request.requested_by, changes).await?;
            let mut blocks = BlockChanges::new();
            if allowlist_changed {
                blocks.record_allowlist(&policy.settings.allowlist);
            }
            Ok(Effect {
                result: json!({"policy_version": policy.version}),
                blocks,
                policy: Some(policy),
            })
        }
    }
}
