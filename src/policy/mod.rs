//! The deployment's policy, owned by the policy owner ("Tyr"): its mode and
//! the rules that every other part of the service consults.

pub mod model;
mod routes;
mod shared;
mod store;

pub use model::{Mode, Policy, PolicySettings, RateLimit};
pub use routes::parse_update;
pub use routes::router;
pub use shared::SharedPolicy;
pub use store::{ensure_policy_exists, load_policy, set_mode, update_policy, validate_update};
