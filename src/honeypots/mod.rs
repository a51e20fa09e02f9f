//! The honeypot bridge: a registry of decoys with per-instance keys, and the
//! attack telemetry they push.

mod events;
mod instances;
mod key;

pub use events::{EventType, HoneypotEvent, NewEvent};
pub use instances::{HoneypotInstance, HoneypotType};

use utoipa_axum::router::OpenApiRouter;

use crate::server::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    instances::router().merge(events::router())
}
