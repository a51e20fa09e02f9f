//! The honeypot bridge: a registry of decoys with per-instance keys, and the
//! attack telemetry they push.

mod bulk;
mod events;
pub mod formats;
mod instances;
mod key;
mod writer;

pub use events::{EventType, HoneypotEvent, NewEvent};
pub use instances::{HoneypotInstance, HoneypotType};
pub use key::AuthenticatedHoneypot;
pub use key::HEADER as KEY_HEADER;
pub use writer::EventWriter;

use axum::extract::DefaultBodyLimit;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::server::AppState;

/// Honeypot routes; bulk uploads get their own, larger body limit.
pub fn router(bulk_max_bytes: usize) -> OpenApiRouter<AppState> {
    let bulk = OpenApiRouter::new()
        .routes(routes!(bulk::submit_events_bulk))
        .layer(DefaultBodyLimit::max(bulk_max_bytes));
    instances::router().merge(events::router()).merge(bulk)
}
