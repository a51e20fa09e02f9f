//! Instants as the API writes them: RFC 3339, UTC, `Z`, millisecond precision.
//!
//! Storage keeps instants as integer milliseconds since the Unix epoch, which
//! both SQLite and PostgreSQL compare and index natively.

use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Latest instant the API accepts or produces: the end of year 9999 in UTC.
pub const MAX_MILLIS: i64 = 253_402_300_799_999;

/// An instant with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `millis` milliseconds after the Unix epoch, if the API can write it.
    pub fn from_millis(millis: i64) -> Option<Self> {
        (0..=MAX_MILLIS).contains(&millis).then_some(Self(millis))
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// This instant plus `seconds`, or `None` past year 9999.
    pub fn plus_seconds(self, seconds: i64) -> Option<Self> {
        let millis = seconds.checked_mul(1000)?.checked_add(self.0)?;
        Self::from_millis(millis)
    }

    /// This instant minus `seconds`, saturating at the epoch.
    pub fn minus_seconds(self, seconds: i64) -> Self {
        Self(self.0.saturating_sub(seconds.saturating_mul(1000)).max(0))
    }

    /// Parses RFC 3339 with any offset and normalises to UTC. A value without
    /// an offset is refused: a server never guesses a time zone.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed = DateTime::parse_from_rfc3339(text).map_err(|_| {
            format!(
                "`{text}` is not an RFC 3339 timestamp with an offset (e.g. 2026-12-04T13:00:00Z)"
            )
        })?;
        let millis = parsed.with_timezone(&Utc).timestamp_millis();
        Self::from_millis(millis).ok_or_else(|| format!("`{text}` is outside years 1970 to 9999"))
    }

    fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .expect("a Timestamp is always within chrono's range")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self
            .to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        formatter.write_str(&text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(de::Error::custom)
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .examples([serde_json::json!("2026-12-04T13:00:00.123Z")])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_normalised_to_utc_with_milliseconds() {
        let instant = Timestamp::parse("2026-12-04T15:00:00+02:00").unwrap();
        assert_eq!(instant.to_string(), "2026-12-04T13:00:00.000Z");
        let instant = Timestamp::parse("2026-12-04T08:00:00.1234-05:00").unwrap();
        assert_eq!(instant.to_string(), "2026-12-04T13:00:00.123Z");
    }

    #[test]
    fn a_timestamp_without_offset_is_refused() {
        assert!(Timestamp::parse("2026-12-04T13:00:00").is_err());
    }

    #[test]
    fn arithmetic_past_year_9999_is_none() {
        let now = Timestamp::parse("2026-12-04T13:00:00Z").unwrap();
        assert!(now.plus_seconds(i64::MAX).is_none());
        assert!(now.plus_seconds(300_000_000_000).is_none());
        assert_eq!(
            now.plus_seconds(60).unwrap().millis() - now.millis(),
            60_000
        );
    }
}
