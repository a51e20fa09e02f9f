//! `POST /security/honeypot/events/bulk`: many records at once, in
//! Valhalla's format or a honeypot's own log format.
//!
//! Each record gets a fingerprint: the digest of its format and its exact
//! bytes. Stored with the event and unique per honeypot, it makes a resent
//! batch (a shipper retrying after a timeout) store nothing twice, without
//! the shipper having to keep any key. The price: two byte-identical records
//! from one honeypot count as one, which for native logs cannot happen
//! (their records carry microsecond timestamps) and for Valhalla's format
//! means a record should carry its `occurred_at`.

use axum::extract::{FromRequest, Request, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::formats::{map_record, Format, Mapped};
use super::key::AuthenticatedHoneypot;
use super::writer::PendingEvent;
use crate::error::{Error, Result};
use crate::http::{
    media_type, parse_value, parse_values, read_body, replace_nul, ApiQuery, RejectedLine,
};
use crate::server::AppState;
use crate::time::Timestamp;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BulkQuery {
    /// Record format: `valhalla` (default), `cowrie` or `opencanary`.
    #[param(inline)]
    format: Option<Format>,
}

/// What happened to each line of a bulk upload; accepted + skipped +
/// rejected = the body's non-blank lines (or array elements).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct BulkReport {
    /// Records stored, now or by an earlier copy of the same upload.
    pub accepted: usize,
    /// Records without attacker activity (e.g. a honeypot's start-up lines).
    pub skipped: usize,
    /// Records that could not be read, with their line numbers (from 1).
    pub rejected: Vec<RejectedLine>,
    /// Of the accepted records, those already stored before this upload.
    pub duplicates: usize,
}

/// A bulk body: NDJSON (one JSON record a line) or one JSON array.
pub struct BulkBody(axum::body::Bytes);

impl FromRequest<AppState> for BulkBody {
    type Rejection = Error;

    async fn from_request(request: Request, state: &AppState) -> Result<Self> {
        let media_type = media_type(request.headers()).unwrap_or_default();
        let accepted = [
            "application/json",
            "application/x-ndjson",
            "application/jsonl",
        ];
        if !accepted.contains(&media_type.as_str()) {
            return Err(Error::UnsupportedMediaType(
                "send NDJSON as `application/x-ndjson` or an array as `application/json`"
                    .to_string(),
            ));
        }
        Ok(BulkBody(read_body(request, state).await?))
    }
}

/// Stores many records from one honeypot. Good records are stored even when
/// others are bad; a resent record is recognised and not stored twice.
#[utoipa::path(post, path = "/security/honeypot/events/bulk", tag = "honeypots",
    params(BulkQuery),
    request_body(content = String, description = "NDJSON records, or a JSON array of records",
        content_type = "application/x-ndjson"),
    responses(
        (status = 200, body = BulkReport),
        (status = 400, description = "a JSON array body that is not valid JSON"),
        (status = 401), (status = 413), (status = 415)),
    security(("honeypot_key" = [])))]
pub async fn submit_events_bulk(
    State(state): State<AppState>,
    honeypot: AuthenticatedHoneypot,
    ApiQuery(query): ApiQuery<BulkQuery>,
    BulkBody(body): BulkBody,
) -> Result<Json<BulkReport>> {
    let format = query.format.unwrap_or_default();
    let now = state.clock.now();
    let parsing = tokio::task::spawn_blocking(move || parse_batch(format, &body, now));
    let (events, mut report) = parsing
        .await
        .map_err(|error| Error::Internal(format!("parsing a batch: {error}")))??;

    let written = state.events.write(honeypot.id, now, events, false).await?;

    report.duplicates = report.accepted - written.stored;
    tracing::info!(
        honeypot.id = honeypot.id,
        format = format.as_str(),
        accepted = report.accepted,
        stored = written.stored,
        skipped = report.skipped,
        rejected = report.rejected.len(),
        "bulk events received"
    );
    Ok(Json(report))
}

/// Splits the body into records and maps each one.
pub fn parse_batch(
    format: Format,
    body: &[u8],
    now: Timestamp,
) -> Result<(Vec<PendingEvent>, BulkReport)> {
    let mut events = Vec::new();
    let mut report = BulkReport::default();
    for (line, record) in split_records(body)? {
        let mapped = record.and_then(|(bytes, mut value)| {
            replace_nul(&mut value);
            map_record(format, value, now)
                .map(|mapped| (fingerprint(format.as_str(), &bytes), mapped))
        });
        match mapped {
            Ok((fingerprint, Mapped::Event(event))) => {
                events.push(PendingEvent::new(*event, Some(fingerprint)));
                report.accepted += 1;
            }
            Ok((_, Mapped::Skipped(_))) => report.skipped += 1,
            Err(error) => report.rejected.push(RejectedLine { line, error }),
        }
    }
    Ok((events, report))
}

type Record = std::result::Result<(Vec<u8>, serde_json::Value), String>;

/// `(line number, record bytes and value or why not)` for each record.
fn split_records(body: &[u8]) -> Result<Vec<(usize, Record)>> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    if first == Some(&b'[') {
        let values = parse_values(body)
            .map_err(|error| Error::BadRequest(format!("malformed JSON array: {error}")))?;
        return Ok(values
            .into_iter()
            .enumerate()
            .map(|(index, value)| {
                let bytes = serde_json::to_vec(&value).expect("a value serialises");
                (index + 1, Ok((bytes, value)))
            })
            .collect());
    }

    Ok(body
        .split(|byte| *byte == b'\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(number, line)| {
            let parsed = parse_value(line)
                .map(|value| (line.to_vec(), value))
                .map_err(|error| format!("malformed JSON: {error}"));
            (number, parsed)
        })
        .collect())
}

/// Identifies an event by what names it: a bulk record by its format's
/// name and its exact bytes, a single event by `idempotency-key` and its
/// key. The names differ, so the two kinds never collide.
pub(super) fn fingerprint(namespace: &str, bytes: &[u8]) -> String {
    let mut digest = Sha256::new();
    digest.update(namespace.as_bytes());
    digest.update([0]);
    digest.update(bytes);
    hex::encode(digest.finalize())
}
