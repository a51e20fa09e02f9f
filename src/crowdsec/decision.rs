//! A block as a CrowdSec decision, and the filters bouncers send.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use super::duration::decision_duration;
use crate::blocklist::entity::parse_ip;
use crate::blocklist::Network;
use crate::error::Result;
use crate::time::Timestamp;

/// The block columns a decision is made of.
pub const DECISION_COLUMNS: &str = "id, entity_type, value, reason, source, expires_at";

/// A decision as CrowdSec's Local API writes it: these seven keys in this
/// order (Go sorts them). `origin` is the block's source (`heimdall`,
/// `tyr`, `human`, `system`), which names who decided as CrowdSec's origin
/// (`crowdsec`, `cscli`, `CAPI`) does; bouncers only log it or filter on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decision {
    /// Time left, in Go's duration syntax (`3h59m58s`), capped at
    /// 2,147,483 s and never zero or negative.
    #[schema(example = "3h59m58s", pattern = r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$")]
    pub duration: String,
    /// The block's id.
    pub id: i64,
    /// The block's source: `heimdall`, `tyr`, `human` or `system`.
    pub origin: String,
    /// The block's reason.
    pub scenario: String,
    /// `Ip` for an `ip` block, `Range` for a `cidr` block.
    #[schema(example = "Ip")]
    pub scope: &'static str,
    /// Always `ban`.
    #[serde(rename = "type")]
    #[schema(example = "ban")]
    pub remediation: &'static str,
    /// The canonical address or network.
    #[schema(example = "203.0.113.9")]
    pub value: String,
}

/// An `ip` or `cidr` block as read for a feed.
#[derive(Debug)]
pub struct DecisionRow {
    pub id: i64,
    pub scope: &'static str,
    pub value: String,
    pub reason: String,
    pub source: String,
    pub expires_at: Option<i64>,
}

impl DecisionRow {
    /// Reads a row of [`DECISION_COLUMNS`]; `None` for a `user` or
    /// `api_key` block, which is no decision. The feeds' SQL does not leave
    /// those out itself: a condition on `entity_type` leads SQLite (which
    /// keeps no statistics here) to scan by that index instead of the one
    /// that fits the query.
    pub fn from_row(row: &AnyRow) -> Result<Option<Self>> {
        let entity_type: String = row.try_get("entity_type")?;
        Ok(Self::from_parts(
            row.try_get("id")?,
            &entity_type,
            row.try_get("value")?,
            row.try_get("reason")?,
            row.try_get("source")?,
            row.try_get("expires_at")?,
        ))
    }

    /// A decision row from its parts; `None` for a `user` or `api_key`
    /// block.
    pub fn from_parts(
        id: i64,
        entity_type: &str,
        value: String,
        reason: String,
        source: String,
        expires_at: Option<i64>,
    ) -> Option<Self> {
        let scope = match entity_type {
            "ip" => "Ip",
            "cidr" => "Range",
            _ => return None,
        };
        Some(DecisionRow {
            id,
            scope,
            value,
            reason,
            source,
            expires_at,
        })
    }

    /// The block's address or network, to hold against the allowlist.
    pub fn network(&self) -> Option<Network> {
        match self.scope {
            "Ip" => parse_ip(&self.value).ok().map(Network::host),
            _ => Network::parse(&self.value, false).ok(),
        }
    }

    /// The decision of an active block, its duration counted from `now`.
    pub fn into_decision(self, now: Timestamp) -> Decision {
        let remaining = self.expires_at.map(|at| at - now.millis());
        self.into_decision_with(decision_duration(remaining))
    }

    /// The decision with a duration chosen by the caller.
    pub fn into_decision_with(self, duration: String) -> Decision {
        Decision {
            duration,
            id: self.id,
            origin: self.source,
            scenario: self.reason,
            scope: self.scope,
            remediation: "ban",
            value: self.value,
        }
    }
}

/// The filters `GET /v1/decisions` and the stream share, as CrowdSec reads
/// them: comma lists, scopes case-insensitively, scenarios by
/// case-insensitive substring, origins exactly.
#[derive(Debug, Default, Clone)]
pub struct DecisionFilter {
    /// Lower-case scope names; `None` admits every scope.
    pub scopes: Option<Vec<String>>,
    pub origins: Option<Vec<String>>,
    /// Lower-case substrings: a decision's scenario contains one of them.
    pub scenarios_containing: Vec<String>,
    /// Lower-case substrings: a decision's scenario contains none of them.
    pub scenarios_not_containing: Vec<String>,
    /// The remediation asked for: only `ban` is ever given.
    pub remediation: Option<String>,
    /// The value asked for, canonical when it is an address or network.
    pub value: Option<String>,
}

impl DecisionFilter {
    /// Takes the filter parameters out of a query; others are left.
    pub fn read(parameters: &[(String, String)]) -> Self {
        let mut filter = DecisionFilter::default();
        for (name, value) in parameters {
            match name.as_str() {
                "scopes" => filter.scopes = Some(lower_list(value)),
                "origins" => filter.origins = Some(list(value)),
                "scenarios_containing" => filter.scenarios_containing = lower_list(value),
                "scenarios_not_containing" => filter.scenarios_not_containing = lower_list(value),
                "type" => filter.remediation = Some(value.clone()),
                "value" => filter.value = Some(canonical_value(value)),
                _ => {}
            }
        }
        filter
    }

    /// Whether a decision passes every filter.
    pub fn admits(&self, row: &DecisionRow) -> bool {
        let scope = row.scope.to_ascii_lowercase();
        let scenario = row.reason.to_lowercase();
        self.scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(&scope))
            && self
                .origins
                .as_ref()
                .is_none_or(|origins| origins.contains(&row.source))
            && (self.scenarios_containing.is_empty()
                || self
                    .scenarios_containing
                    .iter()
                    .any(|part| scenario.contains(part)))
            && !self
                .scenarios_not_containing
                .iter()
                .any(|part| scenario.contains(part))
            && self.remediation.as_deref().is_none_or(|kind| kind == "ban")
            && self.value.as_ref().is_none_or(|value| *value == row.value)
    }
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

fn lower_list(text: &str) -> Vec<String> {
    list(&text.to_lowercase())
}

/// An address or network in Valhalla's canonical spelling, so that
/// `value=::ffff:192.0.2.1` finds the block of `192.0.2.1`; anything else
/// as given (it matches nothing).
fn canonical_value(text: &str) -> String {
    if let Ok(address) = parse_ip(text) {
        return address.to_string();
    }
    match Network::parse(text, false) {
        Ok(network) => network.to_string(),
        Err(_) => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scope: &'static str, value: &str, reason: &str, source: &str) -> DecisionRow {
        DecisionRow {
            id: 1,
            scope,
            value: value.to_string(),
            reason: reason.to_string(),
            source: source.to_string(),
            expires_at: None,
        }
    }

    fn filter(query: &[(&str, &str)]) -> DecisionFilter {
        let owned: Vec<(String, String)> = query
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        DecisionFilter::read(&owned)
    }

    #[test]
    fn filters_read_as_crowdsec_reads_them() {
        let ssh = row("Ip", "192.0.2.1", "SSH brute force", "heimdall");
        assert!(filter(&[("scopes", "IP,range")]).admits(&ssh));
        assert!(!filter(&[("scopes", "range")]).admits(&ssh));
        assert!(!filter(&[("scopes", "country")]).admits(&ssh));
        assert!(filter(&[("origins", "tyr,heimdall")]).admits(&ssh));
        assert!(!filter(&[("origins", "human")]).admits(&ssh));
        assert!(filter(&[("scenarios_containing", "web,ssh")]).admits(&ssh));
        assert!(!filter(&[("scenarios_containing", "web")]).admits(&ssh));
        assert!(!filter(&[("scenarios_not_containing", "brute")]).admits(&ssh));
        assert!(filter(&[("type", "ban")]).admits(&ssh));
        assert!(!filter(&[("type", "captcha")]).admits(&ssh));
        assert!(filter(&[("value", "::ffff:192.0.2.1")]).admits(&ssh));
        assert!(!filter(&[("value", "192.0.2.2")]).admits(&ssh));
        assert!(filter(&[("scope", "range")]).admits(&ssh));
    }
}
