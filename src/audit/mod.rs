//! The audit trail: every state change with who, when, what, and the value
//! before and after. Entries are written inside the transaction that makes
//! the change, so the trail and the state never disagree.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::{Capability, Principal};
use crate::error::Result;
use crate::http::{fetch_page, ApiQuery, Page, PageRequest};
use crate::server::AppState;
use crate::storage::query::Param;
use crate::storage::{Filter, Tx};
use crate::time::Timestamp;

/// A change about to be recorded.
#[derive(Debug)]
pub struct Change<'a> {
    pub actor: &'a str,
    /// What happened, e.g. `block.created` or `action_request.approved`.
    pub kind: &'static str,
    /// What it happened to, e.g. `block`, with its id when it has one.
    pub subject_type: &'static str,
    pub subject_id: Option<String>,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
}

/// Records `change` at `at` inside the caller's transaction.
pub async fn record(tx: &mut Tx, at: Timestamp, change: Change<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log \
            (occurred_at, actor, kind, subject_type, subject_id, old_value, new_value) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(at.millis())
    .bind(change.actor)
    .bind(change.kind)
    .bind(change.subject_type)
    .bind(change.subject_id)
    .bind(change.old_value.map(|value| value.to_string()))
    .bind(change.new_value.map(|value| value.to_string()))
    .execute(&mut **tx)
    .await?;
    tracing::info!(
        audit.kind = change.kind,
        audit.subject_type = change.subject_type,
        audit.actor = change.actor,
        "state changed"
    );
    Ok(())
}

/// One recorded change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub occurred_at: Timestamp,
    pub actor: String,
    pub kind: String,
    pub subject_type: String,
    pub subject_id: Option<String>,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries of this kind, e.g. `block.created`.
    kind: Option<String>,
    /// Only entries made by this principal (a token name, `heimdall`, `system`).
    actor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_entries))
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/security/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>)),
    security(("bearer" = [])))]
async fn list_audit_entries(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>> {
    principal.require(Capability::ReadSecurityState)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;

    let mut filter = Filter::new();
    filter
        .optional("kind = ?", query.kind.map(Param::from))
        .optional("actor = ?", query.actor.map(Param::from));
    let select =
        "SELECT id, occurred_at, actor, kind, subject_type, subject_id, old_value, new_value \
         FROM audit_log";
    let page = fetch_page(
        state.db.reader(),
        select,
        "id",
        filter,
        page,
        entry_from_row,
        |entry| entry.id,
    )
    .await?;
    Ok(Json(page))
}

fn entry_from_row(row: &AnyRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        occurred_at: crate::storage::timestamp(row, "occurred_at")?,
        actor: row.try_get("actor")?,
        kind: row.try_get("kind")?,
        subject_type: row.try_get("subject_type")?,
        subject_id: row.try_get("subject_id")?,
        old_value: crate::storage::json_opt(row, "old_value")?,
        new_value: crate::storage::json_opt(row, "new_value")?,
    })
}
