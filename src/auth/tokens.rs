//! API tokens: issued by admins (or the command line), shown once, stored
//! as digests, revocable at once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::cache::KnownToken;
use super::{digests_match, Capability, Principal, Role, Secret, BEARER_EXPECTED};
use crate::audit::{self, Change};
use crate::error::{Error, Result};
use crate::http::{ApiJson, ApiPath};
use crate::server::AppState;
use crate::storage::{self, conflict_on_duplicate, Backend, Db, Tx};
use crate::time::Timestamp;

/// How stale `last_used_at` may get before a request refreshes it; keeps
/// reads from turning into writes on every call.
const LAST_USED_RESOLUTION_MILLIS: i64 = 60_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// A newly issued token; `token` appears only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[schema(example = "heimdall-sensor-1")]
    name: String,
    role: Role,
}

/// Finds the principal behind a bearer token and notes its use.
pub async fn authenticate(state: &AppState, token: &Secret) -> Result<Principal> {
    let (_, principal) = authenticate_token(state, token).await?;
    Ok(principal)
}

/// As [`authenticate`], with the token's id: for callers that keep state
/// per token (the CrowdSec bouncer feed, whose `X-Api-Key` is a token).
pub async fn authenticate_token(state: &AppState, token: &Secret) -> Result<(i64, Principal)> {
    let digest = token.digest();
    let known = match state.tokens.get(&digest) {
        Some(known) => known,
        None => {
            let known = find_token(&state.db, &digest).await?;
            state.tokens.insert(digest.clone(), known.clone());
            known
        }
    };

    let now = state.clock.now().millis();
    if known
        .last_used_at
        .is_none_or(|at| now - at >= LAST_USED_RESOLUTION_MILLIS)
    {
        sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(known.id)
            .execute(state.db.writer())
            .await?;
        state
            .tokens
            .update(&digest, |known| known.last_used_at = Some(now));
    }
    Ok((known.id, known.principal))
}

/// The working token with this digest, or 401.
async fn find_token(db: &Db, digest: &str) -> Result<KnownToken> {
    let row = sqlx::query(
        "SELECT id, name, role, token_hash, last_used_at FROM tokens \
         WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(digest)
    .fetch_optional(db.reader())
    .await?
    .ok_or(Error::Unauthorized(BEARER_EXPECTED))?;

    let stored: String = row.try_get("token_hash")?;
    if !digests_match(&stored, digest) {
        return Err(Error::Unauthorized(BEARER_EXPECTED));
    }
    let role: String = row.try_get("role")?;
    Ok(KnownToken {
        id: row.try_get("id")?,
        principal: Principal {
            name: row.try_get("name")?,
            role: Role::parse(&role)
                .ok_or_else(|| Error::Internal(format!("stored role {role}")))?,
        },
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// Issues a token. Used by the API, the command line and bootstrap.
pub async fn issue_token(
    db: &Db,
    now: Timestamp,
    actor: &str,
    name: &str,
    role: Role,
    secret: Secret,
) -> Result<IssuedToken> {
    validate_name(name)?;
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO tokens (name, role, token_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(name)
        .bind(role.as_str())
        .bind(secret.digest())
        .bind(now.millis())
        .execute(&mut *tx)
        .await
        .map_err(|error| {
            conflict_on_duplicate(error, || format!("a token named `{name}` exists"))
        })?;
    let change = Change {
        actor,
        kind: "token.created",
        subject_type: "token",
        subject_id: Some(name.to_string()),
        old_value: None,
        new_value: Some(serde_json::json!({"name": name, "role": role})),
    };
    audit::record(&mut tx, now, change).await?;
    tx.commit().await?;

    Ok(IssuedToken {
        name: name.to_string(),
        role,
        created_at: now,
        token: secret.expose().to_string(),
    })
}

/// Names the service signs its own changes with. A token may not take one,
/// or a person's change would pass for the service's: the escalation, for
/// one, leaves alone a mode that a person set, and tells by this name.
const RESERVED_NAMES: &[&str] = &["system", "heimdall", "bootstrap", "policy:auto_approve"];

fn validate_name(name: &str) -> Result<()> {
    if RESERVED_NAMES
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
    {
        return Err(Error::invalid_field(
            "name",
            format!("`{name}` is reserved for the service's own changes"),
        ));
    }
    let valid = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_field(
            "name",
            "must be 1 to 100 of A-Z a-z 0-9 - _ . @ :",
        ))
    }
}

/// Working tokens, newest first.
pub async fn list_token_infos(db: &Db) -> Result<Vec<TokenInfo>> {
    let rows = sqlx::query(
        "SELECT name, role, created_at, last_used_at FROM tokens \
         WHERE revoked_at IS NULL ORDER BY id DESC",
    )
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(token_from_row).collect()
}

fn token_from_row(row: &AnyRow) -> Result<TokenInfo> {
    let role: String = row.try_get("role")?;
    Ok(TokenInfo {
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| Error::Internal(format!("stored role {role}")))?,
        created_at: storage::timestamp(row, "created_at")?,
        last_used_at: storage::timestamp_opt(row, "last_used_at")?,
    })
}

/// Revokes the working token called `name`; it stops working at once. The
/// last working admin token stays (409): without it nobody could manage
/// tokens through the API again. The command line keeps the rule too; an
/// operator issues another admin token first.
pub async fn revoke_token_named(db: &Db, now: Timestamp, actor: &str, name: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    keep_the_last_admin(&mut tx, db.backend(), name).await?;
    let revoked =
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(now.millis())
            .bind(name)
            .execute(&mut *tx)
            .await?;
    storage::expect_row(revoked, || format!("no working token named `{name}`"))?;
    let change = Change {
        actor,
        kind: "token.revoked",
        subject_type: "token",
        subject_id: Some(name.to_string()),
        old_value: None,
        new_value: None,
    };
    audit::record(&mut tx, now, change).await?;
    tx.commit().await?;
    Ok(())
}

/// Refuses to revoke `name` when it is the only working admin token.
///
/// Two admins revoking each other at once must not both succeed, so the
/// count has to be current when the revocation is written. On SQLite the
/// transaction holds the write lock from its start (`BEGIN IMMEDIATE`). On
/// PostgreSQL `FOR UPDATE` locks the working admin tokens, in id order so
/// that two revocations cannot deadlock; the second waits for the first to
/// commit, then reads the locked rows again and no longer counts the token
/// the first revoked.
async fn keep_the_last_admin(tx: &mut Tx, backend: Backend, name: &str) -> Result<()> {
    let lock = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE",
    };
    let select =
        format!("SELECT name FROM tokens WHERE role = $1 AND revoked_at IS NULL ORDER BY id{lock}");
    let admins: Vec<String> = sqlx::query_scalar(&select)
        .bind(Role::Admin.as_str())
        .fetch_all(&mut **tx)
        .await?;
    if admins == [name] {
        return Err(Error::Conflict(
            "the last active admin token cannot be revoked".to_string(),
        ));
    }
    Ok(())
}

/// Whether any working token exists; with none, start-up issues an admin token.
pub async fn any_token_exists(db: &Db) -> Result<bool> {
    let row = sqlx::query("SELECT COUNT(*) AS count FROM tokens WHERE revoked_at IS NULL")
        .fetch_one(db.reader())
        .await?;
    Ok(row.try_get::<i64, _>("count")? > 0)
}

/// Issues a token, shown once in this answer.
#[utoipa::path(post, path = "/security/tokens", tag = "tokens",
    request_body = CreateToken,
    responses((status = 201, body = IssuedToken), (status = 409, description = "name taken")),
    security(("bearer" = [])))]
async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<IssuedToken>)> {
    principal.require(Capability::ManageTokens)?;
    let now = state.clock.now();
    let secret = Secret::generate("vh_");

    let issued = issue_token(
        &state.db,
        now,
        &principal.name,
        &request.name,
        request.role,
        secret,
    )
    .await?;

    tracing::info!(token.name = %issued.name, token.role = issued.role.as_str(), "token issued");
    Ok((StatusCode::CREATED, Json(issued)))
}

/// Working tokens, without their secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
    /// Always `null`: every working token fits on one page.
    pub next_cursor: Option<String>,
}

/// Working tokens, newest first.
#[utoipa::path(get, path = "/security/tokens", tag = "tokens",
    responses((status = 200, body = TokenList)), security(("bearer" = [])))]
async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<TokenList>> {
    principal.require(Capability::ManageTokens)?;
    let items = list_token_infos(&state.db).await?;
    Ok(Json(TokenList {
        items,
        next_cursor: None,
    }))
}

/// Revokes a token at once.
#[utoipa::path(post, path = "/security/tokens/{name}/revoke", tag = "tokens",
    params(("name" = String, Path)),
    responses((status = 200, body = TokenInfo), (status = 404),
        (status = 409, description = "the last active admin token")),
    security(("bearer" = [])))]
async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TokenInfo>> {
    principal.require(Capability::ManageTokens)?;
    let token = list_token_infos(&state.db)
        .await?
        .into_iter()
        .find(|token| token.name == name)
        .ok_or_else(|| Error::NotFound(format!("no working token named `{name}`")))?;

    revoke_token_named(&state.db, state.clock.now(), &principal.name, &name).await?;
    state.tokens.evict(|known| known.principal.name == name);

    tracing::info!(token.name = %name, "token revoked");
    Ok(Json(token))
}
