//! The blocklist: IPs, CIDR ranges, users and API keys that enforcement
//! points refuse, with expiry, deactivation and the allowlist that nothing
//! can override.

pub mod changes;
pub mod entity;
mod export;
pub mod import;
mod index;
mod model;
mod routes;
mod shared;
mod store;

pub use entity::{Entity, EntityType, Network};
pub use import::router as import_router;
pub use index::BlocklistIndex;
pub use model::{Block, BlockOutcome, NewBlock, BLOCK_COLUMNS};
pub use routes::{parse_reason, router};
pub use shared::{BlockChanges, SharedIndex};
pub use store::{
    block_entity, deactivate_allowlisted, deactivate_block, expire_due_blocks, find_live_block,
    resolve_expiry, LIVE_ENTITY,
};
