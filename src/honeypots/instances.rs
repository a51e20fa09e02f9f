//! `/security/honeypot/instances`: register, list, deactivate decoys and
//! rotate their keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::audit::{self, Change};
use crate::auth::{Capability, Principal, Secret};
use crate::error::{Error, FieldError, Result};
use crate::http::{fetch_page, ApiJson, ApiPath, ApiQuery, Page, PageRequest};
use crate::server::AppState;
use crate::storage::{self, conflict_on_duplicate, Filter, Tx};
use crate::time::Timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_honeypot, list_honeypots))
        .routes(routes!(deactivate_honeypot))
        .routes(routes!(rotate_honeypot_key))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoneypotType {
    Ssh,
    Web,
    Database,
    Custom,
}

impl HoneypotType {
    pub fn as_str(self) -> &'static str {
        match self {
            HoneypotType::Ssh => "ssh",
            HoneypotType::Web => "web",
            HoneypotType::Database => "database",
            HoneypotType::Custom => "custom",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Ssh, Self::Web, Self::Database, Self::Custom]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// A registered decoy.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoneypotInstance {
    pub id: i64,
    pub name: String,
    pub honeypot_type: HoneypotType,
    pub location: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub description: Option<String>,
    pub is_active: bool,
    pub created_at: Timestamp,
    pub deactivated_at: Option<Timestamp>,
    pub last_seen_at: Option<Timestamp>,
    pub event_count: i64,
}

/// An instance with its key, shown only when the key is issued.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoneypotWithKey {
    #[serde(flatten)]
    pub instance: HoneypotInstance,
    /// Send as `X-HONEYPOT-KEY`; it is not shown again.
    pub api_key: String,
}

const INSTANCE_COLUMNS: &str = "id, name, honeypot_type, location, latitude, longitude, \
    description, created_at, deactivated_at, last_seen_at, event_count";

impl HoneypotInstance {
    fn from_row(row: &AnyRow) -> Result<Self> {
        let kind: String = row.try_get("honeypot_type")?;
        let deactivated_at = storage::timestamp_opt(row, "deactivated_at")?;
        Ok(HoneypotInstance {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            honeypot_type: HoneypotType::parse(&kind)
                .ok_or_else(|| Error::Internal(format!("stored honeypot type {kind}")))?,
            location: row.try_get("location")?,
            latitude: row.try_get("latitude")?,
            longitude: row.try_get("longitude")?,
            description: row.try_get("description")?,
            is_active: deactivated_at.is_none(),
            created_at: storage::timestamp(row, "created_at")?,
            deactivated_at,
            last_seen_at: storage::timestamp_opt(row, "last_seen_at")?,
            event_count: row.try_get("event_count")?,
        })
    }
}

/// A decoy to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHoneypot {
    #[schema(example = "fra-ssh-01")]
    name: String,
    honeypot_type: HoneypotType,
    location: Option<String>,
    #[schema(minimum = -90, maximum = 90)]
    latitude: Option<f64>,
    #[schema(minimum = -180, maximum = 180)]
    longitude: Option<f64>,
    description: Option<String>,
}

impl RegisterHoneypot {
    fn validate(&self) -> Result<()> {
        let mut errors = Vec::new();
        let name = self.name.as_str();
        if name.is_empty() || name.chars().count() > 100 || name.trim() != name {
            errors.push(FieldError::new(
                "name",
                "must be 1 to 100 characters, not padded",
            ));
        }
        if name.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "name",
                "must not contain control characters",
            ));
        }
        if name.chars().any(crate::http::is_direction_control) {
            errors.push(FieldError::new(
                "name",
                "must not contain text direction controls (U+202A-U+202E, U+2066-U+2069), \
                 which make a name display as another",
            ));
        }
        if self
            .latitude
            .is_some_and(|value| !(-90.0..=90.0).contains(&value))
        {
            errors.push(FieldError::new("latitude", "must be between -90 and 90"));
        }
        if self
            .longitude
            .is_some_and(|value| !(-180.0..=180.0).contains(&value))
        {
            errors.push(FieldError::new("longitude", "must be between -180 and 180"));
        }
        for (field, text) in [
            ("location", &self.location),
            ("description", &self.description),
        ] {
            if text
                .as_ref()
                .is_some_and(|text| text.chars().count() > 1000)
            {
                errors.push(FieldError::new(field, "must be at most 1000 characters"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid_fields(errors))
        }
    }
}

/// Registers a decoy and issues its key (shown only in this answer).
#[utoipa::path(post, path = "/security/honeypot/instances", tag = "honeypots",
    request_body = RegisterHoneypot,
    responses((status = 201, body = HoneypotWithKey), (status = 409, description = "name taken")),
    security(("bearer" = [])))]
async fn register_honeypot(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<RegisterHoneypot>,
) -> Result<(StatusCode, Json<HoneypotWithKey>)> {
    principal.require(Capability::ManageHoneypots)?;
    request.validate()?;
    let now = state.clock.now();
    let key = Secret::generate("hp_");

    let mut tx = state.db.begin().await?;
    let instance = insert_instance(&mut tx, now, &request, &key).await?;
    record_change(
        &mut tx,
        now,
        &principal.name,
        "honeypot.registered",
        &instance,
    )
    .await?;
    tx.commit().await?;

    tracing::info!(honeypot.id = instance.id, "honeypot registered");
    let issued = HoneypotWithKey {
        instance,
        api_key: key.expose().to_string(),
    };
    Ok((StatusCode::CREATED, Json(issued)))
}

async fn insert_instance(
    tx: &mut Tx,
    now: Timestamp,
    request: &RegisterHoneypot,
    key: &Secret,
) -> Result<HoneypotInstance> {
    let sql = format!(
        "INSERT INTO honeypot_instances \
             (name, honeypot_type, location, latitude, longitude, description, key_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {INSTANCE_COLUMNS}"
    );
    // Not a cached statement: sqlx 0.8's Any driver declares a NULL `f64`
    // as a `real` on PostgreSQL, and a statement first prepared with absent
    // coordinates would then refuse present ones (a 500 for valid input).
    let row = sqlx::query(&sql)
        .persistent(false)
        .bind(&request.name)
        .bind(request.honeypot_type.as_str())
        .bind(&request.location)
        .bind(request.latitude)
        .bind(request.longitude)
        .bind(&request.description)
        .bind(key.digest())
        .bind(now.millis())
        .fetch_one(&mut **tx)
        .await
        .map_err(|error| {
            conflict_on_duplicate(error, || {
                format!("a honeypot named `{}` already exists", request.name)
            })
        })?;
    HoneypotInstance::from_row(&row)
}

async fn record_change(
    tx: &mut Tx,
    now: Timestamp,
    actor: &str,
    kind: &'static str,
    instance: &HoneypotInstance,
) -> Result<()> {
    let change = Change {
        actor,
        kind,
        subject_type: "honeypot",
        subject_id: Some(instance.id.to_string()),
        old_value: None,
        new_value: Some(serde_json::to_value(instance).expect("instance serialises")),
    };
    audit::record(tx, now, change).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HoneypotListQuery {
    /// Only active (`true`) or only deactivated (`false`) instances; all if omitted.
    active: Option<bool>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Registered decoys, newest first.
#[utoipa::path(get, path = "/security/honeypot/instances", tag = "honeypots",
    params(HoneypotListQuery),
    responses((status = 200, body = Page<HoneypotInstance>)), security(("bearer" = [])))]
async fn list_honeypots(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<HoneypotListQuery>,
) -> Result<Json<Page<HoneypotInstance>>> {
    principal.require(Capability::ReadSecurityState)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;

    let mut filter = Filter::new();
    match query.active {
        Some(true) => filter.raw("deactivated_at IS NULL"),
        Some(false) => filter.raw("deactivated_at IS NOT NULL"),
        None => &mut filter,
    };
    let select = &format!("SELECT {INSTANCE_COLUMNS} FROM honeypot_instances");
    let page = fetch_page(
        state.db.reader(),
        select,
        "id",
        filter,
        page,
        HoneypotInstance::from_row,
        |instance| instance.id,
    )
    .await?;
    Ok(Json(page))
}

/// Deactivates a decoy: its key stops working at once. Deactivating an
/// inactive instance changes nothing.
#[utoipa::path(post, path = "/security/honeypot/instances/{id}/deactivate", tag = "honeypots",
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = HoneypotInstance), (status = 404)), security(("bearer" = [])))]
async fn deactivate_honeypot(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<HoneypotInstance>> {
    principal.require(Capability::ManageHoneypots)?;
    let now = state.clock.now();

    let mut tx = state.db.begin().await?;
    let sql = format!(
        "UPDATE honeypot_instances SET deactivated_at = $1 \
         WHERE id = $2 AND deactivated_at IS NULL RETURNING {INSTANCE_COLUMNS}"
    );
    let updated = sqlx::query(&sql)
        .bind(now.millis())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let instance = match updated {
        Some(row) => {
            let instance = HoneypotInstance::from_row(&row)?;
            record_change(
                &mut tx,
                now,
                &principal.name,
                "honeypot.deactivated",
                &instance,
            )
            .await?;
            tracing::info!(honeypot.id = id, "honeypot deactivated");
            instance
        }
        None => find_instance(&mut tx, id).await?,
    };
    tx.commit().await?;
    state.honeypot_keys.evict(|honeypot| honeypot.id == id);

    Ok(Json(instance))
}

/// Issues a new key; the old one stops working at once.
#[utoipa::path(post, path = "/security/honeypot/instances/{id}/rotate-key", tag = "honeypots",
    params(("id" = i64, Path, minimum = 1)),
    responses(
        (status = 200, body = HoneypotWithKey),
        (status = 404), (status = 409, description = "the instance is deactivated")),
    security(("bearer" = [])))]
async fn rotate_honeypot_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<HoneypotWithKey>> {
    principal.require(Capability::ManageHoneypots)?;
    let now = state.clock.now();
    let key = Secret::generate("hp_");

    let mut tx = state.db.begin().await?;
    let sql = format!(
        "UPDATE honeypot_instances SET key_hash = $1 \
         WHERE id = $2 AND deactivated_at IS NULL RETURNING {INSTANCE_COLUMNS}"
    );
    let updated = sqlx::query(&sql)
        .bind(key.digest())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = updated else {
        find_instance(&mut tx, id).await?;
        return Err(Error::Conflict(format!(
            "honeypot {id} is deactivated; register a new one"
        )));
    };
    let instance = HoneypotInstance::from_row(&row)?;
    record_change(
        &mut tx,
        now,
        &principal.name,
        "honeypot.key_rotated",
        &instance,
    )
    .await?;
    tx.commit().await?;
    state.honeypot_keys.evict(|honeypot| honeypot.id == id);

    tracing::info!(honeypot.id = id, "honeypot key rotated");
    Ok(Json(HoneypotWithKey {
        instance,
        api_key: key.expose().to_string(),
    }))
}

async fn find_instance(tx: &mut Tx, id: i64) -> Result<HoneypotInstance> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM honeypot_instances WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no honeypot with id {id}")))?;
    HoneypotInstance::from_row(&row)
}
