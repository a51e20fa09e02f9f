//! The action workflow: detectors, the policy owner, the system and humans
//! request actions; requests go pending → approved / rejected → executed,
//! exactly once, with every transition audited.

mod execute;
mod model;
mod payload;
mod routes;
mod store;

pub use execute::execute_action_request;
pub use model::{ActionRequest, ActionStatus, ActionType, Source, ACTION_COLUMNS};
pub use payload::subject_of;
pub use payload::{ActionPayload, BlockEntityPayload, SetModePayload, UnblockEntityPayload};
pub use routes::router;
pub use store::{
    auto_approved_backlog, file_action_request, file_in_transaction, open_request_exists,
    FiledRequest, NewActionRequest, AUTO_APPROVER,
};
