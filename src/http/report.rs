//! What the bulk routes (event upload, blocklist import) answer about the
//! lines they could not take.

use serde::Serialize;
use utoipa::ToSchema;

/// A line of a bulk body that was not taken, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedLine {
    /// Line number in the body, from 1.
    pub line: usize,
    pub error: String,
}
