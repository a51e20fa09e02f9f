//! Tests for the role table of API.md: what each role may do (2xx), what it
//! may not (403 problem), and what a caller without working credentials
//! gets (401 problem).

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{Reply, TestApp};

const ROLES: [&str; 6] = [
    "viewer",
    "analyst",
    "policy_owner",
    "admin",
    "detector",
    "bouncer",
];

/// Roles that hold each capability row of the table.
const READERS: &[&str] = &["viewer", "analyst", "policy_owner", "admin", "detector"];
const EVERYONE: &[&str] = &ROLES;
const RESPONDERS: &[&str] = &["analyst", "policy_owner", "admin"];
const REQUESTERS: &[&str] = &["analyst", "policy_owner", "admin", "detector"];
const POLICY_OWNERS: &[&str] = &["policy_owner", "admin"];
const ADMINS: &[&str] = &["admin"];

/// Creates one token per role, named `{role}-principal`.
async fn role_tokens(app: &TestApp) -> Vec<(&'static str, String)> {
    let mut tokens = Vec::new();
    for role in ROLES {
        tokens.push((role, app.token(&format!("{role}-principal"), role).await));
    }
    tokens
}

/// Collects every cell of the table that disagrees, so one run names them all.
#[derive(Default)]
struct Verdicts(Vec<String>);

impl Verdicts {
    /// Records a mismatch unless `reply` is 2xx when `role` is in `allowed`,
    /// and a 403 problem when it is not.
    fn check(&mut self, role: &str, capability: &str, allowed: &[&str], reply: &Reply) {
        let status = reply.status.as_u16();
        if allowed.contains(&role) {
            if !(200..300).contains(&status) {
                self.0.push(format!(
                    "{role} should be allowed to {capability}, got {status}: {}",
                    reply.text
                ));
            }
        } else if status != 403 || !is_problem(reply, 403) {
            self.0.push(format!(
                "{role} should be refused {capability} with a 403 problem, got {status}: {}",
                reply.text
            ));
        }
    }

    #[track_caller]
    fn assert_all_agree(self) {
        assert!(self.0.is_empty(), "\n{}", self.0.join("\n"));
    }
}

/// Whether `reply` is an RFC 9457 problem with `status`.
fn is_problem(reply: &Reply, status: u16) -> bool {
    let content_type = reply
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    content_type == Some("application/problem+json")
        && reply.body["status"] == status
        && reply.body["title"].is_string()
        && reply.body["detail"].is_string()
}

/// Files a pending block request as `token` and returns its id.
async fn pending_request(app: &TestApp, token: &str, value: &str) -> i64 {
    let body = json!({
        "action_type": "block_entity",
        "payload": {"entity_type": "ip", "value": value},
        "reason": "test",
    });
    app.post("/security/actions/", token, body)
        .await
        .expect(201)
        .id()
}

/// Request `id` as it is stored now.
async fn action_status(app: &TestApp, id: i64) -> Value {
    app.admin_get(&format!("/security/actions/{id}"))
        .await
        .expect(200)
        .body["status"]
        .clone()
}

/// Sends `method path` with a raw `Authorization` header value, or none.
async fn with_authorization(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
) -> Reply {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", app.base_url));
    if let Some(authorization) = authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// One request per capability row that needs no setup, for 401 checks.
fn protected_endpoints() -> Vec<(Method, &'static str, Option<Value>)> {
    let block = json!({"entity_type": "ip", "value": "203.0.113.7", "reason": "test"});
    let action = json!({
        "action_type": "set_mode", "payload": {"mode": "elevated"}, "reason": "test",
    });
    vec![
        (Method::GET, "/security/policy/", None),
        (Method::GET, "/security/actions/", None),
        (Method::GET, "/security/honeypot/instances", None),
        (Method::GET, "/security/honeypot/events", None),
        (Method::GET, "/security/dashboard", None),
        (Method::GET, "/security/policy/blocks", None),
        (
            Method::GET,
            "/security/policy/blocks/check?ip=203.0.113.7",
            None,
        ),
        (Method::POST, "/security/policy/blocks", Some(block)),
        (Method::POST, "/security/actions/", Some(action)),
        (
            Method::POST,
            "/security/policy/",
            Some(json!({"mode": "lockdown"})),
        ),
        (Method::GET, "/security/tokens", None),
        (
            Method::POST,
            "/security/tokens",
            Some(json!({"name": "intruder", "role": "admin"})),
        ),
    ]
}

/// Asserts that nothing a refused caller asked for happened.
async fn assert_nothing_changed(app: &TestApp) {
    let policy = app.admin_get("/security/policy/").await.expect(200).body;
    assert_eq!(policy["version"], 1, "{policy}");
    assert_eq!(policy["mode"], "normal", "{policy}");
    let blocks = app.admin_get("/security/policy/blocks").await.expect(200);
    assert!(blocks.items().is_empty(), "{}", blocks.text);
    let actions = app.admin_get("/security/actions/").await.expect(200);
    assert!(actions.items().is_empty(), "{}", actions.text);
    let tokens = app.admin_get("/security/tokens").await.expect(200);
    let names: Vec<_> = tokens
        .items()
        .iter()
        .map(|token| token["name"].clone())
        .collect();
    assert!(!names.contains(&json!("intruder")), "{}", tokens.text);
}

backend_tests! {
    async fn every_role_but_the_bouncer_reads_the_security_state(app: TestApp) {
        let analyst = app.token("filer", "analyst").await;
        let request = pending_request(&app, &analyst, "203.0.113.7").await;
        let (honeypot, _) = app.honeypot("fra-ssh-01", "ssh").await;
        let reads = [
            ("read the policy", "/security/policy/".to_string()),
            (
                "read the policy history",
                "/security/policy/history".to_string(),
            ),
            ("list action requests", "/security/actions/".to_string()),
            (
                "read an action request",
                format!("/security/actions/{request}"),
            ),
            ("list honeypots", "/security/honeypot/instances".to_string()),
            (
                "list honeypot events",
                format!("/security/honeypot/events?honeypot_id={honeypot}"),
            ),
            ("read the dashboard", "/security/dashboard".to_string()),
        ];

        let mut verdicts = Verdicts::default();
        for (role, token) in role_tokens(&app).await {
            for (capability, path) in &reads {
                let reply = app.get(path, &token).await;
                verdicts.check(role, capability, READERS, &reply);
            }
        }
        verdicts.assert_all_agree();
    }

    async fn every_role_reads_the_blocklist(app: TestApp) {
        app.block("ip", "203.0.113.7", json!({})).await.expect(201);
        app.block("user", "mallory", json!({})).await.expect(201);
        let reads = [
            ("list blocks", "/security/policy/blocks"),
            (
                "list inactive blocks",
                "/security/policy/blocks?active=false",
            ),
            (
                "check an address",
                "/security/policy/blocks/check?ip=203.0.113.7",
            ),
            (
                "check a user",
                "/security/policy/blocks/check?entity_type=user&value=mallory",
            ),
        ];

        let mut verdicts = Verdicts::default();
        for (role, token) in role_tokens(&app).await {
            for (capability, path) in reads {
                let reply = app.get(path, &token).await;
                verdicts.check(role, capability, EVERYONE, &reply);
            }
            let check = app.get(reads[2].1, &token).await;
            if check.body["blocked"] != true {
                verdicts
                    .0
                    .push(format!("{role} was told 203.0.113.7 is not blocked"));
            }
        }
        verdicts.assert_all_agree();
    }

    async fn only_analysts_and_above_create_and_deactivate_blocks(app: TestApp) {
        let mut verdicts = Verdicts::default();
        for (n, (role, token)) in role_tokens(&app).await.into_iter().enumerate() {
            let value = format!("198.51.100.{}", n + 1);
            let body = json!({"entity_type": "ip", "value": value, "reason": "test"});
            let created = app.post("/security/policy/blocks", &token, body).await;
            verdicts.check(role, "create a block", RESPONDERS, &created);
            let listed = app
                .admin_get(&format!("/security/policy/blocks?value={value}"))
                .await
                .expect(200)
                .items();
            if listed.len() != usize::from(RESPONDERS.contains(&role)) {
                verdicts
                    .0
                    .push(format!("{role}'s block request left {listed:?}"));
            }

            let victim = format!("203.0.113.{}", n + 1);
            let block = app.block("ip", &victim, json!({})).await.expect(201).id();
            let path = format!("/security/policy/blocks/{block}/deactivate");
            let deactivated = app.post(&path, &token, json!({"reason": "test"})).await;
            verdicts.check(role, "deactivate a block", RESPONDERS, &deactivated);
            let blocked = app.check_ip(&victim).await.body["blocked"] == true;
            if blocked == RESPONDERS.contains(&role) {
                verdicts
                    .0
                    .push(format!("{role}'s deactivation left blocked = {blocked}"));
            }
        }
        verdicts.assert_all_agree();
    }

    async fn analysts_policy_owners_admins_and_detectors_file_action_requests(app: TestApp) {
        let mut verdicts = Verdicts::default();
        let mut filed = 0;
        for (n, (role, token)) in role_tokens(&app).await.into_iter().enumerate() {
            let body = json!({
                "action_type": "block_entity",
                "payload": {"entity_type": "ip", "value": format!("198.51.100.{}", n + 1)},
                "reason": "test",
            });
            let reply = app.post("/security/actions/", &token, body).await;
            verdicts.check(role, "file an action request", REQUESTERS, &reply);
            if reply.status.is_success() {
                filed += 1;
            }
        }
        verdicts.assert_all_agree();

        let listed = app
            .admin_get("/security/actions/")
            .await
            .expect(200)
            .items();
        assert_eq!(listed.len(), filed);
        assert_eq!(filed, REQUESTERS.len());
    }

    async fn only_analysts_and_above_approve_reject_and_execute_action_requests(app: TestApp) {
        let filer = app.token("filer", "analyst").await;
        let mut verdicts = Verdicts::default();
        for (n, (role, token)) in role_tokens(&app).await.into_iter().enumerate() {
            let to_approve = pending_request(&app, &filer, &format!("198.51.100.{}", n + 1)).await;
            let to_reject = pending_request(&app, &filer, &format!("198.51.101.{}", n + 1)).await;
            let to_execute = pending_request(&app, &filer, &format!("198.51.102.{}", n + 1)).await;
            app.admin_post(
                &format!("/security/actions/{to_execute}"),
                json!({"status": "approved"}),
            )
            .await
            .expect(200);

            let moves = [
                (
                    "approve an action request",
                    to_approve,
                    "approved",
                    "pending",
                ),
                ("reject an action request", to_reject, "rejected", "pending"),
                (
                    "execute an action request",
                    to_execute,
                    "executed",
                    "approved",
                ),
            ];
            for (capability, id, target, before) in moves {
                let path = format!("/security/actions/{id}");
                let reply = app.post(&path, &token, json!({"status": target})).await;
                verdicts.check(role, capability, RESPONDERS, &reply);
                let expected = if RESPONDERS.contains(&role) {
                    target
                } else {
                    before
                };
                let status = action_status(&app, id).await;
                if status != expected {
                    verdicts.0.push(format!(
                        "after {role} tried to {capability} it is {status}, not {expected}"
                    ));
                }
            }
        }
        verdicts.assert_all_agree();
    }

    async fn only_analysts_and_above_manage_honeypots(app: TestApp) {
        let mut verdicts = Verdicts::default();
        for (role, token) in role_tokens(&app).await {
            let body = json!({"name": format!("{role}-decoy"), "honeypot_type": "web"});
            let registered = app.post("/security/honeypot/instances", &token, body).await;
            verdicts.check(role, "register a honeypot", RESPONDERS, &registered);

            let (to_deactivate, _) = app.honeypot(&format!("{role}-old"), "ssh").await;
            let path = format!("/security/honeypot/instances/{to_deactivate}/deactivate");
            let deactivated = app.post(&path, &token, json!({})).await;
            verdicts.check(role, "deactivate a honeypot", RESPONDERS, &deactivated);

            let (to_rotate, key) = app.honeypot(&format!("{role}-rotating"), "ssh").await;
            let path = format!("/security/honeypot/instances/{to_rotate}/rotate-key");
            let rotated = app.post(&path, &token, json!({})).await;
            verdicts.check(role, "rotate a honeypot key", RESPONDERS, &rotated);
            if rotated.status.is_success() && rotated.body["api_key"] == key.as_str() {
                verdicts
                    .0
                    .push(format!("{role}'s rotation kept the old key"));
            }
        }
        verdicts.assert_all_agree();

        let listed = app
            .admin_get("/security/honeypot/instances?active=true&limit=1000")
            .await;
        let names: Vec<String> = listed
            .expect(200)
            .items()
            .iter()
            .filter_map(|instance| instance["name"].as_str().map(str::to_string))
            .collect();
        for role in ROLES {
            let allowed = RESPONDERS.contains(&role);
            let decoy = format!("{role}-decoy");
            let old = format!("{role}-old");
            assert_eq!(names.contains(&decoy), allowed, "{role}: {names:?}");
            assert_eq!(names.contains(&old), !allowed, "{role}: {names:?}");
        }
    }

    async fn only_policy_owners_and_admins_update_the_policy(app: TestApp) {
        let mut verdicts = Verdicts::default();
        for (n, (role, token)) in role_tokens(&app).await.into_iter().enumerate() {
            let changes = json!({"deescalation_cooldown_seconds": 1000 + n});
            let reply = app.post("/security/policy/", &token, changes).await;
            verdicts.check(role, "update the policy", POLICY_OWNERS, &reply);
        }
        verdicts.assert_all_agree();

        let policy = app.admin_get("/security/policy/").await.expect(200).body;
        assert_eq!(policy["version"], 1 + POLICY_OWNERS.len(), "{policy}");
        let last_owner = ROLES
            .iter()
            .rposition(|role| POLICY_OWNERS.contains(role))
            .unwrap();
        assert_eq!(policy["deescalation_cooldown_seconds"], 1000 + last_owner);
    }

    async fn only_admins_manage_tokens(app: TestApp) {
        let mut verdicts = Verdicts::default();
        for (role, token) in role_tokens(&app).await {
            let body = json!({"name": format!("made-by-{role}"), "role": "admin"});
            let created = app.post("/security/tokens", &token, body).await;
            verdicts.check(role, "create a token", ADMINS, &created);

            let listed = app.get("/security/tokens", &token).await;
            verdicts.check(role, "list tokens", ADMINS, &listed);

            let victim = format!("victim-of-{role}");
            let victim_token = app.token(&victim, "viewer").await;
            let revoked = app
                .post(
                    &format!("/security/tokens/{victim}/revoke"),
                    &token,
                    json!({}),
                )
                .await;
            verdicts.check(role, "revoke a token", ADMINS, &revoked);
            let still_works = app.get("/security/policy/", &victim_token).await.status == 200;
            if still_works == ADMINS.contains(&role) {
                verdicts.0.push(format!(
                    "{role}'s revocation left the token working: {still_works}"
                ));
            }
        }
        verdicts.assert_all_agree();

        let names: Vec<Value> = app
            .admin_get("/security/tokens")
            .await
            .expect(200)
            .items()
            .iter()
            .map(|token| token["name"].clone())
            .collect();
        for role in ROLES {
            let made = json!(format!("made-by-{role}"));
            assert_eq!(
                names.contains(&made),
                ADMINS.contains(&role),
                "{role}: {names:?}"
            );
        }
    }

    async fn a_request_without_a_token_is_unauthorized(app: TestApp) {
        for (method, path, body) in protected_endpoints() {
            let reply = app.request(method.clone(), path, None, body.as_ref()).await;
            assert_eq!(
                reply.status.as_u16(),
                401,
                "{method} {path}: {}",
                reply.text
            );
            reply.expect_problem(401);
        }

        assert_nothing_changed(&app).await;
    }

    async fn an_unknown_or_malformed_token_is_unauthorized(app: TestApp) {
        let unknown = format!("vh_{}", "0".repeat(64));
        for (method, path, body) in protected_endpoints() {
            let reply = app
                .request(method.clone(), path, Some(&unknown), body.as_ref())
                .await;
            assert_eq!(
                reply.status.as_u16(),
                401,
                "{method} {path}: {}",
                reply.text
            );
            let reply = reply.expect_problem(401);
            assert!(!reply.text.contains(&unknown), "{}", reply.text);
        }

        let admin = app.admin_token.clone();
        let near_misses = [
            format!("Basic {admin}"),
            admin.clone(),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            format!("Bearer {}", &admin[..admin.len() - 1]),
            format!("Bearer {admin}x"),
        ];
        for authorization in &near_misses {
            let reply =
                with_authorization(&app, Method::GET, "/security/policy/", Some(authorization))
                    .await;
            assert_eq!(
                reply.status.as_u16(),
                401,
                "{authorization:?}: {}",
                reply.text
            );
            let reply = reply.expect_problem(401);
            assert!(!reply.text.contains(&admin), "{}", reply.text);
        }
        let reply = with_authorization(
            &app,
            Method::GET,
            "/security/policy/",
            Some(&format!("bearer {admin}")),
        )
        .await;
        reply.expect(200);

        assert_nothing_changed(&app).await;
    }

    async fn a_revoked_token_stops_working_at_once(app: TestApp) {
        let token = app.token("leaver", "admin").await;
        app.get("/security/policy/", &token).await.expect(200);
        app.get("/security/tokens", &token).await.expect(200);

        app.admin_post("/security/tokens/leaver/revoke", json!({}))
            .await
            .expect(200);

        for (method, path, body) in protected_endpoints() {
            let reply = app
                .request(method.clone(), path, Some(&token), body.as_ref())
                .await;
            assert_eq!(
                reply.status.as_u16(),
                401,
                "{method} {path}: {}",
                reply.text
            );
            reply.expect_problem(401);
        }
        assert_nothing_changed(&app).await;
        app.admin_get("/security/policy/").await.expect(200);
    }
}
