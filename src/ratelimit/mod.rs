//! Per-client limits on this API, from the current mode's `rate_limits`.
//!
//! A client is the credential it authenticates with (bearer token,
//! `X-Api-Key`, honeypot key), or its address when it sends none. A
//! credential gets its own bucket only once it has authenticated: until
//! then its requests are charged to the peer address, so an attacker who
//! sends a new random token with each request still drains one bucket, the
//! address's. When a credential authenticates for the first time, the
//! request is given back to the address and charged to the new bucket.
//!
//! Limits are read from the policy held in memory ([`SharedPolicy`]), so a
//! mode change applies to the next request. `/healthz` and `/readyz` are
//! exempt, so that probes never fail because of load.

mod buckets;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Extensions, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub use buckets::{Buckets, ClientKey, Decision};

use crate::auth::Secret;
use crate::clock::Clock;
use crate::error::Error;
use crate::policy::SharedPolicy;
use crate::server::AppState;

/// Paths never limited: health probes.
pub const EXEMPT_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Most buckets held: about 100 bytes each, so some 10 MB at most.
const CAPACITY: usize = 100_000;

/// How often full buckets are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How long a credential's bucket outlives its last request once full;
/// without one, a credential's next request passes through its address.
const CREDENTIAL_IDLE_NANOS: i128 = 10 * 60 * 1_000_000_000;

/// The credentials a request may carry, in the order they are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Bearer,
    ApiKey,
    HoneypotKey,
}

impl CredentialKind {
    const ALL: [CredentialKind; 3] = [
        CredentialKind::Bearer,
        CredentialKind::ApiKey,
        CredentialKind::HoneypotKey,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The secret as the authenticator of this kind reads it: the same
    /// function, so that one secret spelt with other whitespace is still
    /// one bucket.
    fn presented(self, headers: &HeaderMap) -> Option<Secret> {
        match self {
            CredentialKind::Bearer => crate::auth::bearer_token(headers),
            CredentialKind::ApiKey => header_secret(headers, crate::crowdsec::API_KEY_HEADER),
            CredentialKind::HoneypotKey => header_secret(headers, crate::honeypots::KEY_HEADER),
        }
    }
}

/// A secret sent in a header of its own, trimmed.
pub fn header_secret(headers: &HeaderMap, name: &str) -> Option<Secret> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| Secret::new(value))
}

/// Which credentials of a request authenticated: set by the
/// authenticators (through [`confirm`]) while the request is handled, read
/// by the limiter when it has been answered.
#[derive(Debug, Clone, Default)]
struct Confirmed(Arc<AtomicU8>);

/// Tells the limiter that the request's credential of `kind` is valid, so
/// that it gets a bucket of its own. Every authenticator calls this.
pub fn confirm(extensions: &Extensions, kind: CredentialKind) {
    if let Some(confirmed) = extensions.get::<Confirmed>() {
        confirmed.0.fetch_or(kind.bit(), Ordering::Relaxed);
    }
}

/// The limiter a server holds: its buckets, and where limits and the time
/// come from.
#[derive(Clone)]
pub struct RateLimiter {
    buckets: Arc<Mutex<Buckets>>,
    policy: SharedPolicy,
    clock: Arc<dyn Clock>,
}

impl RateLimiter {
    pub fn new(policy: SharedPolicy, clock: Arc<dyn Clock>) -> Self {
        Self {
            buckets: Arc::new(Mutex::new(Buckets::with_capacity(CAPACITY))),
            policy,
            clock,
        }
    }

    /// Drops full buckets on a steady tick until the task is aborted.
    pub fn sweep(&self) -> tokio::task::JoinHandle<()> {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = limiter.now();
                limiter.lock().sweep(now, CREDENTIAL_IDLE_NANOS);
            }
        })
    }

    /// Charges a request to its client, or refuses it.
    fn charge(&self, client: &Client) -> Decision {
        let limit = self.policy.rate_limit();
        let now = self.now();
        let mut buckets = self.lock();
        let known = client.presented().find(|(_, key)| buckets.holds(key));
        let key = known.map_or(client.address, |(_, key)| key);
        buckets.charge(key, now, limit)
    }

    /// Once a request is answered: if it was charged to the address but a
    /// credential authenticated, the request moves to that credential's
    /// new bucket.
    fn settle(&self, client: &Client, charged: ClientKey, confirmed: &Confirmed) {
        let confirmed = confirmed.0.load(Ordering::Relaxed);
        let Some((_, credential)) = client
            .presented()
            .find(|(kind, _)| confirmed & kind.bit() != 0)
        else {
            return;
        };
        if charged == credential {
            return;
        }

        let limit = self.policy.rate_limit();
        let now = self.now();
        let mut buckets = self.lock();
        if !buckets.holds(&credential) {
            buckets.refund(charged, now, limit);
            buckets.charge(credential, now, limit);
        }
    }

    fn now(&self) -> i128 {
        i128::from(self.clock.now().millis()) * 1_000_000
    }

    // Every change is one insert, update or retain, so a poisoned lock
    // still guards a consistent table.
    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Who sent a request: the keys of the credentials it carries, and its
/// address.
struct Client {
    /// By kind, in the order of `CredentialKind::ALL`.
    credentials: [Option<ClientKey>; 3],
    address: ClientKey,
}

impl Client {
    fn of(request: &Request) -> Self {
        let credentials = CredentialKind::ALL.map(|kind| {
            let secret = kind.presented(request.headers())?;
            let digest: [u8; 32] = Sha256::digest(secret.expose().as_bytes()).into();
            Some(ClientKey::Credential(digest))
        });
        // Served without an address (only in-process, never over a socket),
        // all such requests share one bucket.
        let address = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        Client {
            credentials,
            address: ClientKey::address(address),
        }
    }

    /// The credentials the request carries, with their kinds.
    fn presented(&self) -> impl Iterator<Item = (CredentialKind, ClientKey)> + '_ {
        CredentialKind::ALL
            .into_iter()
            .zip(self.credentials)
            .filter_map(|(kind, key)| Some((kind, key?)))
    }
}

/// The middleware: refuses a request over its client's limit with 429 and
/// `Retry-After`, before any other work is done for it.
pub async fn limit_requests(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if EXEMPT_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }

    let client = Client::of(&request);
    let charged = match state.rate_limiter.charge(&client) {
        Decision::Admitted(key) => key,
        Decision::Refused {
            retry_after_seconds,
        } => return Error::RateLimited(retry_after_seconds).into_response(),
    };

    let confirmed = Confirmed::default();
    request.extensions_mut().insert(confirmed.clone());
    let response = next.run(request).await;

    state.rate_limiter.settle(&client, charged, &confirmed);
    response
}
