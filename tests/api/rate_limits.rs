//! Rate limits on this API: per client (an authenticated credential, or the
//! peer address), from the current mode's `rate_limits`, refilled as the
//! clock moves, with 429, `Retry-After` and a problem body when exceeded.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use valhalla::auth::Secret;

use crate::support::{Reply, TestApp};

const POLICY: &str = "/security/policy/";

/// Sets the limit of `mode` as the admin.
async fn set_limit(app: &TestApp, mode: &str, requests_per_minute: i64, burst: i64) {
    let limit = json!({"requests_per_minute": requests_per_minute, "burst": burst});
    let changes = json!({"rate_limits": {mode: limit}});
    app.update_policy(changes).await.expect(200);
}

/// Asserts a 429 problem whose `Retry-After` is `seconds`.
#[track_caller]
fn assert_rate_limited(reply: Reply, seconds: u64) {
    let reply = reply.expect_problem(429);
    assert_eq!(
        reply.body["type"], "/problems/rate-limited",
        "{}",
        reply.text
    );
    assert_eq!(
        retry_after(&reply.headers),
        Some(seconds),
        "{:?}",
        reply.headers
    );
}

fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.parse().ok()
}

/// Reads the policy with `token` until the first refusal, at most `most`
/// times; returns how many were admitted.
async fn admitted_in_a_row(app: &TestApp, token: &str, most: usize) -> usize {
    for admitted in 0..most {
        let reply = app.get(POLICY, token).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            return admitted;
        }
        reply.expect(200);
    }
    most
}

/// An HTTP client whose connections come from `address` (any of 127/8).
fn client_from(address: &str) -> reqwest::Client {
    let address: IpAddr = address.parse().expect("a loopback address");
    reqwest::Client::builder()
        .local_address(address)
        .build()
        .expect("a client")
}

/// GET `path` from `client`, with an optional bearer token; the status.
async fn status_of(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    token: Option<&str>,
) -> StatusCode {
    let mut request = client.get(format!("{}{path}", app.base_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the server answers");
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        assert_eq!(content_type.unwrap(), "application/problem+json");
        assert!(retry_after(response.headers()).is_some_and(|seconds| seconds >= 1));
    }
    response.status()
}

backend_tests! {
    async fn a_client_gets_its_burst_then_429_with_retry_after(app: TestApp) {
        let viewer = app.token("dashboard", "viewer").await;
        set_limit(&app, "normal", 6, 3).await;

        assert_eq!(admitted_in_a_row(&app, &viewer, 10).await, 3);

        // Six a minute is one every ten seconds; three at once put the
        // bucket thirty seconds ahead, twenty past what a burst allows.
        assert_rate_limited(app.get(POLICY, &viewer).await, 10);
    }

    async fn the_bucket_refills_as_the_clock_moves(app: TestApp) {
        let viewer = app.token("dashboard", "viewer").await;
        set_limit(&app, "normal", 6, 3).await;
        assert_eq!(admitted_in_a_row(&app, &viewer, 10).await, 3);

        app.clock.advance_seconds(9);
        assert_rate_limited(app.get(POLICY, &viewer).await, 1);
        app.clock.advance_seconds(1);
        assert_eq!(admitted_in_a_row(&app, &viewer, 10).await, 1);

        app.clock.advance_seconds(3600);
        assert_eq!(admitted_in_a_row(&app, &viewer, 10).await, 3);
    }

    async fn each_token_has_its_own_bucket(app: TestApp) {
        let first = app.token("first", "viewer").await;
        let second = app.token("second", "viewer").await;
        set_limit(&app, "normal", 6, 3).await;

        assert_eq!(admitted_in_a_row(&app, &first, 10).await, 3);
        assert_eq!(admitted_in_a_row(&app, &second, 10).await, 3);
        assert_rate_limited(app.get(POLICY, &first).await, 10);
    }

    async fn each_address_has_its_own_bucket_without_credentials(app: TestApp) {
        set_limit(&app, "normal", 6, 3).await;
        let here = client_from("127.0.0.2");
        let there = client_from("127.0.0.3");

        for _ in 0..3 {
            assert_eq!(status_of(&app, &here, "/openapi.json", None).await, 200);
        }
        let refused = status_of(&app, &here, "/openapi.json", None).await;
        assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status_of(&app, &there, "/openapi.json", None).await, 200);

        // A request refused for its credentials counts too.
        for _ in 0..2 {
            assert_eq!(status_of(&app, &there, POLICY, None).await, 401);
        }
        let refused = status_of(&app, &there, "/openapi.json", None).await;
        assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);
    }

    async fn random_unknown_tokens_all_drain_their_address(app: TestApp) {
        let viewer = app.token("dashboard", "viewer").await;
        set_limit(&app, "normal", 6, 3).await;
        let attacker = client_from("127.0.0.4");
        // Known before the flood: its bucket is its own.
        assert_eq!(status_of(&app, &attacker, POLICY, Some(&viewer)).await, 200);

        for _ in 0..3 {
            let token = Secret::generate("vh_").expose().to_string();
            assert_eq!(status_of(&app, &attacker, POLICY, Some(&token)).await, 401);
        }
        let token = Secret::generate("vh_").expose().to_string();
        let refused = status_of(&app, &attacker, POLICY, Some(&token)).await;
        assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);

        // The token that authenticated before keeps its own bucket.
        assert_eq!(status_of(&app, &attacker, POLICY, Some(&viewer)).await, 200);
    }

    async fn a_tokens_first_request_is_not_charged_to_its_address(app: TestApp) {
        let tokens = [
            app.token("first", "viewer").await,
            app.token("second", "viewer").await,
            app.token("third", "viewer").await,
        ];
        set_limit(&app, "normal", 6, 2).await;
        let office = client_from("127.0.0.5");

        // Three new tokens behind one address: each first request passes
        // through the address's bucket, and is moved to the token's own.
        for token in &tokens {
            assert_eq!(status_of(&app, &office, POLICY, Some(token)).await, 200);
        }
        for _ in 0..2 {
            assert_eq!(status_of(&app, &office, "/openapi.json", None).await, 200);
        }
        let refused = status_of(&app, &office, "/openapi.json", None).await;
        assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);
    }

    async fn health_endpoints_are_never_limited(app: TestApp) {
        set_limit(&app, "normal", 1, 1).await;
        app.admin_get(POLICY).await.expect_problem(429);

        for _ in 0..20 {
            app.request(reqwest::Method::GET, "/healthz", None, None).await.expect(200);
            app.request(reqwest::Method::GET, "/readyz", None, None).await.expect(200);
        }
    }

    async fn a_mode_change_applies_to_the_very_next_request(app: TestApp) {
        let viewer = app.token("dashboard", "viewer").await;
        set_limit(&app, "lockdown", 1, 1).await;
        app.get(POLICY, &viewer).await.expect(200);
        app.get(POLICY, &viewer).await.expect(200);

        app.update_policy(json!({"mode": "lockdown"})).await.expect(200);

        // One a minute, none ahead: the viewer, a request ahead, waits.
        assert_rate_limited(app.get(POLICY, &viewer).await, 1);
        app.clock.advance_seconds(1);
        app.get(POLICY, &viewer).await.expect(200);
        assert_rate_limited(app.get(POLICY, &viewer).await, 60);

        // A fresh client gets lockdown's burst of one.
        let analyst = app.token("analyst", "analyst").await;
        assert_eq!(admitted_in_a_row(&app, &analyst, 10).await, 1);
    }

    async fn a_mode_set_by_an_action_request_applies_at_once(app: TestApp) {
        let viewer = app.token("dashboard", "viewer").await;
        let changes = json!({
            "require_distinct_approver": false,
            "rate_limits": {"elevated": {"requests_per_minute": 60, "burst": 1}}
        });
        app.update_policy(changes).await.expect(200);
        app.get(POLICY, &viewer).await.expect(200);
        app.get(POLICY, &viewer).await.expect(200);

        let body = json!({"action_type": "set_mode", "payload": {"mode": "elevated"},
                          "reason": "test"});
        let filed = app.admin_post("/security/actions/", body).await.expect(201);
        let path = format!("/security/actions/{}", filed.id());
        app.admin_post(&path, json!({"status": "approved"})).await.expect(200);
        let executed = app.admin_post(&path, json!({"status": "executed"})).await.expect(200);
        assert_eq!(executed.body["status"], "executed", "{}", executed.text);

        assert_rate_limited(app.get(POLICY, &viewer).await, 1);
    }

    async fn a_change_of_rate_limits_applies_at_once(app: TestApp) {
        let viewer = app.token("dashboard", "viewer").await;
        for _ in 0..50 {
            app.get(POLICY, &viewer).await.expect(200);
        }

        set_limit(&app, "normal", 60, 10).await;

        // Fifty requests at 6,000 a minute are half a second ahead; at 60
        // a minute, ten at once allow nine seconds ahead: nine more pass.
        assert_eq!(admitted_in_a_row(&app, &viewer, 20).await, 9);
    }

    async fn a_mode_change_on_one_replica_limits_the_other_within_a_second(app: TestApp) {
        let viewer = app.token("dashboard", "viewer").await;
        set_limit(&app, "lockdown", 1, 1).await;
        let replica = app.replica().await;
        replica.get(POLICY, &viewer).await.expect(200);
        replica.get(POLICY, &viewer).await.expect(200);

        app.update_policy(json!({"mode": "lockdown"})).await.expect(200);
        let changed = Instant::now();

        let deadline = changed + Duration::from_secs(3);
        let limited_after = loop {
            let reply = replica.get(POLICY, &viewer).await;
            if reply.status == StatusCode::TOO_MANY_REQUESTS {
                break changed.elapsed();
            }
            reply.expect(200);
            assert!(Instant::now() < deadline, "the replica never applied lockdown");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(limited_after < Duration::from_millis(1200), "{limited_after:?}");
        replica.stop().await;
    }

    async fn every_limited_operation_declares_429(app: TestApp) {
        let document = app
            .request(reqwest::Method::GET, "/openapi.json", None, None)
            .await
            .expect(200)
            .body;
        let paths = document["paths"].as_object().expect("paths");
        for (path, item) in paths {
            let methods = ["get", "put", "post", "delete", "patch", "head"];
            let operations = item
                .as_object()
                .expect("an item")
                .iter()
                .filter(|(key, _)| methods.contains(&key.as_str()));
            for (method, operation) in operations {
                let declared = &operation["responses"]["429"];
                if path == "/healthz" || path == "/readyz" {
                    assert_eq!(*declared, Value::Null, "{method} {path}");
                } else {
                    let header = &declared["headers"]["Retry-After"];
                    assert!(header.is_object(), "{method} {path}: {declared}");
                    let schema = &declared["content"]["application/problem+json"]["schema"];
                    assert_eq!(schema["$ref"], "#/components/schemas/Problem");
                }
            }
        }
    }
}
