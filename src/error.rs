//! The one error type of the service and its RFC 9457 problem+json answer.
//!
//! Handlers return `Result<_, Error>`; this module alone decides each
//! variant's status and body. Internal causes (database, I/O, bugs) are
//! logged here with their cause and answered with a generic body, so a
//! client never sees SQL, a path or a stack.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One invalid input field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Path of the field in the request, e.g. `auto_block.block_seconds` or `allowlist[2]`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// Missing or unknown credentials; the text says which credential is expected.
    #[error("missing or unknown credentials")]
    Unauthorized(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// Well-formed but invalid input; `errors` names each offending field.
    #[error("invalid input: {detail}")]
    Invalid {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Over the client's rate limit; the next request is admitted in this
    /// many seconds.
    #[error("rate limited for {0} s")]
    RateLimited(u64),
    #[error("not ready: {0}")]
    Unavailable(String),
    /// The request took longer than its deadline, reading its body
    /// included; the seconds it was allowed.
    #[error("request took longer than {0} s")]
    RequestTimeout(u64),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
    /// A command-line operation other than serving failed; the text is
    /// for the operator who ran it.
    #[error("{0}")]
    Command(String),
}

/// `word` after `a` or `an` as it is spoken: "an analyst", "a pending".
/// For the words that fill messages (roles, statuses), which are English;
/// the vowel rule is enough for them.
pub fn with_article(word: &str) -> String {
    let vowel = word
        .chars()
        .next()
        .is_some_and(|first| "aeiouAEIOU".contains(first));
    let article = if vowel { "an" } else { "a" };
    format!("{article} {word}")
}

impl Error {
    /// A validation failure on a single field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let error = FieldError::new(field, message);
        Self::Invalid {
            detail: format!("{}: {}", error.field, error.message),
            errors: vec![error],
        }
    }

    /// A validation failure listing several fields.
    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|error| format!("{}: {}", error.field, error.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self::Invalid { detail, errors }
    }

    fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::Database(error) if is_transient(error) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(_) | Error::Internal(_) | Error::Command(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "malformed-request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not-found",
            Error::Conflict(_) => "conflict",
            Error::PayloadTooLarge => "payload-too-large",
            Error::UnsupportedMediaType(_) => "unsupported-media-type",
            Error::Invalid { .. } => "validation-failed",
            Error::RateLimited(_) => "rate-limited",
            Error::Unavailable(_) => "not-ready",
            Error::RequestTimeout(_) => "request-timeout",
            Error::Database(error) if is_transient(error) => "not-ready",
            Error::Database(_) | Error::Internal(_) | Error::Command(_) => "internal-error",
        }
    }

    /// The `detail` a client may read: never an internal cause.
    fn public_detail(&self) -> String {
        match self {
            Error::BadRequest(detail)
            | Error::Forbidden(detail)
            | Error::NotFound(detail)
            | Error::Conflict(detail)
            | Error::UnsupportedMediaType(detail)
            | Error::Unavailable(detail) => detail.clone(),
            Error::Invalid { detail, .. } => detail.clone(),
            Error::Unauthorized(expected) => format!("missing or unknown credentials: {expected}"),
            Error::PayloadTooLarge => "the request body exceeds the configured limit".to_string(),
            Error::RateLimited(seconds) => {
                format!("this client is over its rate limit; retry after {seconds} s")
            }
            Error::RequestTimeout(seconds) => {
                format!("the request was not finished within {seconds} s")
            }
            Error::Database(error) if is_transient(error) => {
                "the database is busy or out of reach for a moment; retry".to_string()
            }
            Error::Database(_) | Error::Internal(_) | Error::Command(_) => {
                "the server failed to handle this request; it has been logged".to_string()
            }
        }
    }
}

/// True for database failures that say nothing about the request and pass
/// by themselves: the pool or a lock had no room in time, the connection
/// broke, the session was ended (PostgreSQL ends a transaction left idle,
/// see `storage`), or PostgreSQL chose this transaction to undo a deadlock
/// or a serialisation conflict. The transaction was rolled back, so the
/// client may simply retry: 503 with `Retry-After`, not 500.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(database) => {
            let Some(code) = database.code() else {
                return false;
            };
            if database
                .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                .is_some()
            {
                // Extended codes keep the primary one in the low byte:
                // 5 busy and 6 locked, with their variants (261, 517, ...).
                return code
                    .parse::<u32>()
                    .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
            }
            // PostgreSQL's SQLSTATE: connection exceptions (08), the idle
            // session ended (25P03), serialisation failure and deadlock
            // (40001, 40P01), too many connections (53300), lock not
            // available (55P03), server shutting down or starting (57P0x).
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "25P03" | "40001" | "40P01" | "53300" | "55P03" | "57P01" | "57P02" | "57P03"
                )
        }
        _ => false,
    }
}

/// The RFC 9457 body every error answer carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "request failed inside the server");
        } else if matches!(self, Error::Database(_)) {
            tracing::warn!(error = %self, "the database was busy or out of reach; answered 503");
        }
        let retry_after = match &self {
            Error::RateLimited(seconds) => Some(HeaderValue::from(*seconds)),
            Error::Database(error) if is_transient(error) => Some(HeaderValue::from(1)),
            _ => None,
        };
        let problem = Problem {
            problem_type: format!("/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.public_detail(),
            errors: match self {
                Error::Invalid { errors, .. } => Some(errors),
                _ => None,
            },
        };
        let mut response = problem_response(status, &problem);
        if let Some(retry_after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

/// Serialises a problem with its media type.
pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).expect("a problem always serialises");
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::with_article;

    #[test]
    fn an_goes_before_a_vowel_and_a_before_the_rest() {
        assert_eq!(with_article("analyst"), "an analyst");
        assert_eq!(with_article("admin"), "an admin");
        assert_eq!(with_article("approved"), "an approved");
        assert_eq!(with_article("pending"), "a pending");
        assert_eq!(with_article("policy_owner"), "a policy_owner");
    }
}
