//! Event formats a honeypot may send: Valhalla's own, and the native JSON
//! logs of Cowrie and OpenCanary, each mapped record by record to an event.
//!
//! A record maps to one event, is skipped (it shows no attacker activity,
//! such as a honeypot's own start-up line or a terminal-size report), or is
//! rejected with a reason (it should show activity but cannot be read).

mod cowrie;
mod fields;
mod opencanary;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::events::{EventSubmission, NewEvent};
use crate::time::Timestamp;

/// The record format of a bulk upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Valhalla's event fields, as for `POST /security/honeypot/events`.
    #[default]
    Valhalla,
    /// Cowrie's JSON log (`cowrie.json`), one record per line.
    Cowrie,
    /// OpenCanary's JSON log (`opencanary.log`), one record per line.
    Opencanary,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Valhalla => "valhalla",
            Format::Cowrie => "cowrie",
            Format::Opencanary => "opencanary",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Format::Valhalla, Format::Cowrie, Format::Opencanary]
            .into_iter()
            .find(|format| format.as_str() == text)
    }
}

/// What became of one record.
#[derive(Debug)]
pub enum Mapped {
    Event(Box<NewEvent>),
    /// Carries no attacker activity; the text says what it was.
    Skipped(&'static str),
}

/// Maps one record of `format`. `now` stands in for a missing timestamp in
/// Valhalla's own format only; native records must carry their own.
pub fn map_record(format: Format, record: Value, now: Timestamp) -> Result<Mapped, String> {
    match format {
        Format::Valhalla => {
            let submission: EventSubmission =
                serde_path_to_error::deserialize(record).map_err(|error| {
                    let path = error.path().to_string();
                    format!("{path}: {}", error.into_inner())
                })?;
            submission
                .into_new_event(now)
                .map(|event| Mapped::Event(Box::new(event)))
                .map_err(|error| error.to_string())
        }
        Format::Cowrie => cowrie::map(&record),
        Format::Opencanary => opencanary::map(&record),
    }
}
