//! `/security/policy/`: read and change the policy, and read its history.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::model::{AutoApprove, AutoBlock, EscalationThresholds, Mode, Policy, RateLimits};
use super::store;
use crate::auth::{Capability, Principal};
use crate::blocklist::BlockChanges;
use crate::error::{Error, Result};
use crate::http::{fetch_page, ApiJson, ApiQuery, Page, PageRequest};
use crate::server::AppState;
use crate::storage::{self, Filter};
use crate::time::Timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_policy, post_policy))
        .routes(routes!(list_policy_history))
}

/// A partial policy: any subset of the writable fields. Nested objects may
/// themselves be partial; they merge into the current values.
///
/// Parsing into this type checks the body's shape (unknown fields, types);
/// the merge itself works on the raw JSON, so the fields are never read.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    /// Refuse the update (409) unless the policy is at this version.
    expected_version: Option<i64>,
    mode: Option<Mode>,
    auto_escalation_enabled: Option<bool>,
    #[schema(value_type = Option<EscalationThresholds>)]
    escalation_thresholds: Option<Value>,
    deescalation_cooldown_seconds: Option<i64>,
    #[schema(value_type = Option<RateLimits>)]
    rate_limits: Option<Value>,
    #[schema(value_type = Option<AutoBlock>)]
    auto_block: Option<Value>,
    #[schema(value_type = Option<AutoApprove>)]
    auto_approve: Option<Value>,
    require_distinct_approver: Option<bool>,
    #[schema(value_type = Option<Vec<String>>)]
    allowlist: Option<Value>,
}

/// The current policy.
#[utoipa::path(get, path = "/security/policy/", tag = "policy",
    responses((status = 200, body = Policy)), security(("bearer" = [])))]
async fn get_policy(State(state): State<AppState>, principal: Principal) -> Result<Json<Policy>> {
    principal.require(Capability::ReadSecurityState)?;
    Ok(Json(store::load_policy(state.db.reader()).await?))
}

/// Changes any subset of the writable fields; the result is validated as a
/// whole and gets the next version.
#[utoipa::path(post, path = "/security/policy/", tag = "policy",
    request_body = PolicyUpdate,
    responses((status = 200, body = Policy), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn post_policy(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Policy>> {
    principal.require(Capability::UpdatePolicy)?;
    let changes = parse_update(body)?;
    let allowlist_changed = changes.contains_key("allowlist");

    let mut tx = state.db.begin().await?;
    let policy = store::update_policy(&mut tx, state.clock.now(), &principal.name, changes).await?;
    tx.commit().await?;
    if allowlist_changed {
        let mut changes = BlockChanges::new();
        changes.record_allowlist(&policy.settings.allowlist);
        state.blocklist.apply(changes);
    }
    state.policy.replace(policy.clone());

    Ok(Json(policy))
}

/// Checks the body's shape (unknown fields, types) and keeps it as a map of
/// the fields present, for the merge. An update must name a policy field:
/// one that names none (`{}`, or `expected_version` alone) would still make
/// a new version that changes nothing.
pub fn parse_update(body: Value) -> Result<Map<String, Value>> {
    let _shape: PolicyUpdate = crate::http::deserialize_value(body.clone())?;
    let Value::Object(changes) = body else {
        return Err(Error::invalid_field("body", "must be a JSON object"));
    };
    if changes.keys().all(|field| field == "expected_version") {
        return Err(Error::invalid_field(
            "body",
            "name at least one policy field to change",
        ));
    }
    Ok(changes)
}

/// One version of the policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyVersion {
    pub version: i64,
    pub changed_at: Timestamp,
    pub changed_by: String,
    /// The fields this version changed: `{field: {"old": …, "new": …}}`.
    #[schema(value_type = Object)]
    pub changes: Value,
    /// The whole policy as of this version.
    pub policy: super::PolicySettings,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Every version of the policy, newest first.
#[utoipa::path(get, path = "/security/policy/history", tag = "policy",
    params(HistoryQuery),
    responses((status = 200, body = Page<PolicyVersion>)), security(("bearer" = [])))]
async fn list_policy_history(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Page<PolicyVersion>>> {
    principal.require(Capability::ReadSecurityState)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;

    let select = "SELECT version, changed_at, changed_by, document, changes FROM policy_history";
    let reader = state.db.reader();
    let versions = fetch_page(
        reader,
        select,
        "version",
        Filter::new(),
        page,
        version_from_row,
        |version| version.version,
    );
    Ok(Json(versions.await?))
}

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<PolicyVersion> {
    Ok(PolicyVersion {
        version: row.try_get("version")?,
        changed_at: storage::timestamp(row, "changed_at")?,
        changed_by: row.try_get("changed_by")?,
        changes: storage::json(row, "changes")?,
        policy: storage::json(row, "document")?,
    })
}
