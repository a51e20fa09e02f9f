//! `/security/honeypot/events`: telemetry pushed by decoys, classified as it
//! is stored, and listed with filters.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::bulk::fingerprint;
use super::key::AuthenticatedHoneypot;
use super::writer::PendingEvent;
use crate::auth::{Capability, Principal, Secret};
use crate::blocklist::entity::parse_ip;
use crate::detection::ThreatLevel;
use crate::error::{Error, Result};
use crate::http::{address_filter, fetch_page, ApiQuery, Page, PageRequest, TelemetryJson};
use crate::server::AppState;
use crate::storage::{self, query::Param, Filter};
use crate::time::Timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit_event, list_events))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Connection,
    AuthAttempt,
    Exploitation,
    Scan,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        Self::Connection,
        Self::AuthAttempt,
        Self::Exploitation,
        Self::Scan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Connection => "connection",
            EventType::AuthAttempt => "auth_attempt",
            EventType::Exploitation => "exploitation",
            EventType::Scan => "scan",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// An event as a honeypot sends it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSubmission {
    event_type: EventType,
    #[schema(example = "203.0.113.7")]
    source_ip: String,
    source_port: Option<u16>,
    destination_port: Option<u16>,
    protocol: Option<String>,
    username: Option<String>,
    #[schema(value_type = Option<String>)]
    password: Option<SubmittedSecret>,
    command: Option<String>,
    session_id: Option<String>,
    /// Anything else the honeypot knows. For `auth_attempt`, `"success": true`
    /// marks a login the honeypot accepted.
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    /// Defaults to the time of receipt. Must carry an offset.
    occurred_at: Option<Timestamp>,
}

/// A password as typed by an attacker: kept out of logs like any secret.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct SubmittedSecret(#[serde(deserialize_with = "secret_from_string")] Secret);

fn secret_from_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Secret, D::Error> {
    String::deserialize(deserializer).map(Secret::new)
}

/// A validated event, ready to classify and store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: EventType,
    pub source_ip: String,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
    pub protocol: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub command: Option<String>,
    pub session_id: Option<String>,
    pub payload: Option<Value>,
    pub occurred_at: Timestamp,
    /// The honeypot accepted this login (the attacker got in).
    pub login_succeeded: bool,
    /// The attacker uploaded or downloaded a file (a payload delivery).
    pub payload_delivered: bool,
}

impl EventSubmission {
    /// Validates a submission; in Valhalla's format `payload.success: true`
    /// marks an accepted login.
    pub(crate) fn into_new_event(self, now: Timestamp) -> Result<NewEvent> {
        let source_ip = parse_ip(&self.source_ip)
            .map_err(|message| Error::invalid_field("source_ip", message))?;
        if self
            .payload
            .as_ref()
            .is_some_and(|payload| !payload.is_object())
        {
            return Err(Error::invalid_field("payload", "must be a JSON object"));
        }
        let login_succeeded = self
            .payload
            .as_ref()
            .and_then(|payload| payload.get("success"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(NewEvent {
            event_type: self.event_type,
            source_ip: source_ip.to_string(),
            source_port: self.source_port,
            destination_port: self.destination_port,
            protocol: self.protocol,
            username: self.username,
            password: self.password.map(|password| password.0),
            command: self.command,
            session_id: self.session_id,
            payload: self.payload,
            occurred_at: self.occurred_at.unwrap_or(now),
            login_succeeded,
            payload_delivered: false,
        })
    }
}

/// A stored, classified event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoneypotEvent {
    pub id: i64,
    pub honeypot_id: i64,
    pub event_type: EventType,
    pub source_ip: String,
    pub source_port: Option<i64>,
    pub destination_port: Option<i64>,
    pub protocol: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub command: Option<String>,
    pub session_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    pub threat_level: ThreatLevel,
    pub threat_tags: Vec<String>,
    /// True once the detection engine has judged it.
    pub is_processed: bool,
}

pub(crate) const EVENT_COLUMNS: &str = "id, honeypot_id, event_type, source_ip, source_port, \
    destination_port, protocol, username, password, command, session_id, payload, \
    occurred_at, received_at, threat_level, threat_tags, \
    CAST(CASE WHEN id <= (SELECT judged_through FROM engine_state) THEN 1 ELSE 0 END AS BIGINT) \
        AS processed";

impl HoneypotEvent {
    pub(crate) fn from_row(row: &AnyRow) -> Result<Self> {
        let event_type: String = row.try_get("event_type")?;
        let threat_level: String = row.try_get("threat_level")?;
        let processed: i64 = row.try_get("processed")?;
        Ok(HoneypotEvent {
            id: row.try_get("id")?,
            honeypot_id: row.try_get("honeypot_id")?,
            event_type: EventType::parse(&event_type)
                .ok_or_else(|| Error::Internal(format!("stored event type {event_type}")))?,
            source_ip: row.try_get("source_ip")?,
            source_port: row.try_get("source_port")?,
            destination_port: row.try_get("destination_port")?,
            protocol: row.try_get("protocol")?,
            username: row.try_get("username")?,
            password: row.try_get("password")?,
            command: row.try_get("command")?,
            session_id: row.try_get("session_id")?,
            payload: storage::json_opt(row, "payload")?,
            occurred_at: storage::timestamp(row, "occurred_at")?,
            received_at: storage::timestamp(row, "received_at")?,
            threat_level: ThreatLevel::parse(&threat_level)
                .ok_or_else(|| Error::Internal(format!("stored threat level {threat_level}")))?,
            threat_tags: storage::json(row, "threat_tags")?,
            is_processed: processed == 1,
        })
    }
}

/// The header by which a honeypot names one event, so that a request it
/// sends again (after a timeout, say) stores the event once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Stores one event from a honeypot, classified.
///
/// With an `Idempotency-Key`, the key names the event for its honeypot: a
/// request sent again with the same key stores nothing and answers with the
/// event stored the first time, whatever its body.
#[utoipa::path(post, path = "/security/honeypot/events", tag = "honeypots",
    request_body = EventSubmission,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Names this event (1 to 255 visible ASCII characters): a request \
            sent again with the same key stores nothing and answers with the event \
            stored the first time.")),
    responses((status = 201, body = HoneypotEvent),
        (status = 400, description = "an Idempotency-Key that is not 1 to 255 visible ASCII \
            characters"),
        (status = 401), (status = 422)),
    security(("honeypot_key" = [])))]
async fn submit_event(
    State(state): State<AppState>,
    honeypot: AuthenticatedHoneypot,
    headers: HeaderMap,
    TelemetryJson(submission): TelemetryJson<EventSubmission>,
) -> Result<(StatusCode, Json<HoneypotEvent>)> {
    let now = state.clock.now();
    let fingerprint = idempotency_key(&headers)?.map(key_fingerprint);
    let event = submission.into_new_event(now)?;

    let pending = PendingEvent::new(event, fingerprint.clone());
    let written = state
        .events
        .write(honeypot.id, now, vec![pending], true)
        .await?;
    let stored = match (written.rows.into_iter().next(), fingerprint) {
        (Some(stored), _) => stored,
        (None, Some(fingerprint)) => event_named(&state, honeypot.id, &fingerprint).await?,
        (None, None) => {
            return Err(Error::Internal(
                "the stored event was not returned".to_string(),
            ));
        }
    };

    tracing::debug!(
        honeypot.id = honeypot.id,
        event.id = stored.id,
        "event stored"
    );
    Ok((StatusCode::CREATED, Json(stored)))
}

/// The request's `Idempotency-Key`, if it has one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| (1..=255).contains(&key.len()))
        .filter(|key| key.bytes().all(|byte| byte.is_ascii_graphic()))
        .ok_or_else(|| {
            Error::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".to_string(),
            )
        })?;
    Ok(Some(key))
}

/// The fingerprint an `Idempotency-Key` gives its event.
fn key_fingerprint(key: &str) -> String {
    fingerprint(IDEMPOTENCY_KEY, key.as_bytes())
}

/// The event a honeypot stored under `fingerprint`: the answer to a
/// request sent again.
async fn event_named(
    state: &AppState,
    honeypot_id: i64,
    fingerprint: &str,
) -> Result<HoneypotEvent> {
    let row = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM honeypot_events WHERE honeypot_id = $1 AND fingerprint = $2"
    ))
    .bind(honeypot_id)
    .bind(fingerprint)
    .fetch_optional(state.db.reader())
    .await?
    .ok_or_else(|| Error::Internal("an event resent under its key is not stored".to_string()))?;
    HoneypotEvent::from_row(&row)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventListQuery {
    honeypot_id: Option<i64>,
    event_type: Option<EventType>,
    source_ip: Option<String>,
    threat_level: Option<ThreatLevel>,
    processed: Option<bool>,
    /// Only events that occurred at or after this instant.
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<Timestamp>,
    /// Only events that occurred before this instant.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<Timestamp>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Stored events, newest first.
#[utoipa::path(get, path = "/security/honeypot/events", tag = "honeypots",
    params(EventListQuery),
    responses((status = 200, body = Page<HoneypotEvent>)), security(("bearer" = [])))]
async fn list_events(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<EventListQuery>,
) -> Result<Json<Page<HoneypotEvent>>> {
    principal.require(Capability::ReadSecurityState)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let source_ip = address_filter(query.source_ip)?;

    let mut filter = Filter::new();
    filter
        .optional("honeypot_id = ?", query.honeypot_id.map(Param::from))
        .optional(
            "event_type = ?",
            query.event_type.map(|kind| kind.as_str().into()),
        )
        .optional("source_ip = ?", source_ip.map(Param::from))
        .optional(
            "threat_level = ?",
            query.threat_level.map(|level| level.as_str().into()),
        )
        .optional("occurred_at >= ?", query.since.map(|at| at.millis().into()))
        .optional("occurred_at < ?", query.until.map(|at| at.millis().into()));
    match query.processed {
        Some(true) => filter.raw("id <= (SELECT judged_through FROM engine_state)"),
        Some(false) => filter.raw("id > (SELECT judged_through FROM engine_state)"),
        None => &mut filter,
    };
    let select = &format!("SELECT {EVENT_COLUMNS} FROM honeypot_events");
    let page = fetch_page(
        state.db.reader(),
        select,
        "id",
        filter,
        page,
        HoneypotEvent::from_row,
        |event| event.id,
    )
    .await?;
    Ok(Json(page))
}
