//! `/security/incidents`: list, read, acknowledge and resolve incidents.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::model::{Incident, IncidentRow, IncidentStatus, INCIDENT_COLUMNS};
use super::store::{find_incident_row, transition_incident, with_links};
use crate::audit::{self, Change};
use crate::auth::{Capability, Principal};
use crate::detection::ThreatLevel;
use crate::error::Result;
use crate::http::{address_filter, fetch_page, ApiJson, ApiPath, ApiQuery, Page, PageRequest};
use crate::server::AppState;
use crate::storage::{query::Param, Filter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_incidents))
        .routes(routes!(get_incident, transition))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IncidentListQuery {
    status: Option<IncidentStatus>,
    severity: Option<ThreatLevel>,
    source_ip: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Incidents, newest first.
#[utoipa::path(get, path = "/security/incidents", tag = "incidents",
    params(IncidentListQuery),
    responses((status = 200, body = Page<Incident>)), security(("bearer" = [])))]
async fn list_incidents(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<IncidentListQuery>,
) -> Result<Json<Page<Incident>>> {
    principal.require(Capability::ReadSecurityState)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let source_ip = address_filter(query.source_ip)?;

    let mut filter = Filter::new();
    filter
        .optional(
            "status = ?",
            query.status.map(|status| status.as_str().into()),
        )
        .optional(
            "severity = ?",
            query.severity.map(|level| level.as_str().into()),
        )
        .optional("source_ip = ?", source_ip.map(Param::from));
    let select = format!("SELECT {INCIDENT_COLUMNS} FROM incidents");
    let reader = state.db.reader();
    let rows = fetch_page(
        reader,
        &select,
        "id",
        filter,
        page,
        IncidentRow::from_row,
        |row| row.id,
    );
    let page_of_rows = rows.await?;
    let items = with_links(state.db.reader(), page_of_rows.items).await?;
    Ok(Json(Page {
        items,
        next_cursor: page_of_rows.next_cursor,
    }))
}

/// One incident.
#[utoipa::path(get, path = "/security/incidents/{id}", tag = "incidents",
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Incident), (status = 404)), security(("bearer" = [])))]
async fn get_incident(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Incident>> {
    principal.require(Capability::ReadSecurityState)?;
    let row = find_incident_row(state.db.reader(), id).await?;
    let incident = with_links(state.db.reader(), vec![row]).await?.remove(0);
    Ok(Json(incident))
}

/// A status to move an incident to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentTransition {
    /// `acknowledged` (from open) or `resolved` (from open or acknowledged).
    status: IncidentStatus,
}

/// Acknowledges or resolves an incident; other moves are 409.
#[utoipa::path(post, path = "/security/incidents/{id}", tag = "incidents",
    params(("id" = i64, Path, minimum = 1)),
    request_body = IncidentTransition,
    responses((status = 200, body = Incident), (status = 404), (status = 409)),
    security(("bearer" = [])))]
async fn transition(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<IncidentTransition>,
) -> Result<Json<Incident>> {
    principal.require(Capability::ResolveActions)?;
    let now = state.clock.now();

    let mut tx = state.db.begin().await?;
    let before = find_incident_row(&mut *tx, id).await?;
    let row = transition_incident(&mut tx, now, id, body.status).await?;
    let change = Change {
        actor: &principal.name,
        kind: "incident.updated",
        subject_type: "incident",
        subject_id: Some(id.to_string()),
        old_value: Some(serde_json::json!({"status": before.status})),
        new_value: Some(serde_json::json!({"status": row.status})),
    };
    audit::record(&mut tx, now, change).await?;
    tx.commit().await?;

    let incident = with_links(state.db.reader(), vec![row]).await?.remove(0);
    Ok(Json(incident))
}
