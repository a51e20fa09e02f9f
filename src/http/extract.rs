//! Extractors that answer bad input in the service's own error shape:
//! malformed JSON or query → 400, well-formed but invalid → 422 naming the
//! field, wrong media type → 415, too large → 413.

use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::map::Entry;
use serde_json::Value;

use crate::error::{Error, Result};

/// A JSON request body, parsed into `T`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// A JSON body that may be absent altogether: an empty body or a JSON `null`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

/// Attack telemetry as a JSON body: as [`ApiJson`], except that NUL
/// characters are kept as U+FFFD instead of refused (see [`replace_nul`]).
#[derive(Debug)]
pub struct TelemetryJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        let bytes = json_body(request, state).await?;
        Ok(ApiJson(parse_json(&bytes)?))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        let require_json = ensure_json_media_type(request.headers());
        let bytes = read_body(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        require_json?;
        Ok(OptionalJson(parse_json::<Option<T>>(&bytes)?))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for TelemetryJson<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        let bytes = json_body(request, state).await?;
        let mut value = parse_value(&bytes).map_err(malformed)?;
        replace_nul(&mut value);
        Ok(TelemetryJson(deserialize_value(value)?))
    }
}

/// The whole body of a request that must say it is JSON. The body is read
/// before the media type is judged, so that an oversized body is 413 first.
async fn json_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes> {
    let require_json = ensure_json_media_type(request.headers());
    let bytes = read_body(request, state).await?;
    require_json?;
    Ok(bytes)
}

fn malformed(error: serde_json::Error) -> Error {
    Error::BadRequest(format!("malformed JSON: {error}"))
}

/// Reads the whole body, answering 413 past the route's limit.
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge
            } else {
                Error::BadRequest("the request body could not be read".to_string())
            }
        })
}

/// The request's media type, lower-cased and without parameters such as
/// `charset`; `None` without a (readable) `Content-Type`.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or("");
    Some(essence.trim().to_ascii_lowercase())
}

fn ensure_json_media_type(headers: &HeaderMap) -> Result<()> {
    match media_type(headers) {
        Some(kind) if kind == "application/json" || kind.ends_with("+json") => Ok(()),
        Some(kind) => Err(Error::UnsupportedMediaType(format!(
            "expected `application/json`, got `{kind}`"
        ))),
        None => Err(Error::UnsupportedMediaType(
            "send the body with `Content-Type: application/json`".to_string(),
        )),
    }
}

/// Parses in two steps so that syntax errors (400) and shape errors (422)
/// are told apart, and a shape error names the field it is about. A key
/// repeated in one object, at any depth, is a syntax error here: read into
/// a `Value`, the last one would win silently, so `{"role": "viewer",
/// "role": "admin"}` would pass whatever a reviewer saw first.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let value = parse_value(bytes).map_err(malformed)?;
    if let Some(path) = path_of_nul(&value) {
        let field = if path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        return Err(Error::invalid_field(field, NUL_REFUSED));
    }
    deserialize_value(value)
}

/// Reads one JSON value, refusing an object that names a key twice, as
/// [`parse_json`] does; for bodies read record by record.
pub fn parse_value(bytes: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice(bytes).map(|UniqueKeys(value)| value)
}

/// Reads a JSON array of values as [`parse_value`] reads one.
pub fn parse_values(bytes: &[u8]) -> serde_json::Result<Vec<Value>> {
    let values: Vec<UniqueKeys> = serde_json::from_slice(bytes)?;
    Ok(values.into_iter().map(|UniqueKeys(value)| value).collect())
}

/// A JSON value read in one pass that refuses an object naming a key twice.
/// It builds the same `Value` serde_json would; the check is the lookup
/// that inserting the key does anyway.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> std::result::Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> std::result::Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Value, D::Error> {
        UniqueKeys::deserialize(deserializer).map(|UniqueKeys(value)| value)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> std::result::Result<Value, A::Error> {
        let mut values = Vec::with_capacity(items.size_hint().unwrap_or(0).min(4096));
        while let Some(UniqueKeys(value)) = items.next_element()? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> std::result::Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = members.next_key::<String>()? {
            match object.entry(key) {
                Entry::Occupied(taken) => {
                    return Err(A::Error::custom(format!("duplicate key `{}`", taken.key())))
                }
                Entry::Vacant(free) => {
                    let UniqueKeys(value) = members.next_value()?;
                    free.insert(value);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// PostgreSQL cannot store U+0000 in text; both backends refuse it at the
/// edge, the same way, instead of one of them failing inside.
pub const NUL_REFUSED: &str = "must not contain NUL (U+0000) characters";

/// The path (`a.b[2]`) of the first string or key holding U+0000, if any.
pub fn path_of_nul(value: &Value) -> Option<String> {
    let join = |head: &str, rest: String| {
        if rest.is_empty() || rest.starts_with('[') {
            format!("{head}{rest}")
        } else {
            format!("{head}.{rest}")
        }
    };
    match value {
        Value::String(text) => text.contains('\0').then(String::new),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            path_of_nul(item).map(|rest| join(&format!("[{index}]"), rest))
        }),
        Value::Object(members) => members.iter().find_map(|(key, member)| {
            let inner = if key.contains('\0') {
                Some(String::new())
            } else {
                path_of_nul(member)
            };
            inner.map(|rest| join(key, rest))
        }),
        _ => None,
    }
}

/// Reads a JSON value into `T`, answering 422 with the offending field's path.
pub fn deserialize_value<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        Error::invalid_field(field_of(&path, &message), message)
    })
}

/// The path of the offending field. serde reports a missing or unknown field
/// at the object holding it, naming the field only in its message
/// (``missing field `reason` ``), so the name is taken from there.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_string(),
        (".", None) => "body".to_string(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_string(),
    }
}

/// Query parameters, parsed into `T`; anything unparseable is 400.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|error| Error::BadRequest(format!("invalid query: {error}")))?;
        if let Some((name, _)) = pairs
            .iter()
            .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return Err(Error::BadRequest(format!("query `{name}` {NUL_REFUSED}")));
        }
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|error| Error::BadRequest(format!("invalid query: {error}")))
    }
}

/// Path parameters, parsed into `T`; a segment that does not parse (an id
/// that is not a 64-bit integer, bytes that are not UTF-8) is 400.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|rejection| {
                // Only a route whose template lacks the parameter gets here
                // with a server error: a bug, not bad input.
                if rejection.status().is_server_error() {
                    Error::Internal(rejection.body_text())
                } else {
                    Error::BadRequest(format!("invalid path: {}", rejection.body_text()))
                }
            })
    }
}

/// A query parameter naming an address, in the canonical form stored
/// (`::ffff:` folded, IPv6 compressed), so a filter matches however the
/// client spelled it; a value that is not an address is 400.
pub fn address_filter(value: Option<String>) -> Result<Option<String>> {
    value
        .map(|text| {
            crate::blocklist::entity::parse_ip(&text)
                .map(|address| address.to_string())
                .map_err(Error::BadRequest)
        })
        .transpose()
}

/// Middleware: refuses a body in a content coding (gzip, say) with 415, as
/// RFC 9110 asks of a server that does not decode it. Read as plain bytes,
/// a compressed import would otherwise be answered 200 with every line
/// rejected, which says nothing of the cause.
pub async fn refuse_encoded_bodies(request: Request, next: Next) -> Response {
    let coding = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|value| value.to_str().unwrap_or("").trim().to_ascii_lowercase());
    match coding.as_deref() {
        None | Some("identity") => next.run(request).await,
        Some(_) => Error::UnsupportedMediaType(
            "compressed bodies are not accepted; send the body without Content-Encoding"
                .to_string(),
        )
        .into_response(),
    }
}

/// Replaces every NUL (U+0000) in `value`'s strings and keys with U+FFFD;
/// true when there was one. What a honeypot reports is what attackers
/// typed, theirs to choose: refusing such an event, as other bodies are
/// refused, would let an attacker who adds a NUL to every login attempt go
/// unseen, uncounted and never blocked. PostgreSQL cannot store U+0000 in
/// text, so the event is kept with the replacement on both backends.
pub fn replace_nul(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) if text.contains('\0') => {
            *text = text.replace('\0', "\u{fffd}");
            true
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |found, item| replace_nul(item) | found),
        Value::Object(members) => {
            let mut found = false;
            if members.keys().any(|key| key.contains('\0')) {
                let renamed = std::mem::take(members)
                    .into_iter()
                    .map(|(key, member)| (key.replace('\0', "\u{fffd}"), member));
                *members = renamed.collect();
                found = true;
            }
            members
                .values_mut()
                .fold(found, |found, member| replace_nul(member) | found)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_without_repeated_keys_reads_as_serde_json_reads_it() {
        let body = br#"{"a": [1, -2, 3.5, 18446744073709551615, null, true, "x\u00e9"],
                        "b": {"c": {}, "d": [], "e": [{"f": 1}, {"f": 2}]}}"#;
        let ours: Value = parse_json(body).unwrap();
        let theirs: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_key_repeated_at_any_depth_is_malformed() {
        for body in [
            &br#"{"a": 1, "a": 1}"#[..],
            br#"{"a": {"b": 1, "c": 2, "b": 3}}"#,
            br#"[{"ok": 1}, {"x": [{"y": 1, "y": 2}]}]"#,
        ] {
            match parse_json::<Value>(body) {
                Err(Error::BadRequest(detail)) => {
                    assert!(detail.contains("duplicate key"), "{detail}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
