//! `GET /security/policy/blocks/export`: the active blocklist in the formats
//! that firewalls, proxies and threat-intelligence platforms load.
//!
//! Every format holds only active, unexpired blocks, and never an address
//! the allowlist covers: the allowlist is read after the blocks, so a block
//! that an allowlist change is deactivating right now is left out too.
//!
//! - `plain`: one canonical address or network a line (`ip` and `cidr`).
//! - `nftables`: a file for `nft -f` that replaces `table inet valhalla`,
//!   with the interval sets `blocked_v4` and `blocked_v6` and a chain
//!   `input` that drops their sources. An interval set refuses the whole
//!   file when two elements overlap, so overlapping and adjacent ranges (and
//!   an address inside a range) are merged, then written as the fewest
//!   networks that cover the merged ranges. The sets declare no `size`, so
//!   they are unbounded.
//! - `ipset`: input for `ipset restore -exist`: `hash:net` sets
//!   `valhalla-v4` and `valhalla-v6` created with timeout support and a
//!   `maxelem` of at least 1,048,576 and of the real count (a stable value,
//!   so re-creating an existing set with `-exist` does not fail), one `add`
//!   a network. A permanent block has `timeout 0` (permanent in ipset); an
//!   expiring one has its remaining seconds rounded up, so a block still
//!   active for a few milliseconds gets 1 rather than 0, and capped at
//!   ipset's maximum of 2,147,483. To drop entries that left the
//!   blocklist, restore into fresh sets and `ipset swap` them in.
//! - `nginx`: `deny ADDRESS;` and `deny NETWORK;` lines for an `include`.
//! - `csv`: every entity type, header
//!   `entity_type,value,reason,source,created_at,expires_at`, RFC 4180 quoting;
//!   a field starting with `=`, `+`, `-`, `@`, tab or carriage return gets a
//!   leading `'`, so that a spreadsheet shows it instead of running it.
//! - `json`: every entity type, `{"items": [block, ...]}` as the list answers.
//! - `stix`: a STIX 2.1 bundle with one indicator an `ip` or `cidr` block,
//!   ids derived from the block id so that they are stable between exports;
//!   `user` and `api_key` blocks have no indicator.
//!
//! The ETag names the state of the blocklist rather than digesting the
//! export: the format, the change log's last number (every block created,
//! extended, deactivated or swept as expired moves it), the policy version
//! (the allowlist) and how many blocks have passed their expiry without
//! being swept yet. Reading those is three index lookups, so a poller that
//! sends the ETag back in `If-None-Match` gets 304 without the server
//! reading a million blocks. The `ipset` export writes remaining seconds,
//! which change while the blocklist does not, so its ETag is weak.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::entity::{Entity, EntityType, Network};
use super::model::{Block, BLOCK_COLUMNS};
use crate::auth::{Capability, Principal};
use crate::error::{Error, Result};
use crate::http::ApiQuery;
use crate::policy::load_policy;
use crate::server::AppState;
use crate::time::Timestamp;

/// ipset's largest timeout, in seconds.
const IPSET_MAX_TIMEOUT_SECONDS: i64 = 2_147_483;
/// The smallest `maxelem` the ipset export declares.
const IPSET_MIN_MAXELEM: usize = 1 << 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_blocks))
}

/// How the export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Plain,
    Nftables,
    Ipset,
    Nginx,
    Csv,
    Json,
    Stix,
}

impl ExportFormat {
    fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Plain => "plain",
            ExportFormat::Nftables => "nftables",
            ExportFormat::Ipset => "ipset",
            ExportFormat::Nginx => "nginx",
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::Stix => "stix",
        }
    }

    /// Firewall formats carry addresses and networks only.
    fn addresses_only(self) -> bool {
        !matches!(self, ExportFormat::Csv | ExportFormat::Json)
    }

    fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv",
            ExportFormat::Json => "application/json",
            ExportFormat::Stix => "application/stix+json;version=2.1",
            _ => "text/plain; charset=utf-8",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    #[param(inline)]
    format: ExportFormat,
}

/// The `json` export.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlockExport {
    pub items: Vec<Block>,
}

/// An exported block, with the network of an `ip` or `cidr` block.
struct ExportedBlock {
    block: Block,
    network: Option<Network>,
}

/// The active blocklist, without allowlisted addresses, in a format that a
/// firewall, proxy or threat-intelligence platform loads. An `If-None-Match`
/// with the current `ETag` answers 304 with no body.
#[utoipa::path(get, path = "/security/policy/blocks/export", tag = "blocklist",
    params(ExportQuery,
        ("If-None-Match" = Option<String>, Header,
            description = "an ETag of an earlier export: 304 when nothing changed")),
    responses(
        (status = 200, description = "the export; `ETag` identifies its content",
            headers(("ETag" = String,
                description = "names the blocklist state exported (weak for ipset)")),
            content(
                (String = "text/plain; charset=utf-8"),
                (String = "text/csv"),
                (BlockExport = "application/json"),
                (Object = "application/stix+json;version=2.1"))),
        (status = 304, description = "unchanged since the ETag in `If-None-Match`"),
        (status = 400, description = "unknown or missing format")),
    security(("bearer" = [])))]
async fn export_blocks(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<Response> {
    principal.require(Capability::ReadBlocklist)?;
    let format = query.format;
    let now = state.clock.now();

    // The tag first: should the blocklist change while the export is read,
    // the export is newer than its tag, and the next poll fetches it again
    // rather than keeping a stale one.
    let etag = export_etag(&state, format, now).await?;
    if if_none_match_hits(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, etag)]).into_response());
    }

    let blocks = load_exported_blocks(&state, format, now).await?;

    let body = render(format, &blocks, now)?;
    let content_type = HeaderValue::from_static(format.content_type());
    let cache = HeaderValue::from_static("no-cache");
    Ok((
        [
            (CONTENT_TYPE, content_type),
            (ETAG, etag),
            (CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response())
}

/// Active blocks, oldest first, without any the allowlist covers.
async fn load_exported_blocks(
    state: &AppState,
    format: ExportFormat,
    now: Timestamp,
) -> Result<Vec<ExportedBlock>> {
    let kinds = if format.addresses_only() {
        "AND entity_type IN ('ip', 'cidr')"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {BLOCK_COLUMNS} FROM blocks \
         WHERE deactivated_at IS NULL AND (expires_at IS NULL OR expires_at > $1) {kinds} \
         ORDER BY id"
    );
    let rows = sqlx::query(&sql)
        .bind(now.millis())
        .fetch_all(state.db.reader())
        .await?;
    // Read after the blocks: an allowlist entry committed meanwhile still
    // hides the blocks it is about to deactivate.
    let allowlist = load_policy(state.db.reader()).await?.settings.allowlist;

    let mut exported = Vec::with_capacity(rows.len());
    for row in &rows {
        let block = Block::from_row(row, now)?;
        let network = block_network(&block)?;
        let allowlisted = network
            .is_some_and(|network| allowlist.iter().any(|allowed| allowed.overlaps(&network)));
        if !allowlisted {
            exported.push(ExportedBlock { block, network });
        }
    }
    Ok(exported)
}

fn block_network(block: &Block) -> Result<Option<Network>> {
    if !matches!(block.entity_type, EntityType::Ip | EntityType::Cidr) {
        return Ok(None);
    }
    let entity = Entity::parse(block.entity_type, &block.value)
        .map_err(|error| Error::Internal(format!("stored block {}: {error}", block.id)))?;
    Ok(entity.network())
}

/// Names the blocklist's state as this export shows it (see the module
/// comment).
async fn export_etag(
    state: &AppState,
    format: ExportFormat,
    now: Timestamp,
) -> Result<HeaderValue> {
    let row = sqlx::query(
        "SELECT (SELECT last_seq FROM blocklist_sequence WHERE id = 1) AS last_seq, \
                (SELECT version FROM policy WHERE id = 1) AS policy_version, \
                (SELECT COUNT(*) FROM blocks \
                 WHERE deactivated_at IS NULL AND expires_at <= $1) AS unswept",
    )
    .bind(now.millis())
    .fetch_one(state.db.reader())
    .await?;
    let last_seq: i64 = row.try_get("last_seq")?;
    let policy_version: i64 = row.try_get("policy_version")?;
    let unswept: i64 = row.try_get("unswept")?;

    let weak = if format == ExportFormat::Ipset {
        "W/"
    } else {
        ""
    };
    let tag = format!(
        "{weak}\"{}-{last_seq}-{policy_version}-{unswept}\"",
        format.as_str()
    );
    HeaderValue::from_str(&tag)
        .map_err(|_| Error::Internal(format!("export tag {tag} is not a header value")))
}

/// `If-None-Match` compares weakly (RFC 9110): `W/` is ignored, `*` matches.
fn if_none_match_hits(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|candidate| candidate.trim())
        .any(|candidate| {
            candidate == "*" || candidate.trim_start_matches("W/") == etag.trim_start_matches("W/")
        })
}

fn render(format: ExportFormat, blocks: &[ExportedBlock], now: Timestamp) -> Result<String> {
    Ok(match format {
        ExportFormat::Plain => render_lines(blocks, "", ""),
        ExportFormat::Nginx => render_lines(blocks, "deny ", ";"),
        ExportFormat::Nftables => render_nftables(blocks),
        ExportFormat::Ipset => render_ipset(blocks, now),
        ExportFormat::Csv => render_csv(blocks),
        ExportFormat::Json => render_json(blocks)?,
        ExportFormat::Stix => render_stix(blocks)?,
    })
}

fn render_lines(blocks: &[ExportedBlock], prefix: &str, suffix: &str) -> String {
    let mut body = String::with_capacity(blocks.len() * 32);
    for ExportedBlock { block, .. } in blocks {
        let _ = writeln!(body, "{prefix}{}{suffix}", block.value);
    }
    body
}

/// A range of addresses of one family, as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Interval {
    start: u128,
    end: u128,
}

/// Sorts and merges overlapping and adjacent ranges.
fn merge_intervals(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.sort_unstable();
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for interval in intervals {
        match merged.last_mut() {
            Some(last) if interval.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(interval.end);
            }
            _ => merged.push(interval),
        }
    }
    merged
}

/// The fewest networks (address, prefix) that cover a range exactly, for
/// an address family of `bits` bits.
fn covering_networks(interval: Interval, bits: u32) -> Vec<(u128, u32)> {
    let span = |host_bits: u32| {
        if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    };
    let mut networks = Vec::new();
    let mut start = interval.start;
    loop {
        let mut host_bits = start.trailing_zeros().min(bits);
        while span(host_bits) > interval.end - start {
            host_bits -= 1;
        }
        networks.push((start, bits - host_bits));
        let last = start + span(host_bits);
        if last >= interval.end {
            return networks;
        }
        start = last + 1;
    }
}

/// The merged networks of one family, written with their prefix length.
fn merged_elements(blocks: &[ExportedBlock], family: i64) -> Vec<String> {
    let intervals = blocks
        .iter()
        .filter_map(|exported| exported.network)
        .filter(|network| network.family() == family)
        .map(|network| {
            let (start, end) = network.range();
            Interval { start, end }
        })
        .collect();
    let bits = if family == 4 { 32 } else { 128 };
    merge_intervals(intervals)
        .into_iter()
        .flat_map(|interval| covering_networks(interval, bits))
        .map(|(start, prefix)| format!("{}/{prefix}", address_of(start, family)))
        .collect()
}

fn address_of(value: u128, family: i64) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

/// Declaring the table first makes `delete table` succeed on a first load;
/// all three statements apply as one transaction.
fn render_nftables(blocks: &[ExportedBlock]) -> String {
    let mut body = String::with_capacity(blocks.len() * 32 + 512);
    body.push_str(
        "#!/usr/sbin/nft -f\n\
         # Valhalla's active blocklist; replaces table inet valhalla.\n\
         table inet valhalla\n\
         delete table inet valhalla\n\
         table inet valhalla {\n",
    );
    for (name, family, kind) in [
        ("blocked_v4", 4, "ipv4_addr"),
        ("blocked_v6", 6, "ipv6_addr"),
    ] {
        let elements = merged_elements(blocks, family);
        let _ = write!(
            body,
            "\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval\n"
        );
        if !elements.is_empty() {
            let _ = writeln!(
                body,
                "\t\telements = {{\n\t\t\t{}\n\t\t}}",
                elements.join(",\n\t\t\t")
            );
        }
        body.push_str("\t}\n");
    }
    body.push_str(
        "\tchain input {\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tip saddr @blocked_v4 drop\n\
         \t\tip6 saddr @blocked_v6 drop\n\
         \t}\n\
         }\n",
    );
    body
}

/// One entry a network, with the longest remaining time when an address
/// is blocked both as `ip` and as a `/32` or `/128` `cidr`; `None` is
/// permanent.
fn ipset_entries(blocks: &[ExportedBlock], now: Timestamp) -> Vec<(Network, Option<i64>)> {
    let mut entries: Vec<(Network, Option<i64>)> = Vec::with_capacity(blocks.len());
    let mut seen: HashMap<Network, usize> = HashMap::with_capacity(blocks.len());
    for exported in blocks {
        let Some(network) = exported.network else {
            continue;
        };
        let timeout = exported.block.expires_at.map(|at| ipset_timeout(at, now));
        for network in ipset_networks(network) {
            match seen.get(&network) {
                Some(&index) => {
                    let kept = &mut entries[index].1;
                    *kept = kept.zip(timeout).map(|(a, b)| a.max(b));
                }
                None => {
                    seen.insert(network, entries.len());
                    entries.push((network, timeout));
                }
            }
        }
    }
    entries
}

/// Remaining seconds, rounded up, within 1..=2,147,483.
fn ipset_timeout(expires_at: Timestamp, now: Timestamp) -> i64 {
    let remaining_millis = expires_at.millis() - now.millis();
    ((remaining_millis + 999) / 1000).clamp(1, IPSET_MAX_TIMEOUT_SECONDS)
}

/// `hash:net` cannot hold a `/0`; its two halves cover the same addresses.
fn ipset_networks(network: Network) -> Vec<Network> {
    let (start, end) = network.range();
    let family_end = if network.family() == 4 {
        u32::MAX as u128
    } else {
        u128::MAX
    };
    if start != 0 || end != family_end {
        return vec![network];
    }
    let (half, zero) = if network.family() == 4 {
        ("128.0.0.0/1", "0.0.0.0/1")
    } else {
        ("8000::/1", "::/1")
    };
    [zero, half]
        .into_iter()
        .map(|text| Network::parse(text, false).expect("a valid half network"))
        .collect()
}

fn render_ipset(blocks: &[ExportedBlock], now: Timestamp) -> String {
    let entries = ipset_entries(blocks, now);
    let mut body = String::with_capacity(entries.len() * 48 + 256);
    for (name, family, ipset_family) in [("valhalla-v4", 4, "inet"), ("valhalla-v6", 6, "inet6")] {
        let count = entries.iter().filter(|(n, _)| n.family() == family).count();
        let maxelem = count.next_power_of_two().max(IPSET_MIN_MAXELEM);
        let _ = writeln!(
            body,
            "create {name} hash:net family {ipset_family} maxelem {maxelem} timeout 0 -exist"
        );
    }
    for (network, timeout) in entries {
        let name = if network.family() == 4 {
            "valhalla-v4"
        } else {
            "valhalla-v6"
        };
        let _ = writeln!(
            body,
            "add {name} {} timeout {} -exist",
            ipset_element(network),
            timeout.unwrap_or(0)
        );
    }
    body
}

/// A single address is written bare, as `ipset save` writes it.
fn ipset_element(network: Network) -> String {
    match network.range() {
        (start, end) if start == end => address_of(start, network.family()).to_string(),
        _ => network.to_string(),
    }
}

fn render_csv(blocks: &[ExportedBlock]) -> String {
    let mut body = String::with_capacity(blocks.len() * 96 + 64);
    body.push_str("entity_type,value,reason,source,created_at,expires_at\r\n");
    for ExportedBlock { block, .. } in blocks {
        let expires_at = block
            .expires_at
            .map(|at| at.to_string())
            .unwrap_or_default();
        let fields = [
            block.entity_type.as_str(),
            &block.value,
            &block.reason,
            block.source.as_str(),
            &block.created_at.to_string(),
            &expires_at,
        ];
        for (index, field) in fields.into_iter().enumerate() {
            if index > 0 {
                body.push(',');
            }
            push_csv_field(&mut body, field);
        }
        body.push_str("\r\n");
    }
    body
}

/// What a spreadsheet reads as the start of a formula: `=`, `+`, `-`, `@`,
/// and tab or carriage return, which some strip before looking again.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// RFC 4180: a field with a comma, quote or line break is quoted, and its
/// quotes doubled. A field that a spreadsheet would run as a formula (a
/// reason of `=HYPERLINK(...)`, a user name of `@SUM(...)`) gets a leading
/// `'`, which makes it text, as OWASP's advice on CSV injection has it.
fn push_csv_field(body: &mut String, field: &str) {
    let quoted = field.contains([',', '"', '\r', '\n']);
    if quoted {
        body.push('"');
    }
    if field.starts_with(FORMULA_STARTS) {
        body.push('\'');
    }
    if quoted {
        body.push_str(&field.replace('"', "\"\""));
        body.push('"');
    } else {
        body.push_str(field);
    }
}

fn render_json(blocks: &[ExportedBlock]) -> Result<String> {
    #[derive(Serialize)]
    struct Items<'a> {
        items: Vec<&'a Block>,
    }
    let items = blocks.iter().map(|exported| &exported.block).collect();
    serde_json::to_string(&Items { items })
        .map_err(|error| Error::Internal(format!("serialising the export: {error}")))
}

/// A STIX 2.1 indicator of one blocked address or network.
#[derive(Serialize)]
struct StixIndicator<'a> {
    #[serde(rename = "type")]
    object_type: &'static str,
    spec_version: &'static str,
    id: String,
    created: Timestamp,
    modified: Timestamp,
    name: String,
    description: &'a str,
    indicator_types: [&'static str; 1],
    pattern: String,
    pattern_type: &'static str,
    valid_from: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_until: Option<Timestamp>,
}

#[derive(Serialize)]
struct StixBundle<'a> {
    #[serde(rename = "type")]
    object_type: &'static str,
    id: String,
    objects: Vec<StixIndicator<'a>>,
}

fn render_stix(blocks: &[ExportedBlock]) -> Result<String> {
    let objects: Vec<StixIndicator> = blocks
        .iter()
        .filter_map(|exported| Some((&exported.block, exported.network?)))
        .map(|(block, network)| stix_indicator(block, network))
        .collect();
    let bundle_seed = objects
        .iter()
        .map(|indicator| indicator.id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let bundle = StixBundle {
        object_type: "bundle",
        id: format!("bundle--{}", stable_uuid(&bundle_seed)),
        objects,
    };
    serde_json::to_string(&bundle)
        .map_err(|error| Error::Internal(format!("serialising the export: {error}")))
}

fn stix_indicator(block: &Block, network: Network) -> StixIndicator<'_> {
    let object = if network.family() == 4 {
        "ipv4-addr"
    } else {
        "ipv6-addr"
    };
    StixIndicator {
        object_type: "indicator",
        spec_version: "2.1",
        id: format!("indicator--{}", stable_uuid(&format!("block:{}", block.id))),
        created: block.created_at,
        modified: block.created_at,
        name: format!("Valhalla block {}: {}", block.id, block.value),
        description: &block.reason,
        indicator_types: ["malicious-activity"],
        pattern: format!("[{object}:value = '{}']", block.value),
        pattern_type: "stix",
        valid_from: block.created_at,
        valid_until: block.expires_at,
    }
}

/// A UUID derived from a name: the same block always gets the same id.
/// STIX 2.1 wants version 4 for indicators and bundles, so the hash's bits
/// are laid out as a version 4 UUID, whose other bits are unconstrained.
fn stable_uuid(name: &str) -> String {
    let hash = Sha256::digest(format!("valhalla.blocklist:{name}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(network: &str) -> Interval {
        let (start, end) = Network::parse(network, true).unwrap().range();
        Interval { start, end }
    }

    fn networks(ranges: &[&str], bits: u32, family: i64) -> Vec<String> {
        let intervals = ranges.iter().map(|text| interval(text)).collect();
        merge_intervals(intervals)
            .into_iter()
            .flat_map(|interval| covering_networks(interval, bits))
            .map(|(start, prefix)| format!("{}/{prefix}", address_of(start, family)))
            .collect()
    }

    #[test]
    fn an_address_inside_a_range_merges_into_the_range() {
        let merged = networks(&["198.51.100.0/24", "198.51.100.7", "10.0.0.1"], 32, 4);
        assert_eq!(merged, ["10.0.0.1/32", "198.51.100.0/24"]);
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge_into_covering_networks() {
        let merged = networks(&["10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/25"], 32, 4);
        assert_eq!(merged, ["10.0.0.0/24", "10.0.1.0/25"]);
        let merged = networks(&["2001:db8::/32", "2001:db8:abcd::/48", "::/0"], 128, 6);
        assert_eq!(merged, ["::/0"]);
        let merged = networks(&["0.0.0.0/0", "255.255.255.255"], 32, 4);
        assert_eq!(merged, ["0.0.0.0/0"]);
    }

    #[test]
    fn ipset_timeouts_round_up_and_stay_within_ipset_range() {
        let now = Timestamp::from_millis(1_000_000).unwrap();
        let at = |millis: i64| Timestamp::from_millis(1_000_000 + millis).unwrap();
        assert_eq!(ipset_timeout(at(1), now), 1);
        assert_eq!(ipset_timeout(at(2000), now), 2);
        assert_eq!(ipset_timeout(at(2001), now), 3);
        assert_eq!(ipset_timeout(at(10_000_000_000), now), 2_147_483);
    }

    #[test]
    fn csv_fields_with_commas_quotes_or_breaks_are_quoted() {
        let mut body = String::new();
        push_csv_field(&mut body, "say \"hi\", then\nleave");
        assert_eq!(body, "\"say \"\"hi\"\", then\nleave\"");
    }

    #[test]
    fn csv_fields_a_spreadsheet_would_run_as_formulas_start_with_a_quote() {
        let cases = [
            ("=1+2", "'=1+2"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "\"'\r=1\""),
            (
                "=HYPERLINK(\"x\", \"y\")",
                "\"'=HYPERLINK(\"\"x\"\", \"\"y\"\")\"",
            ),
            ("a=1-2", "a=1-2"),
            ("2001:db8::/32", "2001:db8::/32"),
        ];
        for (field, written) in cases {
            let mut body = String::new();
            push_csv_field(&mut body, field);
            assert_eq!(body, written, "{field:?}");
        }
    }

    #[test]
    fn stable_uuids_have_the_version_and_variant_bits() {
        let id = stable_uuid("block:1");
        assert_eq!(id, stable_uuid("block:1"));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }
}
