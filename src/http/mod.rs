//! What every route shares: body and query extraction with problem+json
//! rejections, pagination, and the one log line per request.

mod deadline;
mod extract;
mod logging;
mod metrics;
mod page;
mod report;
mod serve;
mod text;

pub use deadline::{enforce_deadline, Deadlines, IMPORT_PATH};
pub use extract::{
    address_filter, deserialize_value, media_type, parse_json, parse_value, parse_values,
    path_of_nul, read_body, refuse_encoded_bodies, replace_nul, ApiJson, ApiPath, ApiQuery,
    OptionalJson, TelemetryJson, NUL_REFUSED,
};
pub use logging::log_request;
pub use metrics::{escape_label, RequestMetrics};
pub use page::{fetch_page, Page, PageRequest};
pub use report::RejectedLine;
pub use serve::serve;
pub use text::is_direction_control;
