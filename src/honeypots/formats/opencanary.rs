//! OpenCanary's JSON log (multi-service honeypot), keyed by `logtype`.
//!
//! | `logtype`                         | event          | protocol   |
//! |-----------------------------------|----------------|------------|
//! | 1000–1006 (boot, messages, ping)  | skipped        |            |
//! | 2000 FTP login                    | `auth_attempt` | ftp        |
//! | 2001 FTP auth initiated           | `connection`   | ftp        |
//! | 3000 HTTP GET, 3002, 3003         | `scan`         | http       |
//! | 3001 HTTP login form              | `auth_attempt` | http       |
//! | 4000, 4001 SSH connection/version | `connection`   | ssh        |
//! | 4002 SSH login                    | `auth_attempt` | ssh        |
//! | 5000 SMB file open                | `exploitation` | smb        |
//! | 5001–5005 port scans              | `scan`         | tcp        |
//! | 6001 Telnet login                 | `auth_attempt` | telnet     |
//! | 6002 Telnet connection            | `connection`   | telnet     |
//! | 7001 HTTP proxy login             | `auth_attempt` | http-proxy |
//! | 8001 MySQL login                  | `auth_attempt` | mysql      |
//! | 9001, 9002 MSSQL login            | `auth_attempt` | mssql      |
//! | 9003 MySQL connection             | `connection`   | mysql      |
//! | 10001 TFTP request                | `exploitation` | tftp       |
//! | 11001 NTP monlist, 13001 SNMP, 15001 SIP, 16001 Git clone | `scan` | … |
//! | 12001 VNC, 14001 RDP              | `auth_attempt` | vnc, rdp   |
//! | 17001 Redis `AUTH`                | `auth_attempt` | redis      |
//! | 17001 other Redis commands        | `exploitation` | redis      |
//! | 18001–18005 TCP banner            | `connection`   | tcp        |
//! | anything else                     | skipped        |            |
//!
//! Time: `utc_time` when present, else `local_time`. Both are UTC without
//! an offset: OpenCanary has always written UTC into `local_time` (its
//! `local_time_adjusted` is the local one), so `local_time_adjusted` is
//! never read. Ports of -1 and empty addresses are "none" (start-up lines).
//! The per-process `SESSION` counter is not a session id (it restarts at 0),
//! so it stays in the payload only.

use chrono::NaiveDateTime;
use serde_json::Value;

use super::fields::{port, source_address, text};
use super::Mapped;
use crate::honeypots::events::{EventType, NewEvent};
use crate::time::Timestamp;

fn classify(logtype: i64) -> Option<(EventType, &'static str)> {
    use EventType::*;
    let mapped = match logtype {
        2000 => (AuthAttempt, "ftp"),
        2001 => (Connection, "ftp"),
        3000 | 3002 | 3003 => (Scan, "http"),
        3001 => (AuthAttempt, "http"),
        4000 | 4001 => (Connection, "ssh"),
        4002 => (AuthAttempt, "ssh"),
        5000 => (Exploitation, "smb"),
        5001..=5005 => (Scan, "tcp"),
        6001 => (AuthAttempt, "telnet"),
        6002 => (Connection, "telnet"),
        7001 => (AuthAttempt, "http-proxy"),
        8001 => (AuthAttempt, "mysql"),
        9001 | 9002 => (AuthAttempt, "mssql"),
        9003 => (Connection, "mysql"),
        10001 => (Exploitation, "tftp"),
        11001 => (Scan, "ntp"),
        12001 => (AuthAttempt, "vnc"),
        13001 => (Scan, "snmp"),
        14001 => (AuthAttempt, "rdp"),
        15001 => (Scan, "sip"),
        16001 => (Scan, "git"),
        17001 => (Exploitation, "redis"),
        18001..=18005 => (Connection, "tcp"),
        _ => return None,
    };
    Some(mapped)
}

pub fn map(record: &Value) -> Result<Mapped, String> {
    let logtype = logtype(record)?;
    let Some((mut event_type, protocol)) = classify(logtype) else {
        return Ok(Mapped::Skipped("no attacker activity"));
    };

    let source_ip = source_address(record, "src_host")?;
    let occurred_at = occurred_at(record)?;
    let logdata = record.get("logdata").cloned().unwrap_or(Value::Null);
    let mut username = text(&logdata, "USERNAME");
    let mut password = text(&logdata, "PASSWORD");
    let mut command = None;
    if logtype == 17001 {
        let redis_command = text(&logdata, "CMD").unwrap_or_default();
        let arguments = text(&logdata, "ARGS");
        if redis_command.eq_ignore_ascii_case("AUTH") {
            event_type = EventType::AuthAttempt;
            password = arguments;
            username = None;
        } else {
            command = Some(match arguments {
                Some(arguments) => format!("{redis_command} {arguments}"),
                None => redis_command,
            });
        }
    }

    let is_login = event_type == EventType::AuthAttempt;
    Ok(Mapped::Event(Box::new(NewEvent {
        event_type,
        source_ip,
        source_port: port(record, "src_port"),
        destination_port: port(record, "dst_port"),
        protocol: Some(protocol.to_string()),
        username: if is_login { username } else { None },
        password: if is_login {
            password.map(Into::into)
        } else {
            None
        },
        command,
        session_id: None,
        payload: Some(record.clone()),
        occurred_at,
        login_succeeded: false,
        payload_delivered: logtype == 10001,
    })))
}

/// `logtype` as a number or a numeric string.
fn logtype(record: &Value) -> Result<i64, String> {
    match record.get("logtype") {
        Some(Value::Number(number)) => number.as_i64(),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| "`logtype` is missing or not a number".to_string())
}

fn occurred_at(record: &Value) -> Result<Timestamp, String> {
    let stamp = text(record, "utc_time")
        .or_else(|| text(record, "local_time"))
        .ok_or("neither `utc_time` nor `local_time` is present")?;
    parse_utc(&stamp)
}

/// OpenCanary writes `2026-12-04 13:00:00.000000`, UTC without an offset;
/// a value that does carry an offset is honoured.
fn parse_utc(stamp: &str) -> Result<Timestamp, String> {
    if let Ok(instant) = Timestamp::parse(stamp) {
        return Ok(instant);
    }
    let naive = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f")
        .map_err(|_| format!("`{stamp}` is not an OpenCanary timestamp"))?;
    Timestamp::from_millis(naive.and_utc().timestamp_millis())
        .ok_or_else(|| format!("`{stamp}` is outside years 1970 to 9999"))
}
