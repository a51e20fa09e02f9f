//! How long a request may take, from its first byte to its answer.
//!
//! Slow or stalled clients must not hold a connection and a handler for
//! ever, so every request has a deadline. One size does not fit all: a
//! blocklist import of a million lines streams for tens of seconds, which
//! the usual 30 s would cut short, so the import route has a deadline of
//! its own. A request past its deadline is dropped where it stands (its
//! transaction, if any, rolls back) and answered 408.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// The path whose requests get the import deadline.
pub const IMPORT_PATH: &str = "/security/policy/blocks/import";

/// The deadlines, in seconds, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub request_seconds: u64,
    pub import_seconds: u64,
}

/// Middleware: runs the request under its deadline.
pub async fn enforce_deadline(
    State(deadlines): State<Deadlines>,
    request: Request,
    next: Next,
) -> Response {
    let seconds = if request.uri().path() == IMPORT_PATH {
        deadlines.import_seconds
    } else {
        deadlines.request_seconds
    };

    match tokio::time::timeout(Duration::from_secs(seconds), next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::RequestTimeout(seconds).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    /// A handler as slow as a long import: 1.5 s.
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        "done"
    }

    fn app() -> Router {
        let deadlines = Deadlines {
            request_seconds: 1,
            import_seconds: 5,
        };
        Router::new()
            .route("/security/policy/", post(slow))
            .route(IMPORT_PATH, post(slow))
            .layer(axum::middleware::from_fn_with_state(
                deadlines,
                enforce_deadline,
            ))
    }

    async fn status_of(path: &str) -> (StatusCode, String) {
        let request = Request::post(path).body(Body::empty()).unwrap();
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_408_as_a_problem() {
        let (status, body) = status_of("/security/policy/").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(body.contains("\"status\":408"), "{body}");
    }

    #[tokio::test]
    async fn an_import_has_a_deadline_of_its_own() {
        let (status, body) = status_of(IMPORT_PATH).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "done");
    }
}
