//! `GET /v1/decisions/stream`: what bouncers poll. The first pull (or one
//! with `startup=true`) sends every active decision; each later pull sends
//! what changed since that bouncer's previous one, from the blocklist's
//! change log:
//!
//! - `new`: active blocks created or extended since (their change number
//!   is after the bouncer's), and long blocks due for a re-send (below).
//! - `deleted`: blocks the bouncer may hold (created at or before its
//!   position) that ended since: deactivated after its position, or expired
//!   after its previous pull, at the instant, before the sweep closes them.
//!   A value that has an active block is never in `deleted`: the bouncer
//!   either holds that block or finds it in `new`. Deletions are sent for
//!   allowlisted addresses too, so that bouncers drop them; their duration
//!   is `1s` (CrowdSec sends the negative time since the end, which some
//!   bouncers hand on to ipset, which refuses it).
//!
//! Durations are capped at ipset's maximum of 2,147,483 s (about 24.8 days),
//! so a bouncer lets a permanent or longer block go after that long. Each
//! time a pull's window (its previous pull, now] crosses
//! `created_at + k × cap / 2` for a block longer than the cap, the block is
//! sent in `new` again, with a fresh capped duration: a bouncer that polls
//! more often than every 12 days never drops it.
//!
//! The change number is read before the blocks, so nothing committed after
//! it is missed; changes numbered after it are left for the next pull, so
//! nothing is sent twice. The position is recorded once the body has been
//! written, just before its last chunk goes out: a pull cut short is not
//! counted, and the next one sends the same changes again.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::decision::{Decision, DecisionFilter, DecisionRow, DECISION_COLUMNS};
use super::duration::MAX_DURATION_SECONDS;
use super::feed::{write_active_pages, write_rows, DecisionList, FeedWriter, Selection};
use super::pulls::{self, PullPosition};
use super::JSON_MEDIA_TYPE;
use super::{plain_head, query_pairs, streamed_json, Bouncer, LapiError, LapiMessage};
use crate::blocklist::changes;
use crate::blocklist::Network;
use crate::error::Result;
use crate::policy::load_policy;
use crate::server::AppState;
use crate::time::Timestamp;

/// The duration a deleted decision carries.
const DELETED_DURATION: &str = "1s";
/// Active blocks at `$1` (now); rows of other entity types than `ip` and
/// `cidr` are skipped as they are read (see `DecisionRow::from_row`).
const ACTIVE: &str = "deactivated_at IS NULL AND (expires_at IS NULL OR expires_at > $1)";
/// No active block of the same entity at `$1` that the bouncer holds or
/// gets in this pull (created at or before this pull's position, `$4`):
/// such a value is still to be enforced. A block created after the
/// position goes out in the next pull, so it cannot stand in for the
/// deletion, which would otherwise never be sent.
const NOT_LIVE_AGAIN: &str = "NOT EXISTS (SELECT 1 FROM blocks live \
    WHERE live.entity_type = ended.entity_type AND live.value = ended.value \
      AND live.deactivated_at IS NULL \
      AND (live.expires_at IS NULL OR live.expires_at > $1) \
      AND live.created_seq <= $4)";

/// The stream's answer: `deleted` then `new`, each an array or `null`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionStream {
    pub deleted: Option<Vec<Decision>>,
    pub new: Option<Vec<Decision>>,
}

/// The query parameters of the stream. Others are ignored.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; the handler reads them as pairs
pub struct StreamQuery {
    /// `true`: every active decision, as on a bouncer's first pull.
    startup: Option<bool>,
    /// Comma list of scopes, case-insensitive; default `ip,range`.
    scopes: Option<String>,
    /// Comma list of origins (`heimdall`, `tyr`, `human`, `system`).
    origins: Option<String>,
    /// Comma list: the scenario contains one of them (case-insensitive).
    scenarios_containing: Option<String>,
    /// Comma list: the scenario contains none of them (case-insensitive).
    scenarios_not_containing: Option<String>,
}

/// What one pull sends.
#[derive(Debug, Clone, Copy)]
struct Pull {
    /// The bouncer's previous position, or `None` for a startup pull.
    since: Option<PullPosition>,
    /// This pull's position: the change number read first, and now.
    position: PullPosition,
}

/// The decisions that changed since this bouncer's previous pull (all
/// active ones on its first pull or with `startup=true`).
#[utoipa::path(get, path = "/decisions/stream", tag = "crowdsec",
    params(StreamQuery),
    responses(
        (status = 200, description = "what changed since the previous pull",
            body = DecisionStream, content_type = "application/json; charset=utf-8"),
        (status = 400, description = "a malformed query string",
            body = LapiMessage, content_type = "application/json; charset=utf-8"),
        (status = 403, description = "missing or unknown `X-Api-Key`",
            body = LapiMessage, content_type = "application/json; charset=utf-8")),
    security(("crowdsec_key" = [])))]
pub async fn decision_stream(
    State(state): State<AppState>,
    bouncer: Bouncer,
    RawQuery(raw): RawQuery,
) -> Result<Response, LapiError> {
    answer_pull(state, bouncer, raw, Method::GET).await
}

/// A pull that answers no body, and moves the bouncer's position all the
/// same, as in CrowdSec: with `startup`, text/plain; without it, the JSON
/// media type and the length of the body a GET would have had.
#[utoipa::path(head, path = "/decisions/stream", tag = "crowdsec",
    params(StreamQuery),
    responses(
        (status = 200, description = "the pull was made; no body",
            content(("text/plain; charset=utf-8"), ("application/json; charset=utf-8"))),
        (status = 400, description = "a malformed query string",
            content_type = "application/json; charset=utf-8"),
        (status = 403, description = "missing or unknown `X-Api-Key`",
            content_type = "application/json; charset=utf-8")),
    security(("crowdsec_key" = [])))]
pub async fn decision_stream_head(
    State(state): State<AppState>,
    bouncer: Bouncer,
    RawQuery(raw): RawQuery,
) -> Result<Response, LapiError> {
    answer_pull(state, bouncer, raw, Method::HEAD).await
}

/// Plans the pull, then answers it as `method` asks.
async fn answer_pull(
    state: AppState,
    bouncer: Bouncer,
    raw: Option<String>,
    method: Method,
) -> Result<Response, LapiError> {
    let parameters = query_pairs(raw.as_deref())?;
    let startup = parameters
        .iter()
        .rev()
        .find(|(name, _)| name == "startup")
        .is_some_and(|(_, value)| value == "true");
    let filter = stream_filter(&parameters);

    let pull = plan_pull(&state, &bouncer, startup).await?;
    if method == Method::HEAD && pull.since.is_none() {
        pulls::record_pull(&state.db, &bouncer, pull.position).await?;
        return Ok(plain_head());
    }

    let allowlist = load_policy(state.db.reader()).await?.settings.allowlist;
    if method == Method::HEAD {
        return head_with_length(&state, &bouncer, pull, &filter, &allowlist).await;
    }
    let (mut out, body) = FeedWriter::to_client();
    tokio::spawn(async move {
        let sent = send_pull(&state, &bouncer, pull, &filter, &allowlist, &mut out).await;
        if let Err(error) = sent {
            tracing::warn!(%error, bouncer = %bouncer.name, "decision stream not completed");
            out.abort().await;
        }
    });
    Ok(streamed_json(body))
}

/// The stream's filters: `scopes` defaults to `ip,range`; `type` and
/// `value` are not stream filters in CrowdSec and are ignored.
fn stream_filter(parameters: &[(String, String)]) -> DecisionFilter {
    let mut filter = DecisionFilter::read(parameters);
    filter
        .scopes
        .get_or_insert_with(|| vec!["ip".to_string(), "range".to_string()]);
    filter.remediation = None;
    filter.value = None;
    filter
}

/// Reads the change number (first), then the bouncer's previous position.
async fn plan_pull(state: &AppState, bouncer: &Bouncer, startup: bool) -> Result<Pull> {
    let now = state.clock.now();
    let last_seq = changes::last_seq(state.db.reader()).await?;
    let previous = pulls::find_position(state.db.reader(), bouncer.token_id).await?;
    Ok(Pull {
        since: if startup { None } else { previous },
        position: PullPosition {
            last_seq,
            last_pull_at: now,
        },
    })
}

/// Writes the whole answer, records the pull, then lets the last chunk go.
async fn send_pull(
    state: &AppState,
    bouncer: &Bouncer,
    pull: Pull,
    filter: &DecisionFilter,
    allowlist: &[Network],
    out: &mut FeedWriter,
) -> Result<()> {
    write_pull(state, pull, filter, allowlist, out).await?;

    pulls::record_pull(&state.db, bouncer, pull.position).await?;

    out.send().await
}

/// A HEAD without `startup`: the pull is made (and recorded) but only its
/// length is answered.
async fn head_with_length(
    state: &AppState,
    bouncer: &Bouncer,
    pull: Pull,
    filter: &DecisionFilter,
    allowlist: &[Network],
) -> Result<Response, LapiError> {
    let mut out = FeedWriter::counting();
    write_pull(state, pull, filter, allowlist, &mut out).await?;

    pulls::record_pull(&state.db, bouncer, pull.position).await?;

    let mut response = Body::empty().into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_MEDIA_TYPE));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(out.length()));
    Ok(response)
}

/// Writes `{"deleted":…,"new":…}`, leaving the end in the writer's buffer.
async fn write_pull(
    state: &AppState,
    pull: Pull,
    filter: &DecisionFilter,
    allowlist: &[Network],
    out: &mut FeedWriter,
) -> Result<()> {
    out.push(b"{\"deleted\":");
    let mut deleted = DecisionList::default();
    if let Some(since) = pull.since {
        write_deleted(state, since, pull.position, filter, &mut deleted, out).await?;
    }
    deleted.end(out);

    out.push(b",\"new\":");
    let mut new = DecisionList::default();
    let selection = Selection { filter, allowlist };
    match pull.since {
        None => write_active(state, pull.position, &selection, &mut new, out).await?,
        Some(since) => write_new(state, since, pull.position, &selection, &mut new, out).await?,
    }
    new.end(out);
    out.push(b"}");
    Ok(())
}

/// Every active block: a startup pull.
async fn write_active(
    state: &AppState,
    position: PullPosition,
    selection: &Selection<'_>,
    list: &mut DecisionList,
    out: &mut FeedWriter,
) -> Result<()> {
    let (now, upto) = (position.last_pull_at, position.last_seq);
    write_active_pages(&state.db, now, upto, selection, list, out).await
}

/// Blocks created or extended since, then long blocks due for a re-send.
async fn write_new(
    state: &AppState,
    since: PullPosition,
    position: PullPosition,
    selection: &Selection<'_>,
    list: &mut DecisionList,
    out: &mut FeedWriter,
) -> Result<()> {
    let now = position.last_pull_at;
    let decide = |row: DecisionRow| row.into_decision(now);

    let changed = format!(
        "SELECT {DECISION_COLUMNS} FROM blocks \
         WHERE {ACTIVE} AND changed_seq > $2 AND changed_seq <= $3 \
         ORDER BY changed_seq, id"
    );
    let query = sqlx::query(&changed)
        .bind(now.millis())
        .bind(since.last_seq)
        .bind(position.last_seq);
    write_rows(state.db.reader(), query, selection, list, out, decide).await?;

    for (after, upto) in resend_windows(since.last_pull_at, now) {
        // Created in (after, upto]: a half-cap boundary of each such block
        // lies in (previous pull, now]. Unchanged since the previous pull
        // (a change sends it anyway) and longer than the cap.
        let due = format!(
            "SELECT {DECISION_COLUMNS} FROM blocks \
             WHERE {ACTIVE} AND created_at > $2 AND created_at <= $3 \
               AND changed_seq <= $4 AND (expires_at IS NULL OR expires_at - created_at > $5) \
             ORDER BY created_at, id"
        );
        let query = sqlx::query(&due)
            .bind(now.millis())
            .bind(after)
            .bind(upto)
            .bind(since.last_seq)
            .bind(MAX_DURATION_SECONDS * 1000);
        write_rows(state.db.reader(), query, selection, list, out, decide).await?;
    }
    Ok(())
}

/// The creation times, as disjoint windows `(after, upto]` in milliseconds,
/// of blocks that passed a multiple of half the cap after their creation
/// in `(previous, now]`: for the k-th multiple, created in
/// `(previous − k × half, now − k × half]`. Windows that overlap (a bouncer
/// that did not pull for longer than half the cap) are merged, so no block
/// is sent twice.
fn resend_windows(previous: Timestamp, now: Timestamp) -> Vec<(i64, i64)> {
    let half = MAX_DURATION_SECONDS * 1000 / 2;
    let (previous, now) = (previous.millis(), now.millis());
    let mut windows: Vec<(i64, i64)> = Vec::new();
    for k in 1..=now / half {
        let (after, upto) = (previous - k * half, now - k * half);
        match windows.last_mut() {
            Some(last) if upto >= last.0 => last.0 = after.min(last.0),
            _ => windows.push((after, upto)),
        }
    }
    windows
}

/// Blocks the bouncer may hold that ended since its previous pull.
async fn write_deleted(
    state: &AppState,
    since: PullPosition,
    position: PullPosition,
    filter: &DecisionFilter,
    list: &mut DecisionList,
    out: &mut FeedWriter,
) -> Result<()> {
    let now = position.last_pull_at;
    let selection = Selection {
        filter,
        allowlist: &[],
    };
    let decide = |row: DecisionRow| row.into_decision_with(DELETED_DURATION.to_string());

    // Deactivated by someone (not closed by the sweep at its expiry, which
    // the next query covers by time), after the bouncer's position.
    let deactivated = format!(
        "SELECT {DECISION_COLUMNS} FROM blocks ended \
         WHERE created_seq <= $2 \
           AND changed_seq > $2 AND changed_seq <= $3 \
           AND deactivated_at IS NOT NULL \
           AND (expires_at IS NULL OR deactivated_at < expires_at) \
           AND {NOT_LIVE_AGAIN} \
         ORDER BY changed_seq, id"
    );
    let query = sqlx::query(&deactivated)
        .bind(now.millis())
        .bind(since.last_seq)
        .bind(position.last_seq)
        .bind(position.last_seq);
    write_rows(state.db.reader(), query, &selection, list, out, decide).await?;

    // Expired between the previous pull and now, whether or not the sweep
    // has closed it yet.
    let expired = format!(
        "SELECT {DECISION_COLUMNS} FROM blocks ended \
         WHERE created_seq <= $2 \
           AND expires_at > $3 AND expires_at <= $1 \
           AND (deactivated_at IS NULL OR deactivated_at >= expires_at) \
           AND {NOT_LIVE_AGAIN} \
         ORDER BY expires_at, id"
    );
    let query = sqlx::query(&expired)
        .bind(now.millis())
        .bind(since.last_seq)
        .bind(since.last_pull_at.millis())
        .bind(position.last_seq);
    write_rows(state.db.reader(), query, &selection, list, out, decide).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(query: &str) -> Vec<(String, String)> {
        serde_urlencoded::from_str(query).unwrap()
    }

    #[test]
    fn the_stream_sends_ip_and_range_scopes_unless_asked_otherwise() {
        assert_eq!(
            stream_filter(&parameters("")).scopes,
            Some(vec!["ip".to_string(), "range".to_string()])
        );
        assert_eq!(
            stream_filter(&parameters("scopes=Country")).scopes,
            Some(vec!["country".to_string()])
        );
        assert_eq!(stream_filter(&parameters("type=captcha")).remediation, None);
    }

    fn at(millis: i64) -> Timestamp {
        Timestamp::from_millis(millis).unwrap()
    }

    #[test]
    fn resend_windows_cover_each_boundary_once() {
        let half = MAX_DURATION_SECONDS * 1000 / 2;
        let now = 10 * half + 5_000;
        let windows = resend_windows(at(now - 10_000), at(now));
        assert_eq!(windows.len(), 10);
        assert_eq!(windows[0], (now - 10_000 - half, now - half));
        assert_eq!(windows[9], (now - 10_000 - 10 * half, now - 10 * half));

        let long_gap = resend_windows(at(now - 3 * half), at(now));
        assert_eq!(long_gap, vec![(now - 3 * half - 10 * half, now - half)]);
        assert!(resend_windows(at(0), at(half - 1)).is_empty());
    }
}
