//! Reading loosely typed fields of native honeypot records. Versions of the
//! same honeypot write numbers as strings, use -1 or "" as "none", and
//! rename fields; these helpers accept each documented variant.

use serde_json::Value;

use crate::blocklist::entity::parse_ip;

/// A text field; empty strings count as absent.
pub fn text(record: &Value, field: &str) -> Option<String> {
    match record.get(field)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        _ => None,
    }
}

/// A port written as a number or a numeric string; -1, 0 or
/// out-of-range values (sentinels for "none") count as absent.
pub fn port(record: &Value, field: &str) -> Option<u16> {
    let number = match record.get(field)? {
        Value::Number(number) => number.as_i64()?,
        Value::String(text) => text.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    u16::try_from(number).ok().filter(|port| *port > 0)
}

/// The attacker's address, canonical; empty or missing is an error, since a
/// record of attacker activity without an attacker cannot be stored.
pub fn source_address(record: &Value, field: &str) -> Result<String, String> {
    let text = text(record, field).ok_or_else(|| format!("`{field}` is missing or empty"))?;
    parse_ip(&text).map(|address| address.to_string())
}
