//! Classification at ingest: every event gets a threat level and tags from
//! the table below. The rules are data: the first rule whose condition
//! holds decides, so more specific rules come first.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::honeypots::{EventType, NewEvent};

/// How dangerous an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThreatLevel {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl ThreatLevel {
    pub const ALL: [ThreatLevel; 5] = [
        Self::Info,
        Self::Low,
        Self::Medium,
        Self::High,
        Self::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ThreatLevel::Info => "info",
            ThreatLevel::Low => "low",
            ThreatLevel::Medium => "medium",
            ThreatLevel::High => "high",
            ThreatLevel::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.as_str() == text)
    }
}

struct Rule {
    /// Shown in documentation and tests.
    name: &'static str,
    applies: fn(&NewEvent) -> bool,
    level: ThreatLevel,
    tags: &'static [&'static str],
}

/// Commands that fetch or start a payload.
const PAYLOAD_MARKERS: &[&str] = &[
    "wget ",
    "curl ",
    "tftp ",
    "ftpget ",
    "chmod +x",
    "/bin/busybox",
    "sh -c",
    "./",
];

fn fetches_payload(event: &NewEvent) -> bool {
    if event.payload_delivered {
        return true;
    }
    let Some(command) = event.command.as_deref() else {
        return false;
    };
    let command = command.to_ascii_lowercase();
    PAYLOAD_MARKERS
        .iter()
        .any(|marker| command.contains(marker))
}

fn logged_in(event: &NewEvent) -> bool {
    event.event_type == EventType::AuthAttempt && event.login_succeeded
}

const RULES: &[Rule] = &[
    Rule {
        name: "payload fetched or executed",
        applies: |event| event.event_type == EventType::Exploitation && fetches_payload(event),
        level: ThreatLevel::Critical,
        tags: &["malware_download", "exploitation"],
    },
    Rule {
        name: "command run after intrusion",
        applies: |event| event.event_type == EventType::Exploitation,
        level: ThreatLevel::High,
        tags: &["exploitation"],
    },
    Rule {
        name: "guessed credentials accepted",
        applies: logged_in,
        level: ThreatLevel::High,
        tags: &["credential_compromise"],
    },
    Rule {
        name: "failed login",
        applies: |event| event.event_type == EventType::AuthAttempt,
        level: ThreatLevel::Low,
        tags: &["brute_force"],
    },
    Rule {
        name: "port or service scan",
        applies: |event| event.event_type == EventType::Scan,
        level: ThreatLevel::Low,
        tags: &["recon"],
    },
    Rule {
        name: "connection",
        applies: |event| event.event_type == EventType::Connection,
        level: ThreatLevel::Info,
        tags: &[],
    },
];

/// The threat level and tags for an event, by the first matching rule.
pub fn classify_event(event: &NewEvent) -> (ThreatLevel, Vec<String>) {
    let rule = RULES.iter().find(|rule| (rule.applies)(event));
    match rule {
        Some(rule) => {
            tracing::debug!(rule = rule.name, "event classified");
            (
                rule.level,
                rule.tags.iter().map(|tag| tag.to_string()).collect(),
            )
        }
        None => (ThreatLevel::Info, Vec::new()),
    }
}
