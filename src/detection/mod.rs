//! Heimdall, the built-in detection engine. Today it classifies each event
//! as it arrives; judging sources over time builds on this.

mod classify;

pub use classify::{classify_event, ThreatLevel};
