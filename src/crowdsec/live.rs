//! `GET /v1/decisions`: the decisions that apply to an address or range
//! now, for bouncers in live mode (one query per client they see).

use axum::extract::{RawQuery, State};
use axum::response::Response;
use utoipa::IntoParams;

use super::decision::{Decision, DecisionFilter, DECISION_COLUMNS};
use super::feed::{write_active_pages, write_rows, DecisionList, FeedWriter, Selection};
use super::{plain_head, query_pairs, streamed_json, Bouncer, LapiError, LapiMessage};
use crate::blocklist::entity::{parse_ip, range_key, Entity};
use crate::blocklist::Network;
use crate::error::{Error, Result};
use crate::policy::load_policy;
use crate::server::AppState;
use crate::time::Timestamp;

/// Which blocks a live query looks at, before the filters.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Every active `ip` and `cidr` block.
    All,
    /// The blocks containing an address: read from the in-memory index.
    Address(std::net::IpAddr),
    /// The blocks containing the whole network.
    Containing(Network),
    /// The blocks inside the network.
    Inside(Network),
}

/// The query parameters of `GET /v1/decisions`, as CrowdSec reads them.
/// Others are ignored.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; the handler reads them as pairs
pub struct LiveQuery {
    /// An address (IPv4, IPv6, or IPv4-mapped IPv6): decisions containing it.
    ip: Option<String>,
    /// A network `ADDRESS/PREFIX`: decisions containing it (or, with
    /// `contains=false`, inside it).
    range: Option<String>,
    /// `true` (default) or `false`, for `ip` and `range`.
    contains: Option<bool>,
    /// Comma list of scopes (`ip`, `range`), case-insensitive.
    scopes: Option<String>,
    /// Comma list of origins (`heimdall`, `tyr`, `human`, `system`).
    origins: Option<String>,
    /// Comma list: the scenario contains one of them (case-insensitive).
    scenarios_containing: Option<String>,
    /// Comma list: the scenario contains none of them (case-insensitive).
    scenarios_not_containing: Option<String>,
    /// The remediation: only `ban` is ever given.
    #[param(rename = "type")]
    remediation: Option<String>,
    /// A decision's exact value.
    value: Option<String>,
}

/// The decisions that apply to an address or range now (all active ones
/// without `ip` or `range`): a JSON array, or `null` when none.
#[utoipa::path(get, path = "/decisions", tag = "crowdsec",
    params(LiveQuery),
    responses(
        (status = 200, description = "the matching decisions, or `null` when none",
            content((Option<Vec<Decision>> = "application/json; charset=utf-8"))),
        (status = 400, description = "a bad `ip`, `range` or `contains`",
            body = LapiMessage, content_type = "application/json; charset=utf-8"),
        (status = 403, description = "missing or unknown `X-Api-Key`",
            body = LapiMessage, content_type = "application/json; charset=utf-8")),
    security(("crowdsec_key" = [])))]
pub async fn live_decisions(
    State(state): State<AppState>,
    bouncer: Bouncer,
    RawQuery(raw): RawQuery,
) -> Result<Response, LapiError> {
    let parameters = query_pairs(raw.as_deref())?;
    let target = read_target(&parameters)?;
    let filter = DecisionFilter::read(&parameters);
    let now = state.clock.now();

    let allowlist = load_policy(state.db.reader()).await?.settings.allowlist;
    let ids = match target {
        Target::Address(address) => Some(state.blocklist.matching(&Entity::Ip(address), now)),
        _ => None,
    };

    let (mut out, body) = FeedWriter::to_client();
    tracing::debug!(bouncer = %bouncer.name, "live decision query");
    tokio::spawn(async move {
        let selection = Selection {
            filter: &filter,
            allowlist: &allowlist,
        };
        let written = write_live(&state, target, ids.as_deref(), &selection, now, &mut out).await;
        if let Err(error) = written {
            tracing::warn!(%error, "live decision query not completed");
            out.abort().await;
        }
    });
    Ok(streamed_json(body))
}

/// As CrowdSec 1.4.6 answers it: 200, text/plain and no body whether
/// anything matches or not (so HEAD cannot test membership), once the key
/// is good.
#[utoipa::path(head, path = "/decisions", tag = "crowdsec",
    params(LiveQuery),
    responses(
        (status = 200, description = "the key is good; nothing else is told",
            content_type = "text/plain; charset=utf-8"),
        (status = 403, description = "missing or unknown `X-Api-Key`",
            content_type = "application/json; charset=utf-8")),
    security(("crowdsec_key" = [])))]
pub async fn live_decisions_head(_bouncer: Bouncer) -> Response {
    plain_head()
}

/// Reads `ip`, `range` and `contains`; bad values are 400 (CrowdSec: 500).
fn read_target(parameters: &[(String, String)]) -> Result<Target> {
    let find = |name: &str| {
        parameters
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let contains = match find("contains") {
        None => true,
        Some(text) => parse_go_bool(text).ok_or_else(|| {
            Error::BadRequest(format!(
                "invalid contains value: `{text}` is not true or false"
            ))
        })?,
    };
    let network = match (find("ip"), find("range")) {
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest("give ip or range, not both".to_string()));
        }
        (Some(ip), None) => match parse_ip(ip) {
            Ok(address) if contains => return Ok(Target::Address(address)),
            Ok(address) => Network::host(address),
            Err(message) => return Err(Error::BadRequest(message)),
        },
        (None, Some(range)) => Network::parse(range, true).map_err(Error::BadRequest)?,
        (None, None) => return Ok(Target::All),
    };
    Ok(if contains {
        Target::Containing(network)
    } else {
        Target::Inside(network)
    })
}

/// The spellings of a boolean Go's `strconv.ParseBool` accepts.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Writes the array of decisions the target and selection admit.
async fn write_live(
    state: &AppState,
    target: Target,
    ids: Option<&[i64]>,
    selection: &Selection<'_>,
    now: Timestamp,
    out: &mut FeedWriter,
) -> Result<()> {
    let mut list = DecisionList::default();
    if let Target::All = target {
        // A live query records no position: every active block is sent.
        write_active_pages(&state.db, now, i64::MAX, selection, &mut list, out).await?;
        list.end(out);
        return out.send().await;
    }

    let active = "deactivated_at IS NULL AND (expires_at IS NULL OR expires_at > $1)";
    let sql = match (target, ids) {
        (Target::Address(_), Some(ids)) => {
            // Ids from the index are integers, so they are written inline.
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            let ids = if ids.is_empty() {
                "NULL".to_string()
            } else {
                ids.join(", ")
            };
            format!(
                "SELECT {DECISION_COLUMNS} FROM blocks WHERE {active} AND id IN ({ids}) \
                 ORDER BY id"
            )
        }
        (Target::Containing(_), _) => format!(
            "SELECT {DECISION_COLUMNS} FROM blocks WHERE {active} \
             AND family = $2 AND range_start <= $3 AND range_end >= $4 ORDER BY id"
        ),
        (Target::Inside(_), _) => format!(
            "SELECT {DECISION_COLUMNS} FROM blocks WHERE {active} \
             AND family = $2 AND range_start >= $3 AND range_end <= $4 ORDER BY id"
        ),
        _ => format!("SELECT {DECISION_COLUMNS} FROM blocks WHERE {active} ORDER BY id"),
    };
    let mut query = sqlx::query(&sql).bind(now.millis());
    if let Target::Containing(network) | Target::Inside(network) = target {
        let (start, end) = network.range();
        query = query
            .bind(network.family())
            .bind(range_key(start))
            .bind(range_key(end));
    }

    let decide = |row: super::decision::DecisionRow| row.into_decision(now);
    write_rows(state.db.reader(), query, selection, &mut list, out, decide).await?;
    list.end(out);
    out.send().await
}
