//! What every route shares: body and query extraction with problem+json
//! rejections, pagination, and the one log line per request.

mod extract;
mod logging;
mod page;
mod serve;

pub use extract::{
    deserialize_value, parse_json, read_body, ApiJson, ApiPath, ApiQuery, OptionalJson,
};
pub use logging::log_request;
pub use page::{Page, PageRequest};
pub use serve::serve;
