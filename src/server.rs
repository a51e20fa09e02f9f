//! Assembling the service: state, the route table, middleware, and serving
//! with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::Clock;
use crate::config::ServeSettings;
use crate::detection::Engine;
use crate::error::{Error, Result};
use crate::honeypots::EventWriter;
use crate::ratelimit::RateLimiter;
use crate::storage::Db;
use crate::{
    actions, audit, auth, blocklist, crowdsec, dashboard, honeypots, incidents, openapi, policy,
};

/// What every handler can reach. Axum clones the state for every request
/// (and for several extractors within one), so it is one shared pointer
/// rather than a struct of a dozen reference counts.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The shared services behind [`AppState`].
pub struct Services {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    /// Where honeypot events are written, in shared transactions.
    pub events: EventWriter,
    /// The active blocklist in memory, which checks read; every change
    /// applies to it after its transaction commits.
    pub blocklist: blocklist::SharedIndex,
    /// Tokens authenticated in the last second.
    pub tokens: auth::TokenCache,
    /// Honeypot keys authenticated in the last second.
    pub honeypot_keys: auth::CredentialCache<honeypots::AuthenticatedHoneypot>,
    /// The policy in memory, which the rate limiter reads on every request;
    /// every change applies to it after its transaction commits.
    pub policy: policy::SharedPolicy,
    pub rate_limiter: RateLimiter,
    /// What this process answered, for `GET /metrics`.
    pub requests: crate::http::RequestMetrics,
}

/// Every path of the API, in one place: each domain contributes its routes.
pub fn router(state: AppState, settings: &ServeSettings) -> Router {
    let (api, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(policy::router())
        .merge(blocklist::router())
        .merge(blocklist::import_router(settings.import_max_bytes))
        .merge(actions::router())
        .merge(honeypots::router(settings.bulk_max_bytes))
        .merge(auth::tokens::router())
        .merge(audit::router())
        .merge(dashboard::router())
        .merge(incidents::router())
        .nest("/v1", crowdsec::router())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_document))
        .split_for_parts();
    let document = Arc::new(openapi::with_problem_responses(document));

    api.layer(Extension(document))
        .fallback(|| async { Error::NotFound("no such path".to_string()) })
        .method_not_allowed_fallback(|| async { method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::ratelimit::limit_requests,
        ))
        .layer(axum::middleware::from_fn(
            crate::http::refuse_encoded_bodies,
        ))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            crate::http::Deadlines {
                request_seconds: settings.request_timeout_seconds,
                import_seconds: settings.import_timeout_seconds,
            },
            crate::http::enforce_deadline,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            Error::Internal("a handler panicked".to_string()).into_response()
        }))
        // Outermost, so that answers the layers above give themselves (408
        // past the deadline, 500 for a panic) are logged and counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.requests.clone(),
            crate::http::log_request,
        ))
        .with_state(state)
}

fn method_not_allowed() -> Response {
    let problem = crate::error::Problem {
        problem_type: "/problems/method-not-allowed".to_string(),
        title: "Method Not Allowed".to_string(),
        status: 405,
        detail: "this path does not answer that method".to_string(),
        errors: None,
    };
    crate::error::problem_response(StatusCode::METHOD_NOT_ALLOWED, &problem)
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "the process is up")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "service",
    responses((status = 200, description = "the database answers"), (status = 503)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>> {
    if state.db.ping().await {
        Ok(Json(serde_json::json!({"status": "ready"})))
    } else {
        Err(Error::Unavailable(
            "the database does not answer".to_string(),
        ))
    }
}

/// This document: generated from the route table, so it cannot drift.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "the OpenAPI 3 document of this API")))]
async fn openapi_document(
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document.as_ref().clone())
}

/// A server running in the background; dropping the handle does not stop it.
pub struct RunningServer {
    pub address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, finishes requests in flight, then returns.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = self.task.await;
    }
}

/// Connects, migrates, bootstraps, binds and serves in the background.
pub async fn start(settings: &ServeSettings, clock: Arc<dyn Clock>) -> Result<RunningServer> {
    let db = Db::connect(&settings.database.database_url).await?;
    db.migrate().await?;
    let token = settings.admin_token.clone();
    crate::bootstrap::prepare(&db, clock.now(), token, &settings.listen).await?;

    let listener = TcpListener::bind(&settings.listen).await.map_err(|error| {
        Error::Internal(format!("cannot listen on {}: {error}", settings.listen))
    })?;
    let address = listener
        .local_addr()
        .map_err(|error| Error::Internal(error.to_string()))?;
    let stored = Arc::new(Notify::new());
    let events = EventWriter::start(db.clone(), stored.clone());
    let index = blocklist::SharedIndex::load(&db, clock.now()).await?;
    let follower = index.follow(db.clone(), clock.clone());
    let policy = policy::SharedPolicy::load(&db).await?;
    let policy_follower = policy.follow(db.clone());
    let rate_limiter = RateLimiter::new(policy.clone(), clock.clone());
    let sweeper = rate_limiter.sweep();
    let engine = Engine::new(
        db.clone(),
        clock.clone(),
        stored,
        index.clone(),
        policy.clone(),
    );
    let engine = tokio::spawn(engine.run());
    let app = router(
        AppState::new(Services {
            db: db.clone(),
            clock,
            events,
            blocklist: index,
            tokens: auth::TokenCache::default(),
            honeypot_keys: auth::CredentialCache::default(),
            policy,
            rate_limiter,
            requests: crate::http::RequestMetrics::default(),
        }),
        settings,
    );

    let (shutdown, stopped) = oneshot::channel::<()>();
    let header_read_timeout = Duration::from_secs(settings.request_timeout_seconds);
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.await;
        };
        crate::http::serve(listener, app, header_read_timeout, stop).await;
        // Judging is transactional: an aborted batch rolls back and its
        // events stay unprocessed for the next start.
        engine.abort();
        let _ = engine.await;
        for task in [follower, policy_follower, sweeper] {
            task.abort();
            let _ = task.await;
        }
        db.close().await;
    });
    tracing::info!(%address, "valhalla is serving");
    Ok(RunningServer {
        address,
        shutdown: Some(shutdown),
        task,
    })
}
