//! The CrowdSec Local API's bouncer endpoints, so that CrowdSec's bouncers
//! (firewall, nginx, HAProxy, Traefik, custom) enforce Valhalla's blocklist
//! unchanged: `GET|HEAD /v1/decisions` (live queries) and
//! `GET|HEAD /v1/decisions/stream` (what bouncers poll).
//!
//! They answer as CrowdSec 1.4.6 does (the captures in
//! `shared/reference/crowdsec-lapi`), with these deliberate differences:
//!
//! - Authentication: `X-Api-Key` carries a Valhalla token. A `bouncer`
//!   token is meant for it; any other role may pull too, since every role
//!   may read the blocklist. A missing, unknown or revoked key is CrowdSec's
//!   `403 {"message":"access forbidden"}`.
//! - Bad input (`ip=not-an-ip`, a bad `range`, `contains=maybe`) is `400`
//!   with CrowdSec's body shape `{"message":"..."}`; CrowdSec answers 500,
//!   and Valhalla never answers 500 for what a client sent.
//! - Only `ip` and `cidr` blocks are decisions (scope `Ip` or `Range`, type
//!   `ban`); `user` and `api_key` blocks mean nothing to a bouncer.
//! - Durations are never zero or negative and at most 2,147,483 s (see
//!   [`duration`] and [`stream`]); a deleted decision carries `1s`.
//! - Allowlisted addresses are never sent as decisions.
//! - A live query does not move the bouncer's stream position (CrowdSec's
//!   does, once a minute, which can make a bouncer miss stream updates).

mod decision;
pub mod duration;
mod feed;
mod live;
mod pulls;
mod stream;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{CONTENT_TYPE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{tokens, Capability};
use crate::error::Error;
use crate::server::AppState;

pub use decision::Decision;
pub use stream::DecisionStream;

/// The media type of every JSON answer, as CrowdSec sends it.
const JSON_MEDIA_TYPE: &str = "application/json; charset=utf-8";
/// What a HEAD on the decision endpoints answers, as CrowdSec sends it.
const TEXT_MEDIA_TYPE: &str = "text/plain; charset=utf-8";

/// The `/v1` routes, to be nested at `/v1`. Unknown paths under it answer
/// `404` and wrong methods `405`, both with an empty body, as CrowdSec does.
pub fn router() -> OpenApiRouter<AppState> {
    let (schemas, paths, live) = routes!(live::live_decisions, live::live_decisions_head);
    let (stream_schemas, stream_paths, stream) =
        routes!(stream::decision_stream, stream::decision_stream_head);
    OpenApiRouter::new()
        .routes((
            schemas,
            paths,
            live.fallback(empty_status(StatusCode::METHOD_NOT_ALLOWED)),
        ))
        .routes((
            stream_schemas,
            stream_paths,
            stream.fallback(empty_status(StatusCode::METHOD_NOT_ALLOWED)),
        ))
        .fallback(empty_status(StatusCode::NOT_FOUND))
}

fn empty_status(status: StatusCode) -> impl Fn() -> std::future::Ready<Response> + Clone {
    move || std::future::ready(status.into_response())
}

/// CrowdSec's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct LapiMessage {
    #[schema(example = "access forbidden")]
    pub message: String,
}

/// The service's error, answered in CrowdSec's shape: `{"message": ...}`
/// with `application/json`.
#[derive(Debug)]
pub struct LapiError(Error);

impl From<Error> for LapiError {
    fn from(error: Error) -> Self {
        LapiError(error)
    }
}

impl From<sqlx::Error> for LapiError {
    fn from(error: sqlx::Error) -> Self {
        LapiError(Error::Database(error))
    }
}

impl IntoResponse for LapiError {
    fn into_response(self) -> Response {
        let (status, message) = match self.0 {
            Error::Unauthorized(_) | Error::Forbidden(_) => {
                (StatusCode::FORBIDDEN, "access forbidden".to_string())
            }
            Error::BadRequest(detail) => (StatusCode::BAD_REQUEST, detail),
            Error::Invalid { detail, .. } => (StatusCode::BAD_REQUEST, detail),
            Error::Unavailable(detail) => (StatusCode::SERVICE_UNAVAILABLE, detail),
            other => {
                // The service's own answer logs the cause and hides it.
                let status = other.into_response().status();
                (status, "internal error; it has been logged".to_string())
            }
        };
        json_response(status, &LapiMessage { message })
    }
}

/// A JSON answer with CrowdSec's media type and a Content-Length.
fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("a CrowdSec answer serialises");
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_MEDIA_TYPE));
    response
}

/// A body being written while sent, with CrowdSec's JSON media type.
fn streamed_json(body: Body) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_MEDIA_TYPE));
    response
}

/// CrowdSec's answer to a HEAD it does not evaluate: 200, text/plain, no
/// body and no length.
fn plain_head() -> Response {
    let body = Body::from_stream(futures_util::stream::empty::<Result<Vec<u8>, Error>>());
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_MEDIA_TYPE));
    response
}

/// The header bouncers send their key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// A bouncer: the token behind `X-Api-Key`, and where it calls from.
#[derive(Debug, Clone)]
pub struct Bouncer {
    pub token_id: i64,
    pub name: String,
    pub address: Option<String>,
    pub user_agent: Option<String>,
}

impl FromRequestParts<AppState> for Bouncer {
    type Rejection = LapiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = crate::ratelimit::header_secret(&parts.headers, API_KEY_HEADER)
            .ok_or(Error::Unauthorized("X-Api-Key"))?;
        let (token_id, principal) = tokens::authenticate_token(state, &key).await?;
        crate::ratelimit::confirm(&parts.extensions, crate::ratelimit::CredentialKind::ApiKey);
        principal.require(Capability::ReadBlocklist)?;

        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(remote)| remote.ip().to_string());
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(200).collect());
        Ok(Bouncer {
            token_id,
            name: principal.name,
            address,
            user_agent,
        })
    }
}

/// The query's parameters as pairs, the last of a repeated name winning
/// where it is read. Unknown names are ignored, as CrowdSec ignores them.
fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, LapiError> {
    serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|_| {
        LapiError(Error::BadRequest(
            "the query string is malformed".to_string(),
        ))
    })
}
