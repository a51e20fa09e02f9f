//! `/security/actions/`: file, list, read and move action requests.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::execute::execute_action_request;
use super::model::{ActionRequest, ActionStatus, ActionType, Source, ACTION_COLUMNS};
use super::payload::ActionPayload;
use super::store::{self, NewActionRequest};
use crate::auth::{Capability, Principal};
use crate::blocklist::parse_reason;
use crate::error::{with_article, Error, Result};
use crate::http::{fetch_page, ApiJson, ApiPath, ApiQuery, Page, PageRequest};
use crate::policy::{load_policy, PolicySettings};
use crate::server::AppState;
use crate::storage::Filter;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_action_request, list_action_requests))
        .routes(routes!(get_action_request, transition_action_request))
}

/// A request for an action.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequestBody {
    action_type: ActionType,
    /// Depends on `action_type`: see the payload schemas.
    #[schema(value_type = Object)]
    payload: Value,
    reason: String,
    /// Optional; must match the caller's role (403 otherwise).
    source: Option<Source>,
}

/// Files an action request. If the policy auto-approves the source in the
/// current mode, it is executed at once and the answer shows it executed.
#[utoipa::path(post, path = "/security/actions/", tag = "actions",
    request_body = ActionRequestBody,
    responses(
        (status = 201, body = ActionRequest),
        (status = 403, description = "source does not match the caller"),
        (status = 409, description = "the entity is allowlisted"),
        (status = 422, description = "invalid payload")),
    security(("bearer" = [])))]
async fn create_action_request(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ActionRequestBody>,
) -> Result<(StatusCode, Json<ActionRequest>)> {
    principal.require(Capability::RequestActions)?;
    let source = source_of(&principal, body.source)?;
    let now = state.clock.now();
    let policy = load_policy(state.db.reader()).await?;
    let new_request = NewActionRequest {
        auto_approvable: store::auto_approvable(principal.role, body.action_type),
        source,
        action_type: body.action_type,
        payload: parse_payload(body.action_type, body.payload, &policy.settings, now)?,
        reason: parse_reason(&body.reason)?,
        requested_by: principal.name.clone(),
    };

    let request =
        store::file_action_request(&state.db, &state.blocklist, &state.policy, now, new_request)
            .await?;

    Ok((StatusCode::CREATED, Json(request)))
}

/// The source a principal speaks as; a body that claims another is refused.
fn source_of(principal: &Principal, claimed: Option<Source>) -> Result<Source> {
    let source = principal.role.action_source().ok_or_else(|| {
        Error::Forbidden(format!(
            "the role `{}` may not request actions",
            principal.role.as_str()
        ))
    })?;
    match claimed {
        Some(claimed) if claimed != source => Err(Error::Forbidden(format!(
            "{} token files requests as `{}`, not `{}`",
            with_article(principal.role.as_str()),
            source.as_str(),
            claimed.as_str()
        ))),
        _ => Ok(source),
    }
}

/// Parses the payload, refusing a block of an allowlisted address at once.
fn parse_payload(
    action_type: ActionType,
    payload: Value,
    policy: &PolicySettings,
    now: crate::time::Timestamp,
) -> Result<ActionPayload> {
    let payload = ActionPayload::parse(action_type, payload, policy, now)?;
    if let ActionPayload::BlockEntity { entity, .. } = &payload {
        let network = entity.network();
        if let Some(allowed) = policy
            .allowlist
            .iter()
            .find(|allowed| network.is_some_and(|network| allowed.overlaps(&network)))
        {
            return Err(Error::Conflict(format!(
                "{} overlaps the allowlist entry {allowed}; allowlisted addresses are never blocked",
                entity.value()
            )));
        }
    }
    Ok(payload)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActionListQuery {
    status: Option<ActionStatus>,
    source: Option<Source>,
    action_type: Option<ActionType>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Action requests, newest first.
#[utoipa::path(get, path = "/security/actions/", tag = "actions",
    params(ActionListQuery),
    responses((status = 200, body = Page<ActionRequest>)), security(("bearer" = [])))]
async fn list_action_requests(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ActionListQuery>,
) -> Result<Json<Page<ActionRequest>>> {
    principal.require(Capability::ReadSecurityState)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;

    let mut filter = Filter::new();
    filter
        .optional(
            "status = ?",
            query.status.map(|status| status.as_str().into()),
        )
        .optional(
            "source = ?",
            query.source.map(|source| source.as_str().into()),
        )
        .optional(
            "action_type = ?",
            query.action_type.map(|kind| kind.as_str().into()),
        );
    let select = &format!("SELECT {ACTION_COLUMNS} FROM action_requests");
    let page = fetch_page(
        state.db.reader(),
        select,
        "id",
        filter,
        page,
        ActionRequest::from_row,
        |request| request.id,
    )
    .await?;
    Ok(Json(page))
}

/// One action request.
#[utoipa::path(get, path = "/security/actions/{id}", tag = "actions",
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = ActionRequest), (status = 404)), security(("bearer" = [])))]
async fn get_action_request(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ActionRequest>> {
    principal.require(Capability::ReadSecurityState)?;
    Ok(Json(
        store::find_action_request(state.db.reader(), id).await?,
    ))
}

/// A transition to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    /// `approved` or `rejected` from pending; `executed` from approved.
    status: ActionStatus,
    resolution_notes: Option<String>,
}

/// Moves a request: pending → approved / rejected, approved → executed.
/// Any other transition, or one that another caller made first, is 409.
#[utoipa::path(post, path = "/security/actions/{id}", tag = "actions",
    params(("id" = i64, Path, minimum = 1)),
    request_body = TransitionBody,
    responses(
        (status = 200, body = ActionRequest),
        (status = 403,
            description = "four-eyes, or a policy change by a role that may not make it"),
        (status = 404), (status = 409, description = "not allowed from the current status")),
    security(("bearer" = [])))]
async fn transition_action_request(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<TransitionBody>,
) -> Result<Json<ActionRequest>> {
    principal.require(Capability::ResolveActions)?;
    let notes = body.resolution_notes.as_deref();
    let now = state.clock.now();

    let request = match body.status {
        ActionStatus::Approved => {
            let mut tx = state.db.begin().await?;
            let request = store::find_action_request(&mut *tx, id).await?;
            enforce_capability(&request, &principal)?;
            enforce_four_eyes(&mut tx, &request, &principal).await?;
            let approved = store::approve(&mut tx, now, id, &principal.name, notes).await?;
            tx.commit().await?;
            approved
        }
        ActionStatus::Rejected => {
            let mut tx = state.db.begin().await?;
            let rejected = store::reject(&mut tx, now, id, &principal.name, notes).await?;
            tx.commit().await?;
            rejected
        }
        ActionStatus::Executed => {
            // The type of a request never changes, so reading it outside
            // the executing transaction is safe.
            let request = store::find_action_request(state.db.reader(), id).await?;
            enforce_capability(&request, &principal)?;
            let (index, policy) = (&state.blocklist, &state.policy);
            execute_action_request(&state.db, index, policy, now, id, &principal.name, notes)
                .await?
        }
        ActionStatus::Pending | ActionStatus::Failed => {
            let current = store::find_action_request(state.db.reader(), id).await?;
            return Err(Error::Conflict(format!(
                "action request {id} is {}; a request cannot be moved to {}",
                current.status.as_str(),
                body.status.as_str()
            )));
        }
    };

    Ok(Json(request))
}

/// Approving or executing a request makes its change, so it takes the
/// capability the change itself takes: an analyst approves blocks, not
/// policy changes (the mode included), which are the policy owner's.
fn enforce_capability(request: &ActionRequest, principal: &Principal) -> Result<()> {
    principal
        .require(request.action_type.capability())
        .map_err(|_| {
            Error::Forbidden(format!(
                "a {} request changes the policy; only a policy_owner or admin may approve or \
                 execute it",
                request.action_type.as_str()
            ))
        })
}

/// With `require_distinct_approver`, the requester may not approve.
async fn enforce_four_eyes(
    tx: &mut crate::storage::Tx,
    request: &ActionRequest,
    principal: &Principal,
) -> Result<()> {
    let policy = load_policy(&mut **tx).await?;
    if policy.settings.require_distinct_approver && request.requested_by == principal.name {
        return Err(Error::Forbidden(
            "four-eyes rule: the principal who filed a request cannot approve it".to_string(),
        ));
    }
    Ok(())
}
