//! Cowrie's JSON log (SSH and Telnet honeypot).
//!
//! | `eventid`                                   | event          | notes                       |
//! |---------------------------------------------|----------------|-----------------------------|
//! | `cowrie.session.connect`                    | `connection`   |                             |
//! | `cowrie.login.failed`                       | `auth_attempt` | username, password          |
//! | `cowrie.login.success`                      | `auth_attempt` | accepted login              |
//! | `cowrie.client.fingerprint`                 | `auth_attempt` | public-key attempt          |
//! | `cowrie.client.version` not `SSH-…`         | `scan`         | e.g. HTTP sent to SSH port  |
//! | `cowrie.command.input`                      | `exploitation` | command = `input`           |
//! | `cowrie.session.file_download` / `_upload`  | `exploitation` | payload delivered           |
//! | `cowrie.direct-tcpip.request`               | `exploitation` | tunnelling through the host |
//! | any other `cowrie.*`                        | skipped        | client details, closings    |
//!
//! `cowrie.command.failed` repeats a command already logged by
//! `cowrie.command.input`, so it is skipped rather than counted twice.

use serde_json::Value;

use super::fields::{port, source_address, text};
use super::Mapped;
use crate::honeypots::events::{EventType, NewEvent};
use crate::time::Timestamp;

enum Step {
    Connection,
    Login { succeeded: bool },
    Scan,
    Command(Option<String>),
    Transfer(Option<String>),
}

fn step_of(eventid: &str, record: &Value) -> Option<Step> {
    let step = match eventid {
        "cowrie.session.connect" => Step::Connection,
        "cowrie.login.failed" | "cowrie.client.fingerprint" => Step::Login { succeeded: false },
        "cowrie.login.success" => Step::Login { succeeded: true },
        "cowrie.client.version" => {
            let version = text(record, "version").unwrap_or_default();
            if version.starts_with("SSH-") {
                return None;
            }
            Step::Scan
        }
        "cowrie.command.input" => Step::Command(text(record, "input")),
        "cowrie.session.file_download" => Step::Transfer(text(record, "url")),
        "cowrie.session.file_upload" => Step::Transfer(text(record, "filename")),
        "cowrie.direct-tcpip.request" => {
            Step::Command(text(record, "dst_ip").map(|target| format!("direct-tcpip to {target}")))
        }
        _ => return None,
    };
    Some(step)
}

pub fn map(record: &Value) -> Result<Mapped, String> {
    let eventid = text(record, "eventid").ok_or("`eventid` is missing")?;
    if !eventid.starts_with("cowrie.") {
        return Err(format!("`{eventid}` is not a Cowrie event id"));
    }
    let Some(step) = step_of(&eventid, record) else {
        return Ok(Mapped::Skipped("no attacker activity"));
    };

    let source_ip = source_address(record, "src_ip")?;
    let stamp = text(record, "timestamp").ok_or("`timestamp` is missing")?;
    let occurred_at = Timestamp::parse(&stamp)?;

    let (event_type, command, login_succeeded, payload_delivered) = match step {
        Step::Connection => (EventType::Connection, None, false, false),
        Step::Login { succeeded } => (EventType::AuthAttempt, None, succeeded, false),
        Step::Scan => (EventType::Scan, None, false, false),
        Step::Command(command) => (EventType::Exploitation, command, false, false),
        Step::Transfer(what) => (EventType::Exploitation, what, false, true),
    };
    let is_login = event_type == EventType::AuthAttempt;
    Ok(Mapped::Event(Box::new(NewEvent {
        event_type,
        source_ip,
        source_port: port(record, "src_port"),
        destination_port: port(record, "dst_port"),
        protocol: text(record, "protocol"),
        username: if is_login {
            text(record, "username")
        } else {
            None
        },
        password: if is_login {
            text(record, "password").map(Into::into)
        } else {
            None
        },
        command,
        session_id: text(record, "session"),
        payload: Some(record.clone()),
        occurred_at,
        login_succeeded,
        payload_delivered,
    })))
}
