//! Sending a batch to the bulk endpoint, retrying what may succeed later.
//!
//! Honeypots usually sit in a DMZ or a cloud network, away from Valhalla,
//! so the key and the attackers' telemetry must cross networks nobody
//! trusts: the client speaks `https://` (see `client.rs` for whom it
//! trusts: `--ca-cert` adds the private authority that a TLS-terminating
//! proxy in front of Valhalla often has a certificate from). Plain `http://`
//! stays for the same host or a private network; to any other host it is
//! allowed with a warning, since the key then crosses the network in clear.
//!
//! A 2xx answer means the batch is committed. Resending after a timeout is
//! safe: the server fingerprints every record and stores it once.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::{client, ShipError, Stop};
use crate::auth::Secret;
use crate::honeypots::formats::Format;

const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Valhalla's base URL, e.g. `https://valhalla.example:8443` or
/// `http://127.0.0.1:8080`.
#[derive(Debug, Clone)]
pub struct ServerUrl(Url);

impl ServerUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "`{}:` is not supported; use https://HOST:PORT or http://HOST:PORT",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials in the URL are not used; pass the key with --key".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("give the server's base URL, without a query or fragment".into());
        }
        Ok(Self(url))
    }

    /// True when a secret sent to this URL would cross a network in clear:
    /// plain `http` to a host other than this one.
    pub fn is_clear_text_off_host(&self) -> bool {
        if self.0.scheme() != "http" {
            return false;
        }
        match self.0.host_str() {
            Some("localhost" | "localhost.") => false,
            Some(host) => !host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|address| {
                    let address = address.to_canonical();
                    address.is_loopback() || address.is_unspecified()
                }),
            None => true,
        }
    }

    /// The bulk endpoint for records in `format`.
    pub fn bulk_endpoint(&self, format: Format) -> Url {
        let mut url = self.endpoint("/security/honeypot/events/bulk");
        url.set_query(Some(&format!("format={}", format.as_str())));
        url
    }

    /// `path` (from the API's root) under this base URL.
    pub fn endpoint(&self, path: &str) -> Url {
        let mut url = self.0.clone();
        let path = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0.as_str())
    }
}

/// The server's answer to an accepted batch. The reasons for rejected
/// lines are not read: they may quote the record, passwords included.
#[derive(Debug, Default, Deserialize)]
pub struct Report {
    pub accepted: u64,
    pub skipped: u64,
    #[serde(default)]
    pub rejected: Vec<RejectedLine>,
    #[serde(default)]
    pub duplicates: u64,
}

#[derive(Debug, Deserialize)]
pub struct RejectedLine {
    /// The line's number in the batch body, from 1.
    pub line: usize,
}

/// Posts batches for one honeypot.
pub struct BulkClient {
    http: reqwest::Client,
    endpoint: Url,
    /// `/healthz`, for [`Self::preflight`].
    health: Url,
    /// Marked sensitive, so no debug output of the request shows it.
    key: HeaderValue,
}

impl BulkClient {
    pub fn new(
        server: &ServerUrl,
        format: Format,
        key: &Secret,
        ca_cert: Option<&Path>,
    ) -> Result<Self, ShipError> {
        let mut key = HeaderValue::from_str(key.expose()).map_err(|_| {
            ShipError::Settings("the key holds characters an HTTP header cannot carry".into())
        })?;
        key.set_sensitive(true);

        let builder = reqwest::Client::builder()
            .user_agent(concat!("valhalla-ship/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        let http = client::build(builder, ca_cert).map_err(ShipError::Settings)?;
        Ok(Self {
            http,
            endpoint: server.bulk_endpoint(format),
            health: server.endpoint("/healthz"),
            key,
        })
    }

    /// Reaches the server once without the key, so that a certificate it
    /// will never accept stops the shipper at start rather than when the
    /// honeypot first logs something, which may be hours later. Any other
    /// failure only warns: the server may come later, and sending retries.
    pub async fn preflight(&self) -> Result<(), ShipError> {
        match self.http.get(self.health.clone()).send().await {
            Ok(_) => Ok(()),
            Err(error) => match client::tls_refusal(&error) {
                Some(message) => Err(ShipError::Tls(message)),
                None => {
                    let reason = client::describe(&error.without_url());
                    tracing::warn!(%reason, "the server is not reachable yet; shipping waits");
                    Ok(())
                }
            },
        }
    }

    async fn post(&self, body: &[u8]) -> Answer {
        let sent = self
            .http
            .post(self.endpoint.clone())
            .header("X-HONEYPOT-KEY", self.key.clone())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) => classify(response).await,
            // Retrying cannot make an untrusted certificate trusted, and
            // backing off for a minute would hide the cause.
            Err(error) => match client::tls_refusal(&error) {
                Some(message) => Answer::Fatal(ShipError::Tls(message)),
                None => Answer::Retry {
                    reason: client::describe(&error.without_url()),
                    after: None,
                },
            },
        }
    }
}

enum Answer {
    Stored(Report),
    TooLarge,
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Fatal(ShipError),
}

async fn classify(response: reqwest::Response) -> Answer {
    let status = response.status();
    if status.is_success() {
        return match response
            .bytes()
            .await
            .map(|body| serde_json::from_slice(&body))
        {
            Ok(Ok(report)) => Answer::Stored(report),
            // The status alone says the batch is committed; only the
            // counts are lost.
            _ => {
                tracing::warn!(%status, "batch stored, but the server's report was unreadable");
                Answer::Stored(Report::default())
            }
        };
    }
    match status {
        status if status.is_redirection() => Answer::Fatal(ShipError::Refused {
            status,
            detail: format!(
                "a redirect to {}, not followed because the key would go along; \
                 put the final URL in --url",
                location(&response)
            ),
        }),
        StatusCode::PAYLOAD_TOO_LARGE => Answer::TooLarge,
        StatusCode::TOO_MANY_REQUESTS => retry_later(status, &response),
        status if status.is_server_error() => retry_later(status, &response),
        StatusCode::UNAUTHORIZED => Answer::Fatal(ShipError::KeyRefused),
        _ => {
            let detail = problem_detail(response).await;
            Answer::Fatal(ShipError::Refused { status, detail })
        }
    }
}

/// Where a redirect points, for the operator.
pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("nowhere given")
        .chars()
        .take(300)
        .collect()
}

fn retry_later(status: StatusCode, response: &reqwest::Response) -> Answer {
    let after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Answer::Retry {
        reason: format!("the server answered {status}"),
        after,
    }
}

/// The `detail` of a problem+json answer, shortened.
async fn problem_detail(response: reqwest::Response) -> String {
    let body = response.bytes().await.unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| "no detail given".to_string());
    detail.chars().take(300).collect()
}

/// How a batch's sending ended.
#[derive(Debug)]
pub enum Delivery {
    Stored(Report),
    /// The server's body limit is below this batch.
    TooLarge,
    /// A stop was asked for before the batch could be delivered.
    Stopped,
}

/// Sends `body` until it is stored, retrying connection failures, 5xx and
/// 429 with growing delays; `max_attempts` bounds that (`None`: forever).
pub async fn send_with_retries(
    client: &BulkClient,
    body: &[u8],
    max_attempts: Option<u32>,
    stop: &mut Stop,
) -> Result<Delivery, ShipError> {
    let mut backoff = Backoff::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (reason, after) = match client.post(body).await {
            Answer::Stored(report) => return Ok(Delivery::Stored(report)),
            Answer::TooLarge => return Ok(Delivery::TooLarge),
            Answer::Fatal(error) => return Err(error),
            Answer::Retry { reason, after } => (reason, after),
        };
        if max_attempts.is_some_and(|max| attempt >= max) {
            return Err(ShipError::GaveUp {
                attempts: attempt,
                reason,
            });
        }
        if stop.is_requested() {
            return Ok(Delivery::Stopped);
        }

        let delay = backoff
            .next_delay()
            .max(after.unwrap_or_default().min(MAX_DELAY));
        tracing::warn!(
            attempt,
            delay_ms = delay.as_millis() as u64,
            reason = %reason,
            "batch not delivered; retrying"
        );
        tokio::select! {
            () = stop.requested() => return Ok(Delivery::Stopped),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Exponential backoff with jitter: each delay lies between half and all
/// of a ceiling that doubles from 250 ms to 30 s, so many shippers that
/// lost the same server do not return in step.
#[derive(Debug)]
pub struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self {
            ceiling: FIRST_DELAY,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let half = self.ceiling / 2;
        self.ceiling = (self.ceiling * 2).min(MAX_DELAY);
        let fraction = f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX);
        half + half.mul_f64(fraction)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_their_jitter_up_to_thirty_seconds() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();

        let mut ceiling = FIRST_DELAY;
        for delay in delays {
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(MAX_DELAY);
        }
    }

    #[test]
    fn the_bulk_endpoint_is_built_from_the_base_url() {
        let plain = ServerUrl::parse("http://127.0.0.1:8080").unwrap();
        let prefixed = ServerUrl::parse("http://10.0.0.5:8080/valhalla/").unwrap();

        assert_eq!(
            plain.bulk_endpoint(Format::Cowrie).as_str(),
            "http://127.0.0.1:8080/security/honeypot/events/bulk?format=cowrie"
        );
        assert_eq!(
            prefixed.bulk_endpoint(Format::Opencanary).as_str(),
            "http://10.0.0.5:8080/valhalla/security/honeypot/events/bulk?format=opencanary"
        );
    }

    #[test]
    fn only_plain_http_to_another_host_counts_as_clear_text_off_host() {
        let off_host = |url: &str| ServerUrl::parse(url).unwrap().is_clear_text_off_host();

        assert!(off_host("http://10.0.0.5:8080"));
        assert!(off_host("http://valhalla.example:8080"));
        assert!(!off_host("http://127.0.0.1:8080"));
        assert!(!off_host("http://127.7.0.1:8080"));
        assert!(!off_host("http://[::1]:8080"));
        assert!(!off_host("http://localhost:8080"));
        assert!(!off_host("http://localhost.:8080"));
        assert!(!off_host("http://[::ffff:127.0.0.1]:8080"));
        assert!(!off_host("http://0.0.0.0:8080"));
        assert!(!off_host("https://valhalla.example:8443"));
    }

    #[test]
    fn urls_the_shipper_cannot_use_are_refused_when_parsed() {
        for url in [
            "ftp://127.0.0.1",
            "http://user:secret@127.0.0.1:8080",
            "http://127.0.0.1:8080/?format=cowrie",
            "127.0.0.1:8080",
        ] {
            assert!(ServerUrl::parse(url).is_err(), "{url}");
        }
    }
}
