//! The action workflow: detectors, the policy owner, the system and humans
//! request actions; requests go pending → approved / rejected → executed,
//! exactly once, with every transition audited.

mod execute;
mod model;
mod payload;
mod routes;
mod store;

pub use model::{ActionRequest, ActionStatus, ActionType, Source, ACTION_COLUMNS};
pub use payload::{ActionPayload, BlockEntityPayload, SetModePayload, UnblockEntityPayload};
pub use routes::router;
pub use store::{file_action_request, NewActionRequest};
