//! Tests for errors: every refusal is an RFC 9457 problem with the status
//! API.md names, nothing a client sends yields a 500, and the service
//! endpoints answer without credentials.

use std::collections::BTreeSet;

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{encode, Reply, TestApp};

const BLOCKS: &str = "/security/policy/blocks";

/// Where the contract lives: CI clones the repository with `shared/` beside it.
/// The HTTP contract: the project's shared copy when it lies beside the
/// repository (as in CI), else the repository's own copy, which CI checks
/// is identical to it.
const API_MD: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/API.md"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/contract/API.md"),
];

/// Asserts the full problem shape: the members RFC 9457 and API.md name and
/// no others, `errors` only on validation failures, and nothing internal.
#[track_caller]
fn assert_problem(reply: Reply, status: u16) -> Reply {
    let reply = reply.expect_problem(status);
    let body = reply.body.as_object().expect("a JSON object");
    let mut members: Vec<&str> = body.keys().map(String::as_str).collect();
    members.sort_unstable();
    let expected: &[&str] = if status == 422 {
        &["detail", "errors", "status", "title", "type"]
    } else {
        &["detail", "status", "title", "type"]
    };
    assert_eq!(members, expected, "{}", reply.text);
    assert!(
        !body["title"].as_str().unwrap().is_empty(),
        "{}",
        reply.text
    );
    assert!(!body["type"].as_str().unwrap().is_empty(), "{}", reply.text);
    let lowered = reply.text.to_lowercase();
    for leak in [
        "sqlx",
        "sqlite",
        "postgres",
        "select ",
        "insert ",
        "constraint",
        "panicked",
    ] {
        assert!(!lowered.contains(leak), "`{leak}` leaked: {}", reply.text);
    }
    reply
}

/// Sends `body` as JSON and asserts the 400 a repeated key earns.
async fn refused_as_duplicate(app: &TestApp, path: String, body: &'static str) {
    let token = app.admin_token.clone();
    let reply = app
        .send_raw(
            Method::POST,
            &path,
            Some(&token),
            Some("application/json"),
            body.as_bytes().to_vec(),
        )
        .await;
    let reply = assert_problem(reply, 400);
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("duplicate key"),
        "{path} {body}: {}",
        reply.text
    );
}

/// The operations API.md documents, as `(method, path)` without queries.
fn documented_operations() -> BTreeSet<(String, String)> {
    let contract = API_MD
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .expect("API.md beside the repository or in contract/");
    let mut operations = BTreeSet::new();
    for span in contract.split('`').skip(1).step_by(2) {
        let Some((method, path)) = span.split_once(' ') else {
            continue;
        };
        if matches!(method, "GET" | "POST" | "PUT" | "PATCH" | "DELETE") && path.starts_with('/') {
            let path = path.split('?').next().unwrap_or(path);
            operations.insert((method.to_lowercase(), path.to_string()));
        }
    }
    operations
}

backend_tests! {
    async fn an_unknown_path_is_a_not_found_problem(app: TestApp) {
        for path in [
            "/nowhere",
            "/security/nowhere",
            "/security/policy/blocks/7/explode",
        ] {
            let reply = app.request(Method::GET, path, None, None).await;
            assert_problem(reply, 404);
            assert_problem(app.admin_get(path).await, 404);
        }
        assert_problem(app.admin_get("/security/actions/987654").await, 404);
    }

    async fn a_method_a_path_does_not_answer_is_a_method_not_allowed_problem(app: TestApp) {
        let token = app.admin_token.clone();
        let cases = [
            (Method::DELETE, BLOCKS, "GET,HEAD,POST"),
            (Method::PUT, "/security/policy/", "GET,HEAD,POST"),
            (Method::PATCH, "/security/tokens", "GET,HEAD,POST"),
            (
                Method::DELETE,
                "/security/honeypot/instances",
                "GET,HEAD,POST",
            ),
            (
                Method::GET,
                "/security/honeypot/instances/1/deactivate",
                "POST",
            ),
            (Method::POST, "/security/dashboard", "GET,HEAD"),
        ];
        for (method, path, allowed) in cases {
            let reply = app.request(method, path, Some(&token), None).await;
            let reply = assert_problem(reply, 405);
            // RFC 9110: a 405 names the methods the resource does answer.
            let allow = reply
                .headers
                .get(reqwest::header::ALLOW)
                .expect("an Allow header");
            let mut methods: Vec<&str> =
                allow.to_str().unwrap().split(',').map(str::trim).collect();
            methods.sort_unstable();
            assert_eq!(methods.join(","), allowed, "{path}");
        }
    }

    async fn missing_or_unknown_credentials_are_an_unauthorized_problem(app: TestApp) {
        let anonymous = app
            .request(Method::GET, "/security/dashboard", None, None)
            .await;
        let anonymous = assert_problem(anonymous, 401);
        assert!(anonymous.body["detail"]
            .as_str()
            .unwrap()
            .contains("Bearer"));

        let unknown = app
            .get("/security/dashboard", "vh_0123456789abcdef0123456789abcdef")
            .await;
        assert_problem(unknown, 401);
        let empty = app.get(BLOCKS, "").await;
        assert_problem(empty, 401);

        let body = json!({"entity_type": "ip", "value": "203.0.113.7", "reason": "x"});
        let reply = app.request(Method::POST, BLOCKS, None, Some(&body)).await;
        assert_problem(reply, 401);
        let blocks = app.admin_get(BLOCKS).await.expect(200);
        assert_eq!(blocks.items(), Vec::<Value>::new());

        let no_key = app
            .send_raw(
                Method::POST,
                "/security/honeypot/events",
                None,
                Some("application/json"),
                b"{\"event_type\":\"scan\",\"source_ip\":\"203.0.113.7\"}".to_vec(),
            )
            .await;
        assert_problem(no_key, 401);
    }

    async fn a_role_without_the_capability_gets_a_forbidden_problem(app: TestApp) {
        let viewer = app.token("grafana", "viewer").await;
        let body = json!({"entity_type": "ip", "value": "203.0.113.7", "reason": "x"});
        let reply = app.post(BLOCKS, &viewer, body).await;
        let reply = assert_problem(reply, 403);
        assert!(
            reply.body["detail"].as_str().unwrap().contains("viewer"),
            "{}",
            reply.text
        );

        let bouncer = app.token("edge-1", "bouncer").await;
        assert_problem(app.get("/security/dashboard", &bouncer).await, 403);
        app.get(BLOCKS, &bouncer).await.expect(200);
    }

    async fn a_conflict_is_a_problem_that_names_the_clash_without_sql(app: TestApp) {
        app.token("grafana", "viewer").await;
        let again = app
            .admin_post(
                "/security/tokens",
                json!({"name": "grafana", "role": "viewer"}),
            )
            .await;
        let again = assert_problem(again, 409);
        assert!(
            again.body["detail"].as_str().unwrap().contains("grafana"),
            "{}",
            again.text
        );

        app.honeypot("fra-ssh-01", "ssh").await;
        let body = json!({"name": "fra-ssh-01", "honeypot_type": "ssh"});
        assert_problem(
            app.admin_post("/security/honeypot/instances", body).await,
            409,
        );
    }

    async fn invalid_input_is_a_problem_listing_each_field(app: TestApp) {
        let bad_value = app.block("ip", "203.0.113.300", json!({})).await;
        let bad_value = assert_problem(bad_value, 422);
        assert_eq!(
            bad_value.body["errors"][0]["field"], "value",
            "{}",
            bad_value.text
        );
        assert!(bad_value.body["errors"][0]["message"].is_string());

        let body = json!({"name": "x", "honeypot_type": "ssh", "latitude": 91, "longitude": 181});
        let both = app.admin_post("/security/honeypot/instances", body).await;
        let both = assert_problem(both, 422);
        let fields: Vec<&Value> = both.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|error| &error["field"])
            .collect();
        assert_eq!(
            fields,
            [&json!("latitude"), &json!("longitude")],
            "{}",
            both.text
        );

        let wrong_type = app
            .block("ip", "203.0.113.7", json!({"duration_seconds": "3d"}))
            .await;
        let wrong_type = assert_problem(wrong_type, 422);
        assert_eq!(wrong_type.body["errors"][0]["field"], "duration_seconds");
    }

    async fn an_unknown_request_field_is_invalid(app: TestApp) {
        let typo = app
            .admin_post(
                BLOCKS,
                json!({"entity_type": "ip", "value": "203.0.113.7",
                                       "reason": "x", "duration_secs": 60}),
            )
            .await;
        let typo = assert_problem(typo, 422);
        assert!(typo.text.contains("duration_secs"), "{}", typo.text);

        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let event = app
            .post_event(
                &key,
                json!({"event_type": "scan", "source_ip": "203.0.113.7",
                                     "src_ip": "203.0.113.8"}),
            )
            .await;
        let event = assert_problem(event, 422);
        assert!(event.text.contains("src_ip"), "{}", event.text);

        let honeypot = app
            .admin_post(
                "/security/honeypot/instances",
                json!({"name": "b", "honeypot_type": "ssh", "api_key": "mine"}),
            )
            .await;
        assert_problem(honeypot, 422);
        assert_eq!(app.admin_get(BLOCKS).await.items(), Vec::<Value>::new());
    }

    async fn malformed_json_is_a_bad_request_problem(app: TestApp) {
        let token = app.admin_token.clone();
        let bodies: [&[u8]; 5] = [
            b"{\"entity_type\": \"ip\", ",
            b"{'entity_type': 'ip'}",
            b"",
            b"\xff\xfe{}",
            b"{\"entity_type\": \"ip\"} trailing",
        ];
        for body in bodies {
            let reply = app
                .send_raw(
                    Method::POST,
                    BLOCKS,
                    Some(&token),
                    Some("application/json"),
                    body.to_vec(),
                )
                .await;
            assert_problem(reply, 400);
        }
        let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let reply = app
            .send_raw(
                Method::POST,
                BLOCKS,
                Some(&token),
                Some("application/json"),
                nested.into_bytes(),
            )
            .await;
        assert_problem(reply, 400);
    }

    async fn a_key_named_twice_in_one_object_is_malformed_and_changes_nothing(app: TestApp) {
        let send = |path: String, body: &'static str| refused_as_duplicate(&app, path, body);

        send(
            "/security/tokens".to_string(),
            r#"{"name": "dk1", "role": "viewer", "role": "admin"}"#,
        )
        .await;
        let tokens = app.admin_get("/security/tokens").await.expect(200);
        assert_eq!(tokens.items().len(), 1, "only the admin token: {}", tokens.text);

        let filed = app
            .admin_post(
                "/security/actions/",
                json!({"action_type": "set_mode", "payload": {"mode": "elevated"},
                       "reason": "test"}),
            )
            .await
            .expect(201);
        let path = format!("/security/actions/{}", filed.id());
        send(path, r#"{"status": "rejected", "status": "approved"}"#).await;
        send(
            "/security/actions/".to_string(),
            r#"{"action_type": "block_entity", "reason": "test", "payload":
               {"entity_type": "ip", "value": "198.51.100.1", "value": "203.0.113.7"}}"#,
        )
        .await;
        send(
            "/security/policy/".to_string(),
            r#"{"auto_block": {"enabled": true, "enabled": false}}"#,
        )
        .await;
        let actions = app.admin_get("/security/actions/").await.expect(200);
        assert_eq!(actions.items().len(), 1, "{}", actions.text);
        assert_eq!(actions.items()[0]["status"], "pending");
        let policy = app.admin_get("/security/policy/").await.expect(200);
        assert_eq!(policy.body["version"], 1, "{}", policy.text);

        send(
            "/security/tokens".to_string(),
            r#"{"name": "dk2", "role": "viewer", "extra": {"a": 1, "b": [{"c": 1}], "a": 2}}"#,
        )
        .await;
        app.admin_post(
            "/security/tokens",
            json!({"name": "dk3", "role": "viewer"}),
        )
        .await
        .expect(201);
    }

    async fn a_body_over_the_limit_is_a_too_large_problem(app: TestApp) {
        let token = app.admin_token.clone();
        let body = json!({"entity_type": "ip", "value": "203.0.113.7",
                          "reason": "x".repeat(70 * 1024)});
        let reply = app
            .send_raw(
                Method::POST,
                BLOCKS,
                Some(&token),
                Some("application/json"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        assert_problem(reply, 413);

        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let event = json!({"event_type": "scan", "source_ip": "203.0.113.7",
                           "payload": {"blob": "A".repeat(65 * 1024)}});
        assert_problem(app.post_event(&key, event).await, 413);

        let just_under = json!({"entity_type": "ip", "value": "203.0.113.7",
                                "reason": "x".repeat(900)});
        app.admin_post(BLOCKS, just_under).await.expect(201);
    }

    async fn a_compressed_body_is_an_unsupported_media_type_problem(app: TestApp) {
        let gzip_magic = vec![0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00];
        for (path, content_type) in [
            (BLOCKS, "application/json"),
            ("/security/policy/blocks/import", "application/x-ndjson"),
        ] {
            let url = format!("{}{path}", app.base_url);
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(&app.admin_token)
                .header("content-type", content_type)
                .header("content-encoding", "gzip")
                .body(gzip_magic.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 415, "{path}");
            let media = response.headers()["content-type"].to_str().unwrap().to_string();
            assert_eq!(media, "application/problem+json", "{path}");
        }
        let list = app.admin_get("/security/policy/blocks?active=false").await.expect(200);
        assert!(list.items().is_empty(), "{}", list.text);
    }

    async fn a_body_that_is_not_json_is_an_unsupported_media_type_problem(app: TestApp) {
        let token = app.admin_token.clone();
        let body = br#"{"entity_type": "ip", "value": "203.0.113.7", "reason": "x"}"#.to_vec();
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let reply = app
                .send_raw(
                    Method::POST,
                    BLOCKS,
                    Some(&token),
                    content_type,
                    body.clone(),
                )
                .await;
            assert_problem(reply, 415);
        }
        let with_charset = app
            .send_raw(
                Method::POST,
                BLOCKS,
                Some(&token),
                Some("application/json; charset=utf-8"),
                body,
            )
            .await;
        with_charset.expect(201);
    }

    async fn a_bad_limit_or_cursor_is_a_bad_request_problem(app: TestApp) {
        let lists = [
            BLOCKS,
            "/security/actions/",
            "/security/honeypot/instances",
            "/security/honeypot/events",
            "/security/audit",
        ];
        let queries = [
            "limit=0",
            "limit=1001",
            "limit=abc",
            "limit=-1",
            "limit=1.5",
            "limit=99999999999999999999",
            "cursor=garbage",
            "cursor=k0",
            "cursor=k-5",
            "cursor=kabc",
            "cursor=%00",
        ];
        for list in lists {
            for query in queries {
                let reply = app.admin_get(&format!("{list}?{query}")).await;
                assert_problem(reply, 400);
            }
            app.admin_get(&format!("{list}?limit=1")).await.expect(200);
            app.admin_get(&format!("{list}?limit=1000"))
                .await
                .expect(200);
        }
    }

    async fn an_id_that_is_not_a_positive_integer_is_a_problem_not_a_crash(app: TestApp) {
        let token = app.admin_token.clone();
        let cases = [
            (Method::GET, "/security/actions/abc", 400),
            (Method::GET, "/security/actions/99999999999999999999", 400),
            (Method::GET, "/security/actions/1.5", 400),
            (Method::GET, "/security/actions/-1", 404),
            (Method::GET, "/security/actions/0", 404),
            (
                Method::POST,
                "/security/honeypot/instances/abc/deactivate",
                400,
            ),
            (
                Method::POST,
                "/security/honeypot/instances/0/rotate-key",
                404,
            ),
            (Method::POST, "/security/policy/blocks/1e3/deactivate", 400),
        ];
        for (method, path, status) in cases {
            let reply = app.request(method, path, Some(&token), None).await;
            assert_problem(reply, status);
        }
        let revoke = format!("/security/tokens/{}/revoke", encode("ä ö"));
        assert_problem(app.admin_post(&revoke, json!({})).await, 404);
    }

    async fn text_holding_a_nul_character_is_refused_alike_on_every_database(app: TestApp) {
        let nul = encode("\0");
        for query in [
            format!("{BLOCKS}?value={nul}"),
            format!("/security/audit?actor=a{nul}"),
        ] {
            assert_problem(app.admin_get(&query).await, 400);
        }

        let reason = app
            .block("ip", "203.0.113.7", json!({"reason": "nul \u{0} byte"}))
            .await;
        let reason = assert_problem(reason, 422);
        assert_eq!(reason.body["errors"][0]["field"], "reason");

        let place = json!({"name": "n", "honeypot_type": "ssh", "location": "a\u{0}b"});
        let place = assert_problem(
            app.admin_post("/security/honeypot/instances", place).await,
            422,
        );
        assert_eq!(place.body["errors"][0]["field"], "location");

        // Attack telemetry keeps it instead, as U+FFFD: see tests/api/ingest.rs.
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let typed = json!({"event_type": "auth_attempt", "source_ip": "203.0.113.7",
                           "username": "root", "payload": {"keys": ["a", "b\u{0}"]}});
        let typed = app.post_event(&key, typed).await.expect(201);
        assert_eq!(typed.body["payload"]["keys"][1], "b\u{fffd}");

        assert_eq!(app.admin_get(BLOCKS).await.items(), Vec::<Value>::new());
    }

    async fn a_bulk_record_holding_a_nul_character_is_kept_with_a_replacement(app: TestApp) {
        let (_, key) = app.honeypot("cowrie-vm", "ssh").await;
        let record = |input: &str| {
            json!({"eventid": "cowrie.command.input", "input": input, "session": "c768498d",
                   "src_ip": "203.0.113.21", "protocol": "telnet",
                   "timestamp": "2026-12-04T13:00:00.000000Z"})
            .to_string()
        };
        let body = format!("{}\n{}\n", record("uname -a"), record("echo \u{0}\u{0}"));

        let report = app.post_bulk(&key, "cowrie", body).await.expect(200);
        assert_eq!(report.body["accepted"], 2, "{}", report.text);
        assert_eq!(report.body["rejected"], json!([]), "{}", report.text);

        let events = app.admin_get("/security/honeypot/events").await.expect(200).items();
        let mut commands: Vec<&str> =
            events.iter().filter_map(|event| event["command"].as_str()).collect();
        commands.sort();
        assert_eq!(commands, ["echo \u{fffd}\u{fffd}", "uname -a"]);
    }

    async fn health_and_readiness_answer_without_credentials(app: TestApp) {
        for path in ["/healthz", "/readyz"] {
            let reply = app.request(Method::GET, path, None, None).await.expect(200);
            let content_type = reply.headers.get(CONTENT_TYPE).unwrap().to_str().unwrap();
            assert!(
                content_type.starts_with("application/json"),
                "{path}: {content_type}"
            );
        }
    }

    async fn the_openapi_document_lists_every_operation_of_the_contract(app: TestApp) {
        let reply = app
            .request(Method::GET, "/openapi.json", None, None)
            .await
            .expect(200);
        let document = &reply.body;
        let version = document["openapi"].as_str().expect("an `openapi` version");
        assert!(version.starts_with("3."), "{version}");
        assert!(document["info"]["title"].is_string());

        let documented = documented_operations();
        assert!(documented.len() >= 20, "API.md parsed: {documented:?}");
        let missing: Vec<_> = documented
            .iter()
            .filter(|(method, path)| document["paths"][path.as_str()][method.as_str()].is_null())
            .collect();
        assert!(missing.is_empty(), "not in /openapi.json: {missing:?}");
        assert!(document["components"]["schemas"]["Problem"].is_object());
    }
}

/// A database that cannot take a write for a moment (here another process
/// holds SQLite's write lock past the busy timeout) is no fault of the
/// request: 503 with `Retry-After`, and the retry succeeds once it frees.
#[tokio::test]
async fn a_write_the_database_cannot_take_in_time_gets_503_with_retry_after() {
    use sqlx::{Connection, Executor};

    let app = crate::support::TestApp::start(crate::support::Backend::Sqlite).await;
    let mut holder = sqlx::AnyConnection::connect(&app.database_url)
        .await
        .expect("a second connection to the file");
    holder
        .execute("BEGIN EXCLUSIVE")
        .await
        .expect("the write lock");

    let busy = app
        .block("ip", "198.51.100.77", json!({"reason": "lock test"}))
        .await
        .expect_problem(503);

    assert_eq!(
        busy.headers
            .get("retry-after")
            .map(|value| value.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(
        !busy.text.contains("locked"),
        "no driver text: {}",
        busy.text
    );
    holder.execute("ROLLBACK").await.expect("the lock is freed");
    holder.close().await.ok();
    assert_eq!(
        app.check_ip("198.51.100.77").await.body["blocked"],
        json!(false)
    );
    app.block("ip", "198.51.100.77", json!({"reason": "lock test"}))
        .await
        .expect(201);
}
