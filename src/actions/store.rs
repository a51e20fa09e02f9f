//! Filing action requests and moving them through their states.
//!
//! Every transition is one conditional `UPDATE … WHERE status = <expected>`:
//! of two callers racing on the same request, the database lets exactly one
//! change the row and the other sees zero rows affected (409). No read
//! followed by a write, so no window between them.

use serde_json::Value;
use sqlx::{Any, Executor};

use super::execute::execute_action_request;
use super::model::{ActionRequest, ActionStatus, ActionType, Source, ACTION_COLUMNS};
use super::payload::ActionPayload;
use crate::audit::{self, Change};
use crate::blocklist::SharedIndex;
use crate::error::{with_article, Error, Result};
use crate::policy::{load_policy, SharedPolicy};
use crate::storage::{Db, Tx};
use crate::time::Timestamp;

/// A request to file, with its payload already parsed.
#[derive(Debug, Clone)]
pub struct NewActionRequest {
    /// Whether the policy's `auto_approve` may apply to it: see
    /// [`auto_approvable`].
    pub auto_approvable: bool,
    pub source: Source,
    pub action_type: ActionType,
    pub payload: ActionPayload,
    pub reason: String,
    pub requested_by: String,
}

/// Who approves requests that the policy lets skip human approval.
pub const AUTO_APPROVER: &str = "policy:auto_approve";

/// Whether a request filed by a principal of `role` may be approved by the
/// policy instead of a person. Auto-approval exists so that detectors'
/// blocks take effect at once under attack; it never lets a principal do
/// more than its role could do directly otherwise. Without this, a detector
/// token in elevated mode could rewrite the policy (turn off four-eyes,
/// allowlist everything) or lift blocks with no human involved. The
/// server's own requests (the engine's blocks, escalation's mode changes)
/// are always auto-approvable.
pub fn auto_approvable(role: crate::auth::Role, action_type: ActionType) -> bool {
    action_type == ActionType::BlockEntity || role.allows(action_type.capability())
}

/// Files a request. If the policy auto-approves its source in the current
/// mode, it is approved and executed at once and returned in its final state.
pub async fn file_action_request(
    db: &Db,
    blocklist: &SharedIndex,
    policy: &SharedPolicy,
    now: Timestamp,
    new: NewActionRequest,
) -> Result<ActionRequest> {
    let mut tx = db.begin().await?;
    let filed = file_in_transaction(&mut tx, now, &new).await?;
    tx.commit().await?;

    if filed.auto_approved {
        let id = filed.request.id;
        return execute_action_request(db, blocklist, policy, now, id, AUTO_APPROVER, None).await;
    }
    Ok(filed.request)
}

/// A request filed inside a caller's transaction.
#[derive(Debug)]
pub struct FiledRequest {
    pub request: ActionRequest,
    /// Approved by policy: the caller executes it once its transaction commits.
    pub auto_approved: bool,
}

/// Files a request inside `tx`, approving it when the policy auto-approves
/// its source in the current mode. Execution is left to the caller, after
/// commit, because it runs in a transaction of its own.
pub async fn file_in_transaction(
    tx: &mut Tx,
    now: Timestamp,
    new: &NewActionRequest,
) -> Result<FiledRequest> {
    let policy = load_policy(&mut **tx).await?;
    let mode = policy.settings.mode;
    let auto_approved = new.auto_approvable
        && policy
            .settings
            .auto_approve
            .for_mode(mode)
            .contains(&new.source);
    let mut request = insert_action_request(tx, now, new).await?;
    if auto_approved {
        request = approve(
            tx,
            now,
            request.id,
            AUTO_APPROVER,
            Some("auto-approved by policy"),
        )
        .await?;
    }
    Ok(FiledRequest {
        request,
        auto_approved,
    })
}

/// Whether a request about `subject` is still pending or approved.
pub async fn open_request_exists(tx: &mut Tx, subject: &str) -> Result<bool> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS open FROM action_requests \
         WHERE subject = $1 AND status IN ('pending', 'approved')",
    )
    .bind(subject)
    .fetch_one(&mut **tx)
    .await?;
    Ok(sqlx::Row::try_get::<i64, _>(&row, "open")? > 0)
}

/// Requests the policy approved that were not executed yet, e.g. because the
/// process stopped between approval and execution; oldest first.
pub async fn auto_approved_backlog(db: &Db) -> Result<Vec<i64>> {
    let rows = sqlx::query(
        "SELECT id FROM action_requests WHERE status = 'approved' AND approved_by = $1 \
         ORDER BY id LIMIT 100",
    )
    .bind(AUTO_APPROVER)
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|row| Ok(sqlx::Row::try_get::<i64, _>(row, "id")?))
        .collect()
}

async fn insert_action_request(
    tx: &mut Tx,
    now: Timestamp,
    new: &NewActionRequest,
) -> Result<ActionRequest> {
    let sql = format!(
        "INSERT INTO action_requests \
             (source, action_type, payload, reason, status, requested_by, created_at, subject) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7) RETURNING {ACTION_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(new.source.as_str())
        .bind(new.action_type.as_str())
        .bind(new.payload.to_value().to_string())
        .bind(&new.reason)
        .bind(&new.requested_by)
        .bind(now.millis())
        .bind(new.payload.subject())
        .fetch_one(&mut **tx)
        .await?;
    let request = ActionRequest::from_row(&row)?;

    let change = Change {
        actor: &new.requested_by,
        kind: "action_request.created",
        subject_type: "action_request",
        subject_id: Some(request.id.to_string()),
        old_value: None,
        new_value: Some(serde_json::to_value(&request).expect("request serialises")),
    };
    audit::record(tx, now, change).await?;
    tracing::info!(
        action_request.id = request.id,
        action_request.type = request.action_type.as_str(),
        action_request.source = request.source.as_str(),
        "action request filed"
    );
    Ok(request)
}

/// One request by id, or 404.
pub async fn find_action_request<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    id: i64,
) -> Result<ActionRequest> {
    let sql = format!("SELECT {ACTION_COLUMNS} FROM action_requests WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no action request with id {id}")))?;
    ActionRequest::from_row(&row)
}

/// pending → approved.
pub async fn approve(
    tx: &mut Tx,
    now: Timestamp,
    id: i64,
    approver: &str,
    notes: Option<&str>,
) -> Result<ActionRequest> {
    let sql = format!(
        "UPDATE action_requests \
         SET status = 'approved', approved_by = $1, approved_at = $2, resolved_at = $2, \
             resolution_notes = COALESCE($3, resolution_notes) \
         WHERE id = $4 AND status = 'pending' RETURNING {ACTION_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(approver)
        .bind(now.millis())
        .bind(notes)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    transitioned(
        tx,
        now,
        id,
        row,
        ActionStatus::Pending,
        ActionStatus::Approved,
        approver,
    )
    .await
}

/// pending → rejected.
pub async fn reject(
    tx: &mut Tx,
    now: Timestamp,
    id: i64,
    actor: &str,
    notes: Option<&str>,
) -> Result<ActionRequest> {
    let sql = format!(
        "UPDATE action_requests \
         SET status = 'rejected', resolved_at = $1, resolution_notes = COALESCE($2, resolution_notes) \
         WHERE id = $3 AND status = 'pending' RETURNING {ACTION_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(now.millis())
        .bind(notes)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    transitioned(
        tx,
        now,
        id,
        row,
        ActionStatus::Pending,
        ActionStatus::Rejected,
        actor,
    )
    .await
}

/// approved → executed, claiming the request. The effect is applied by the
/// caller in the same transaction.
pub async fn claim_for_execution(
    tx: &mut Tx,
    now: Timestamp,
    id: i64,
    notes: Option<&str>,
) -> Result<ActionRequest> {
    let sql = format!(
        "UPDATE action_requests \
         SET status = 'executed', executed_at = $1, resolved_at = $1, \
             resolution_notes = COALESCE($2, resolution_notes) \
         WHERE id = $3 AND status = 'approved' RETURNING {ACTION_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(now.millis())
        .bind(notes)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        Some(row) => ActionRequest::from_row(&row),
        None => {
            Err(transition_refused(tx, id, ActionStatus::Approved, ActionStatus::Executed).await)
        }
    }
}

/// Stores what execution produced.
pub async fn record_result(tx: &mut Tx, id: i64, result: &Value) -> Result<()> {
    sqlx::query("UPDATE action_requests SET result = $1 WHERE id = $2")
        .bind(result.to_string())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// approved → failed, after execution was rolled back.
pub async fn mark_failed(
    tx: &mut Tx,
    now: Timestamp,
    id: i64,
    actor: &str,
    error: &str,
    notes: Option<&str>,
) -> Result<ActionRequest> {
    let sql = format!(
        "UPDATE action_requests \
         SET status = 'failed', error = $1, resolved_at = $2, \
             resolution_notes = COALESCE($3, resolution_notes) \
         WHERE id = $4 AND status = 'approved' RETURNING {ACTION_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(error)
        .bind(now.millis())
        .bind(notes)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    transitioned(
        tx,
        now,
        id,
        row,
        ActionStatus::Approved,
        ActionStatus::Failed,
        actor,
    )
    .await
}

/// Audits a transition that happened, or explains one that did not.
async fn transitioned(
    tx: &mut Tx,
    now: Timestamp,
    id: i64,
    row: Option<sqlx::any::AnyRow>,
    from: ActionStatus,
    to: ActionStatus,
    actor: &str,
) -> Result<ActionRequest> {
    let Some(row) = row else {
        return Err(transition_refused(tx, id, from, to).await);
    };
    let request = ActionRequest::from_row(&row)?;
    audit_transition(tx, now, &request, from, actor).await?;
    Ok(request)
}

/// Records a transition of `request` (already in its new state) from `from`.
pub async fn audit_transition(
    tx: &mut Tx,
    now: Timestamp,
    request: &ActionRequest,
    from: ActionStatus,
    actor: &str,
) -> Result<()> {
    let kind = match request.status {
        ActionStatus::Approved => "action_request.approved",
        ActionStatus::Rejected => "action_request.rejected",
        ActionStatus::Executed => "action_request.executed",
        ActionStatus::Failed => "action_request.failed",
        ActionStatus::Pending => "action_request.created",
    };
    let change = Change {
        actor,
        kind,
        subject_type: "action_request",
        subject_id: Some(request.id.to_string()),
        old_value: Some(serde_json::json!({"status": from})),
        new_value: Some(serde_json::json!({
            "status": request.status,
            "result": request.result,
            "error": request.error,
        })),
    };
    audit::record(tx, now, change).await?;
    tracing::info!(
        action_request.id = request.id,
        action_request.status = request.status.as_str(),
        "action request moved"
    );
    Ok(())
}

/// 404 when the request does not exist, else 409 naming its current status.
async fn transition_refused(tx: &mut Tx, id: i64, from: ActionStatus, to: ActionStatus) -> Error {
    match find_action_request(&mut **tx, id).await {
        Ok(current) => Error::Conflict(format!(
            "action request {id} is {}; only {} request can become {}",
            current.status.as_str(),
            with_article(from.as_str()),
            to.as_str()
        )),
        Err(error) => error,
    }
}
