//! Incidents: what one attacking source did, across honeypots, while it
//! stays active — with its worst severity, counts, and the action requests
//! and blocks it led to.

mod model;
mod routes;
mod store;

pub use model::{Incident, IncidentStatus};
pub use routes::router;
pub use store::{link_action_request, record_activities, SourceActivity};
