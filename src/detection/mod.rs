//! Heimdall, the built-in detection engine: classifies each event as it is
//! stored, then judges sources over time — incidents, automatic blocks and
//! automatic changes of the security mode.

mod auto_block;
mod classify;
mod engine;
mod escalation;

pub use auto_block::block_duration;
pub use classify::{classify_event, ThreatLevel};
pub use engine::Engine;
