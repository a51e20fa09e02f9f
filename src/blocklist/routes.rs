//! `/security/policy/blocks`: create, list, deactivate and check blocks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::entity::{parse_ip, Entity, EntityType};
use super::model::{Block, BlockOutcome, NewBlock, BLOCK_COLUMNS};
use super::shared::BlockChanges;
use super::store;
use crate::actions::Source;
use crate::auth::{Capability, Principal};
use crate::error::{Error, Result};
use crate::http::{fetch_page, ApiJson, ApiPath, ApiQuery, OptionalJson, Page, PageRequest};
use crate::server::AppState;
use crate::storage::{query::Param, Filter};
use crate::time::Timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_block, list_blocks))
        .routes(routes!(deactivate_block))
        .routes(routes!(check_block))
        .merge(super::export::router())
}

/// A block to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    entity_type: EntityType,
    #[schema(example = "203.0.113.7")]
    value: String,
    #[schema(example = "ssh brute force")]
    reason: String,
    /// How long the block lasts; omit both this and `expires_at` for a permanent block.
    #[schema(minimum = 1)]
    duration_seconds: Option<i64>,
    expires_at: Option<Timestamp>,
}

/// Blocks an entity. 201 with the new block, or 200 with the entity's
/// existing active block, its expiry moved to the later of the two.
#[utoipa::path(post, path = "/security/policy/blocks", tag = "blocklist",
    request_body = BlockRequest,
    responses(
        (status = 201, body = Block, description = "created"),
        (status = 200, body = Block, description = "already blocked; expiry extended if later"),
        (status = 409, description = "overlaps the allowlist"),
        (status = 422, description = "invalid entity, reason or duration")),
    security(("bearer" = [])))]
async fn create_block(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<BlockRequest>,
) -> Result<(StatusCode, Json<Block>)> {
    principal.require(Capability::ManageBlocks)?;
    let now = state.clock.now();
    let new_block = parse_block_request(request, &principal, now)?;

    let mut tx = state.db.begin().await?;
    let outcome = store::block_entity(&mut tx, now, new_block).await?;
    tx.commit().await?;
    state.blocklist.apply(BlockChanges::of(outcome.block()));

    Ok(match outcome {
        BlockOutcome::Created(block) => (StatusCode::CREATED, Json(block)),
        BlockOutcome::Existing(block) => (StatusCode::OK, Json(block)),
    })
}

fn parse_block_request(
    request: BlockRequest,
    principal: &Principal,
    now: Timestamp,
) -> Result<NewBlock> {
    let entity = Entity::parse_new(request.entity_type, &request.value)
        .map_err(|message| Error::invalid_field("value", message))?;
    let reason = parse_reason(&request.reason)?;
    let expires_at = store::resolve_expiry(now, request.duration_seconds, request.expires_at)?;
    let source = principal.role.action_source().unwrap_or(Source::Human);
    Ok(NewBlock {
        entity,
        reason,
        expires_at,
        source,
        created_by: principal.name.clone(),
        action_request_id: None,
    })
}

/// A reason is what an analyst reads later: required, and of sane length.
pub fn parse_reason(reason: &str) -> Result<String> {
    let trimmed = reason.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 1000 {
        return Err(Error::invalid_field(
            "reason",
            "must be 1 to 1000 characters",
        ));
    }
    Ok(trimmed.to_string())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BlockListQuery {
    /// `true` (default): only active, unexpired blocks; `false`: only inactive ones.
    active: Option<bool>,
    entity_type: Option<EntityType>,
    value: Option<String>,
    source: Option<Source>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Blocks, newest first.
#[utoipa::path(get, path = "/security/policy/blocks", tag = "blocklist",
    params(BlockListQuery),
    responses((status = 200, body = Page<Block>)), security(("bearer" = [])))]
async fn list_blocks(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<BlockListQuery>,
) -> Result<Json<Page<Block>>> {
    principal.require(Capability::ReadBlocklist)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let now = state.clock.now();

    let mut filter = Filter::new();
    if query.active.unwrap_or(true) {
        filter.raw("deactivated_at IS NULL");
        filter.condition(
            "(expires_at IS NULL OR expires_at > ?)",
            Param::Int(now.millis()),
        );
    } else {
        filter.condition(
            "(deactivated_at IS NOT NULL OR expires_at <= ?)",
            Param::Int(now.millis()),
        );
    }
    let value = query
        .value
        .map(|value| canonical_filter_value(query.entity_type, value));
    filter
        .optional(
            "entity_type = ?",
            query.entity_type.map(|kind| kind.as_str().into()),
        )
        .optional("value = ?", value.map(Param::from))
        .optional(
            "source = ?",
            query.source.map(|source| source.as_str().into()),
        );
    let select = &format!("SELECT {BLOCK_COLUMNS} FROM blocks");
    let page = fetch_page(
        state.db.reader(),
        select,
        "id",
        filter,
        page,
        |row| Block::from_row(row, now),
        |block| block.id,
    )
    .await?;
    Ok(Json(page))
}

/// Filters match stored values, which are canonical; so is the filter.
fn canonical_filter_value(entity_type: Option<EntityType>, value: String) -> String {
    let kinds = match entity_type {
        Some(kind) => vec![kind],
        None => vec![EntityType::Ip, EntityType::Cidr],
    };
    kinds
        .into_iter()
        .filter(|kind| matches!(kind, EntityType::Ip | EntityType::Cidr))
        .find_map(|kind| Entity::parse(kind, &value).ok())
        .map(|entity| entity.value())
        .unwrap_or(value)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeactivateRequest {
    /// Why the block ends; recorded on the block and in the audit log.
    reason: Option<String>,
}

/// Ends a block now. An inactive block is returned unchanged.
#[utoipa::path(post, path = "/security/policy/blocks/{id}/deactivate", tag = "blocklist",
    params(("id" = i64, Path, minimum = 1)),
    request_body(content = Option<DeactivateRequest>),
    responses((status = 200, body = Block), (status = 404)), security(("bearer" = [])))]
async fn deactivate_block(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
    OptionalJson(request): OptionalJson<DeactivateRequest>,
) -> Result<Json<Block>> {
    principal.require(Capability::ManageBlocks)?;
    let reason = match request.unwrap_or_default().reason {
        Some(reason) => parse_reason(&reason)?,
        None => "deactivated".to_string(),
    };

    let mut tx = state.db.begin().await?;
    let block =
        store::deactivate_block(&mut tx, state.clock.now(), id, &principal.name, &reason).await?;
    tx.commit().await?;
    state.blocklist.apply(BlockChanges::of(&block));

    Ok(Json(block))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckQuery {
    /// An address to check against `ip` and `cidr` blocks.
    ip: Option<String>,
    /// With `value`: check a user or API key (or an ip / cidr written out).
    entity_type: Option<EntityType>,
    value: Option<String>,
}

/// Whether something is blocked now, and by which blocks.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResult {
    pub blocked: bool,
    pub matches: Vec<Block>,
}

/// Answers whether an address or entity is blocked right now: from the
/// in-memory index, then the matching blocks' records (cached once read),
/// so that a check touches the database only for a block it has not
/// returned since the block last changed.
#[utoipa::path(get, path = "/security/policy/blocks/check", tag = "blocklist",
    params(CheckQuery),
    responses((status = 200, body = CheckResult), (status = 400)), security(("bearer" = [])))]
async fn check_block(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<CheckQuery>,
) -> Result<Json<CheckResult>> {
    principal.require(Capability::ReadBlocklist)?;
    let now = state.clock.now();
    let entity = parse_check_query(query)?;

    let matches = state
        .blocklist
        .matching_blocks(&state.db, &entity, now)
        .await?;

    Ok(Json(CheckResult {
        blocked: !matches.is_empty(),
        matches,
    }))
}

fn parse_check_query(query: CheckQuery) -> Result<Entity> {
    match (query.ip, query.entity_type, query.value) {
        (Some(ip), None, None) => parse_ip(&ip).map(Entity::Ip).map_err(Error::BadRequest),
        (None, Some(kind), Some(value)) => Entity::parse(kind, &value)
            .map_err(|message| Error::BadRequest(format!("`value` {message}"))),
        _ => Err(Error::BadRequest(
            "give either `ip`, or `entity_type` and `value`".to_string(),
        )),
    }
}
