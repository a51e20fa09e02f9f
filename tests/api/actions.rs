//! Tests for the action workflow: filing and validating requests, moving them
//! through their states, executing them exactly once, and what each step
//! leaves behind.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::support::{encode, instant, Reply, TestApp};

const ACTIONS: &str = "/security/actions/";

/// Files an action request with `token`.
async fn file(app: &TestApp, token: &str, action_type: &str, payload: Value) -> Reply {
    let body = json!({"action_type": action_type, "payload": payload, "reason": "test"});
    app.post(ACTIONS, token, body).await
}

/// Files a request to block the address `value` and returns its id.
async fn file_block(app: &TestApp, token: &str, value: &str) -> i64 {
    file_ip_block(app, token, value).await.expect(201).id()
}

/// Files a request to block the address `value`; the answer as it came.
async fn file_ip_block(app: &TestApp, token: &str, value: &str) -> Reply {
    let payload = json!({"entity_type": "ip", "value": value});
    file(app, token, "block_entity", payload).await
}

/// Asks to move request `id` to `status`.
async fn move_to(app: &TestApp, token: &str, id: i64, status: &str) -> Reply {
    app.post(&format!("{ACTIONS}{id}"), token, json!({"status": status}))
        .await
}

/// Approves request `id` as the bootstrap admin.
async fn approve(app: &TestApp, id: i64) -> Value {
    move_to(app, &app.admin_token, id, "approved")
        .await
        .expect(200)
        .body
}

/// Executes request `id` as the bootstrap admin.
async fn execute(app: &TestApp, id: i64) -> Value {
    move_to(app, &app.admin_token, id, "executed")
        .await
        .expect(200)
        .body
}

/// Request `id` as it is stored now.
async fn fetch(app: &TestApp, id: i64) -> Value {
    app.admin_get(&format!("{ACTIONS}{id}"))
        .await
        .expect(200)
        .body
}

/// The ids of an action list, in order.
async fn listed_ids(app: &TestApp, query: &str) -> Vec<i64> {
    app.admin_get(&format!("{ACTIONS}?{query}"))
        .await
        .expect(200)
        .items()
        .iter()
        .map(|item| item["id"].as_i64().expect("an id"))
        .collect()
}

/// Audit entries of `kind` about the subject with id `subject_id`.
async fn audit_entries(app: &TestApp, kind: &str, subject_id: i64) -> Vec<Value> {
    app.admin_get(&format!("/security/audit?kind={kind}&limit=1000"))
        .await
        .expect(200)
        .items()
        .into_iter()
        .filter(|entry| entry["subject_id"] == json!(subject_id.to_string()))
        .collect()
}

/// Every audit entry of `kind`.
async fn audit_count(app: &TestApp, kind: &str) -> usize {
    app.admin_get(&format!("/security/audit?kind={kind}&limit=1000"))
        .await
        .expect(200)
        .items()
        .len()
}

/// Blocks of `value`, active or inactive.
async fn blocks_of(app: &TestApp, value: &str, active: bool) -> Vec<Value> {
    let path = format!(
        "/security/policy/blocks?value={}&active={active}",
        encode(value)
    );
    app.admin_get(&path).await.expect(200).items()
}

/// Asserts a 422 problem with an `errors` entry whose field is under `payload`.
#[track_caller]
fn assert_payload_error(reply: Reply, case: &str) {
    assert_eq!(reply.status.as_u16(), 422, "{case}: {}", reply.text);
    let reply = reply.expect_problem(422);
    let errors = reply.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: no errors in {}", reply.text));
    let under_payload = errors.iter().any(|error| {
        error["field"]
            .as_str()
            .is_some_and(|field| field.starts_with("payload"))
    });
    assert!(
        under_payload,
        "{case}: no field under payload in {}",
        reply.text
    );
}

/// Asserts a 422 problem with an `errors` entry for `field` exactly.
#[track_caller]
fn assert_field_error(reply: Reply, field: &str) {
    let reply = reply.expect_problem(422);
    let errors = reply.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {}", reply.text));
    assert!(
        errors.iter().any(|error| error["field"] == field),
        "no error for {field} in {}",
        reply.text
    );
}

/// Asserts an instant written as RFC 3339 UTC with milliseconds and `Z`.
#[track_caller]
fn assert_api_instant(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    let shape = text.len() == 24 && text.ends_with('Z') && text.as_bytes()[19] == b'.';
    assert!(shape, "not RFC 3339 UTC with milliseconds: {text}");
}

/// Fires `status` transitions of request `id` at once, one per token, and
/// returns `(token name, reply)` pairs.
async fn race(
    app: &Arc<TestApp>,
    id: i64,
    status: &str,
    racers: &[(String, String)],
) -> Vec<(String, Reply)> {
    let start = Arc::new(Barrier::new(racers.len()));
    let mut tasks = JoinSet::new();
    for (name, token) in racers.iter().cloned() {
        let app = Arc::clone(app);
        let start = Arc::clone(&start);
        let status = status.to_string();
        tasks.spawn(async move {
            start.wait().await;
            let reply = move_to(&app, &token, id, &status).await;
            (name, reply)
        });
    }
    let mut replies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        replies.push(joined.expect("a racing request finishes"));
    }
    replies
}

/// Creates `count` analyst tokens named `{prefix}-{n}`.
async fn analysts(app: &TestApp, prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut tokens = Vec::new();
    for n in 0..count {
        let name = format!("{prefix}-{n}");
        let token = app.token(&name, "analyst").await;
        tokens.push((name, token));
    }
    tokens
}

backend_tests! {
    async fn a_block_request_with_a_missing_or_invalid_payload_is_refused(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let cases = [
            ("missing value", json!({"entity_type": "ip"})),
            ("missing entity_type", json!({"value": "203.0.113.7"})),
            (
                "not an address",
                json!({"entity_type": "ip", "value": "203.0.113.300"}),
            ),
            (
                "a word as ip",
                json!({"entity_type": "ip", "value": "localhost"}),
            ),
            (
                "unknown entity type",
                json!({"entity_type": "host", "value": "203.0.113.7"}),
            ),
            (
                "cidr with host bits",
                json!({"entity_type": "cidr", "value": "203.0.113.7/24"}),
            ),
            (
                "zero duration",
                json!({"entity_type": "ip", "value": "203.0.113.7", "duration_seconds": 0}),
            ),
            (
                "negative duration",
                json!({"entity_type": "ip", "value": "203.0.113.7", "duration_seconds": -60}),
            ),
            (
                "fractional duration",
                json!({"entity_type": "ip", "value": "203.0.113.7", "duration_seconds": 1.5}),
            ),
            (
                "duration as text",
                json!({"entity_type": "ip", "value": "203.0.113.7", "duration_seconds": "1h"}),
            ),
            (
                "duration past year 9999",
                json!({
                    "entity_type": "ip", "value": "203.0.113.7",
                    "duration_seconds": 400_000_000_000_i64,
                }),
            ),
            (
                "empty reason",
                json!({"entity_type": "ip", "value": "203.0.113.7", "reason": " "}),
            ),
            (
                "unknown payload field",
                json!({"entity_type": "ip", "value": "203.0.113.7", "ttl": 60}),
            ),
            ("payload not an object", json!("203.0.113.7")),
        ];

        for (case, payload) in cases {
            assert_payload_error(file(&app, &analyst, "block_entity", payload).await, case);
        }

        assert_eq!(listed_ids(&app, "").await, Vec::<i64>::new());
    }

    async fn an_unblock_request_names_a_block_id_or_an_entity(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let refused = [
            ("empty payload", json!({})),
            ("entity type without value", json!({"entity_type": "ip"})),
            ("value without entity type", json!({"value": "203.0.113.7"})),
            (
                "both forms",
                json!({"block_id": 1, "entity_type": "ip", "value": "203.0.113.7"}),
            ),
            ("zero block id", json!({"block_id": 0})),
            ("negative block id", json!({"block_id": -4})),
            ("block id as text", json!({"block_id": "seven"})),
            (
                "bad address",
                json!({"entity_type": "ip", "value": "not-an-ip"}),
            ),
            ("unknown field", json!({"block_id": 1, "force": true})),
        ];
        for (case, payload) in refused {
            assert_payload_error(file(&app, &analyst, "unblock_entity", payload).await, case);
        }

        let by_id = file(&app, &analyst, "unblock_entity", json!({"block_id": 7}))
            .await
            .expect(201);
        assert_eq!(by_id.body["payload"], json!({"block_id": 7}));
        let by_entity = file(
            &app,
            &analyst,
            "unblock_entity",
            json!({"entity_type": "ip", "value": "::FFFF:203.0.113.7"}),
        )
        .await
        .expect(201);
        assert_eq!(
            by_entity.body["payload"],
            json!({"entity_type": "ip", "value": "203.0.113.7"})
        );
        assert_eq!(listed_ids(&app, "").await, vec![by_entity.id(), by_id.id()]);
    }

    async fn a_set_mode_request_needs_a_known_mode(app: TestApp) {
        let owner = app.token("olga", "policy_owner").await;
        let refused = [
            ("unknown mode", json!({"mode": "panic"})),
            ("upper-case mode", json!({"mode": "LOCKDOWN"})),
            ("missing mode", json!({})),
            ("mode not a string", json!({"mode": 2})),
            (
                "unknown field",
                json!({"mode": "elevated", "until": "2030-01-01T00:00:00Z"}),
            ),
        ];
        for (case, payload) in refused {
            assert_payload_error(file(&app, &owner, "set_mode", payload).await, case);
        }

        let filed = file(&app, &owner, "set_mode", json!({"mode": "lockdown"}))
            .await
            .expect(201);
        assert_eq!(filed.body["payload"], json!({"mode": "lockdown"}));
        assert_eq!(filed.body["status"], "pending");
    }

    async fn refusals_put_an_before_a_vowel(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let body = json!({"action_type": "set_mode", "payload": {"mode": "elevated"},
                          "reason": "test", "source": "heimdall"});
        let spoofed = app.post(ACTIONS, &analyst, body).await.expect_problem(403);
        assert_eq!(
            spoofed.body["detail"],
            "an analyst token files requests as `human`, not `heimdall`"
        );

        let id = file(&app, &analyst, "set_mode", json!({"mode": "elevated"}))
            .await
            .expect(201)
            .id();
        let early = move_to(&app, &app.admin_token, id, "executed")
            .await
            .expect_problem(409);
        assert_eq!(
            early.body["detail"],
            format!("action request {id} is pending; only an approved request can become executed")
        );
        move_to(&app, &app.admin_token, id, "rejected").await.expect(200);
        let late = move_to(&app, &app.admin_token, id, "approved")
            .await
            .expect_problem(409);
        assert_eq!(
            late.body["detail"],
            format!("action request {id} is rejected; only a pending request can become approved")
        );
    }

    async fn an_update_policy_request_is_validated_like_a_policy_update(app: TestApp) {
        let owner = app.token("olga", "policy_owner").await;
        let refused = [
            ("nothing to change", json!({})),
            ("only an expected version", json!({"expected_version": 1})),
            (
                "lockdown threshold below elevated",
                json!({"escalation_thresholds": {"lockdown": 10}}),
            ),
            (
                "zero rate limit",
                json!({"rate_limits": {"normal": {"requests_per_minute": 0}}}),
            ),
            ("unknown mode", json!({"mode": "panic"})),
            ("bad allowlist entry", json!({"allowlist": ["10.0.0.1/8"]})),
            (
                "unknown auto-approve source",
                json!({"auto_approve": {"normal": ["odin"]}}),
            ),
            ("read-only field", json!({"version": 9})),
            ("unknown field", json!({"auto_blok": {"enabled": false}})),
            ("not an object", json!(["mode", "lockdown"])),
        ];
        for (case, payload) in refused {
            assert_payload_error(file(&app, &owner, "update_policy", payload).await, case);
        }
        assert_eq!(listed_ids(&app, "").await, Vec::<i64>::new());

        let changes = json!({"auto_block": {"threshold_events": 9}});
        let filed = file(&app, &owner, "update_policy", changes.clone())
            .await
            .expect(201);
        assert_eq!(filed.body["payload"], changes);
    }

    async fn an_unknown_action_type_or_field_is_refused(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let payload = json!({"entity_type": "ip", "value": "203.0.113.7"});

        let unknown_type = app
            .post(
                ACTIONS,
                &analyst,
                json!({"action_type": "quarantine", "payload": payload, "reason": "test"}),
            )
            .await;
        assert_field_error(unknown_type, "action_type");

        let unknown_field = app
            .post(
                ACTIONS,
                &analyst,
                json!({
                    "action_type": "block_entity", "payload": payload, "reason": "test",
                    "priority": "high",
                }),
            )
            .await;
        unknown_field.expect_problem(422);

        let missing_reason = app
            .post(
                ACTIONS,
                &analyst,
                json!({"action_type": "block_entity", "payload": payload}),
            )
            .await;
        missing_reason.expect_problem(422);

        let blank_reason = app
            .post(
                ACTIONS,
                &analyst,
                json!({"action_type": "block_entity", "payload": payload, "reason": "  "}),
            )
            .await;
        assert_field_error(blank_reason, "reason");

        let unknown_source = app
            .post(
                ACTIONS,
                &analyst,
                json!({
                    "action_type": "block_entity", "payload": payload, "reason": "test",
                    "source": "odin",
                }),
            )
            .await;
        assert_field_error(unknown_source, "source");

        assert_eq!(listed_ids(&app, "").await, Vec::<i64>::new());
    }

    async fn a_block_request_for_an_allowlisted_address_is_a_conflict(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let detector = app.token("sensor-1", "detector").await;
        let cases = [
            ("ip", "127.0.0.1"),
            ("ip", "::1"),
            ("ip", "::ffff:127.0.0.9"),
            ("cidr", "127.0.0.0/24"),
            ("cidr", "0.0.0.0/0"),
            ("cidr", "::/0"),
        ];
        for token in [&analyst, &detector] {
            for (entity_type, value) in cases {
                let reply = file(
                    &app,
                    token,
                    "block_entity",
                    json!({"entity_type": entity_type, "value": value}),
                )
                .await;
                assert_eq!(
                    reply.status.as_u16(),
                    409,
                    "{entity_type} {value}: {}",
                    reply.text
                );
                reply.expect_problem(409);
            }
        }

        app.update_policy(json!({"allowlist": ["127.0.0.0/8", "::1/128", "198.51.100.0/24"]}))
            .await
            .expect(200);
        let reply = file_ip_block(&app, &analyst, "198.51.100.77").await;
        reply.expect_problem(409);

        assert_eq!(listed_ids(&app, "").await, Vec::<i64>::new());
        assert_eq!(audit_count(&app, "block.created").await, 0);
    }

    async fn a_filed_request_is_pending_with_nothing_resolved(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;

        let filed = app
            .post(
                ACTIONS,
                &analyst,
                json!({
                    "action_type": "block_entity",
                    "payload": {"entity_type": "ip", "value": "2001:DB8:0:0::7",
                                "duration_seconds": 3600},
                    "reason": "12 failed ssh logins in 10 minutes",
                }),
            )
            .await
            .expect(201);

        let body = &filed.body;
        assert!(
            body["id"].as_i64().is_some_and(|id| id > 0),
            "{}",
            filed.text
        );
        assert_eq!(body["source"], "human");
        assert_eq!(body["action_type"], "block_entity");
        assert_eq!(
            body["payload"],
            json!({"entity_type": "ip", "value": "2001:db8::7", "duration_seconds": 3600})
        );
        assert_eq!(body["reason"], "12 failed ssh logins in 10 minutes");
        assert_eq!(body["status"], "pending");
        assert_eq!(body["requested_by"], "alice");
        assert_api_instant(&body["created_at"]);
        assert_eq!(instant(&body["created_at"]), app.now());
        for field in [
            "approved_by",
            "approved_at",
            "resolved_at",
            "resolution_notes",
            "executed_at",
            "result",
            "error",
        ] {
            assert_eq!(body[field], Value::Null, "{field}: {}", filed.text);
        }

        assert_eq!(fetch(&app, filed.id()).await, filed.body);
        assert_eq!(
            audit_entries(&app, "action_request.created", filed.id())
                .await
                .len(),
            1
        );
        assert!(blocks_of(&app, "2001:db8::7", true).await.is_empty());
    }

    async fn an_approved_request_records_its_approver_and_then_its_execution(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let id = file_block(&app, &analyst, "203.0.113.7").await;
        let filed_at = app.now();

        app.clock.advance_seconds(60);
        let approved_at = app.now();
        let approved = app
            .post(
                &format!("{ACTIONS}{id}"),
                &app.admin_token,
                json!({"status": "approved", "resolution_notes": "looks right"}),
            )
            .await
            .expect(200)
            .body;
        assert_eq!(approved["status"], "approved");
        assert_eq!(approved["approved_by"], "admin");
        assert_api_instant(&approved["approved_at"]);
        assert_eq!(instant(&approved["approved_at"]), approved_at);
        assert_eq!(instant(&approved["resolved_at"]), approved_at);
        assert_eq!(approved["resolution_notes"], "looks right");
        assert_eq!(instant(&approved["created_at"]), filed_at);
        for field in ["executed_at", "result", "error"] {
            assert_eq!(approved[field], Value::Null, "{field}: {approved}");
        }
        assert_eq!(fetch(&app, id).await, approved);
        assert!(blocks_of(&app, "203.0.113.7", true).await.is_empty());

        app.clock.advance_seconds(60);
        let executed_at = app.now();
        let executed = execute(&app, id).await;
        assert_eq!(executed["status"], "executed");
        assert_api_instant(&executed["executed_at"]);
        assert_eq!(instant(&executed["executed_at"]), executed_at);
        assert_eq!(instant(&executed["resolved_at"]), executed_at);
        assert_eq!(executed["approved_by"], "admin");
        assert_eq!(instant(&executed["approved_at"]), approved_at);
        assert_eq!(executed["resolution_notes"], "looks right");
        assert_eq!(executed["error"], Value::Null);
        let blocks = blocks_of(&app, "203.0.113.7", true).await;
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        assert_eq!(executed["result"], json!({"block_id": blocks[0]["id"]}));
        assert_eq!(fetch(&app, id).await, executed);

        for kind in ["action_request.approved", "action_request.executed"] {
            let entries = audit_entries(&app, kind, id).await;
            assert_eq!(entries.len(), 1, "{kind}: {entries:?}");
        }
    }

    async fn a_rejected_request_records_its_resolution_and_nothing_else(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let id = file_block(&app, &analyst, "203.0.113.7").await;

        app.clock.advance_seconds(30);
        let rejected = app
            .post(
                &format!("{ACTIONS}{id}"),
                &app.admin_token,
                json!({"status": "rejected", "resolution_notes": "our own scanner"}),
            )
            .await
            .expect(200)
            .body;

        assert_eq!(rejected["status"], "rejected");
        assert_eq!(instant(&rejected["resolved_at"]), app.now());
        assert_eq!(rejected["resolution_notes"], "our own scanner");
        for field in [
            "approved_by",
            "approved_at",
            "executed_at",
            "result",
            "error",
        ] {
            assert_eq!(rejected[field], Value::Null, "{field}: {rejected}");
        }
        assert_eq!(fetch(&app, id).await, rejected);
        assert_eq!(
            audit_entries(&app, "action_request.rejected", id)
                .await
                .len(),
            1
        );
        assert!(blocks_of(&app, "203.0.113.7", true).await.is_empty());
    }

    async fn every_transition_outside_the_workflow_is_a_conflict(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let pending = file_block(&app, &analyst, "203.0.113.1").await;
        let approved = file_block(&app, &analyst, "203.0.113.2").await;
        approve(&app, approved).await;
        let rejected = file_block(&app, &analyst, "203.0.113.3").await;
        move_to(&app, &app.admin_token, rejected, "rejected")
            .await
            .expect(200);
        let executed = file_block(&app, &analyst, "203.0.113.4").await;
        approve(&app, executed).await;
        execute(&app, executed).await;
        let failed = file(
            &app,
            &analyst,
            "unblock_entity",
            json!({"block_id": 999_999}),
        )
        .await
        .expect(201)
        .id();
        approve(&app, failed).await;
        assert_eq!(execute(&app, failed).await["status"], "failed");

        let every = ["pending", "approved", "rejected", "executed", "failed"];
        let refused: [(&str, i64, &[&str]); 5] = [
            ("pending", pending, &["executed", "pending", "failed"]),
            (
                "approved",
                approved,
                &["approved", "rejected", "pending", "failed"],
            ),
            ("rejected", rejected, &every),
            ("executed", executed, &every),
            ("failed", failed, &every),
        ];
        app.clock.advance_seconds(60);
        for (from, id, targets) in refused {
            let before = fetch(&app, id).await;
            assert_eq!(before["status"], from);
            for target in targets {
                let reply = move_to(&app, &app.admin_token, id, target).await;
                assert_eq!(
                    reply.status.as_u16(),
                    409,
                    "{from} → {target}: {}",
                    reply.text
                );
                reply.expect_problem(409);
                assert_eq!(
                    fetch(&app, id).await,
                    before,
                    "{from} → {target} changed it"
                );
            }
        }

        assert_eq!(blocks_of(&app, "203.0.113.2", true).await.len(), 0);
        assert_eq!(blocks_of(&app, "203.0.113.4", true).await.len(), 1);
        assert_eq!(audit_count(&app, "action_request.executed").await, 1);
    }

    async fn a_transition_of_an_unknown_request_is_not_found(app: TestApp) {
        app.admin_get(&format!("{ACTIONS}424242"))
            .await
            .expect_problem(404);
        for status in ["approved", "rejected", "executed", "pending", "failed"] {
            let reply = move_to(&app, &app.admin_token, 424_242, status).await;
            assert_eq!(reply.status.as_u16(), 404, "{status}: {}", reply.text);
            reply.expect_problem(404);
        }
    }

    async fn a_transition_to_an_unknown_status_is_refused(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let id = file_block(&app, &analyst, "203.0.113.7").await;
        let before = fetch(&app, id).await;

        assert_field_error(move_to(&app, &app.admin_token, id, "done").await, "status");
        let extra = app
            .post(
                &format!("{ACTIONS}{id}"),
                &app.admin_token,
                json!({"status": "approved", "approver": "someone else"}),
            )
            .await;
        extra.expect_problem(422);

        assert_eq!(fetch(&app, id).await, before);
    }

    async fn of_twenty_concurrent_approvals_exactly_one_wins(app: TestApp) {
        let app = Arc::new(app);
        let requester = app.token("requester", "analyst").await;
        let id = file_block(&app, &requester, "203.0.113.50").await;
        let approvers = analysts(&app, "approver", 20).await;

        let replies = race(&app, id, "approved", &approvers).await;

        let mut winners = Vec::new();
        for (name, reply) in replies {
            match reply.status.as_u16() {
                200 => {
                    assert_eq!(reply.body["approved_by"], name.as_str(), "{}", reply.text);
                    winners.push(name);
                }
                _ => {
                    reply.expect_problem(409);
                }
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let stored = fetch(&app, id).await;
        assert_eq!(stored["status"], "approved");
        assert_eq!(stored["approved_by"], winners[0].as_str());
        assert_eq!(
            audit_entries(&app, "action_request.approved", id)
                .await
                .len(),
            1
        );
    }

    async fn of_twenty_concurrent_executions_exactly_one_applies_the_effect(app: TestApp) {
        let app = Arc::new(app);
        let requester = app.token("requester", "analyst").await;
        let id = file_block(&app, &requester, "203.0.113.51").await;
        approve(&app, id).await;
        let executors = analysts(&app, "executor", 20).await;

        let replies = race(&app, id, "executed", &executors).await;

        let mut successes = Vec::new();
        for (name, reply) in replies {
            match reply.status.as_u16() {
                200 => {
                    assert_eq!(reply.body["status"], "executed", "{}", reply.text);
                    successes.push((name, reply.body));
                }
                _ => {
                    reply.expect_problem(409);
                }
            }
        }
        assert_eq!(successes.len(), 1, "successes: {successes:?}");
        let blocks = blocks_of(&app, "203.0.113.51", true).await;
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        assert_eq!(blocks[0]["action_request_id"], id);
        assert!(blocks_of(&app, "203.0.113.51", false).await.is_empty());
        assert_eq!(
            successes[0].1["result"],
            json!({"block_id": blocks[0]["id"]})
        );
        assert_eq!(fetch(&app, id).await, successes[0].1);
        assert_eq!(
            audit_entries(&app, "action_request.executed", id)
                .await
                .len(),
            1
        );
        assert_eq!(audit_count(&app, "action_request.executed").await, 1);
        assert_eq!(audit_count(&app, "block.created").await, 1);
        assert_eq!(audit_count(&app, "block.extended").await, 0);
    }

    async fn executing_a_block_request_creates_a_block_that_names_the_request(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let filed = file(
            &app,
            &analyst,
            "block_entity",
            json!({
                "entity_type": "ip", "value": "2001:DB8::7", "duration_seconds": 3600,
                "reason": "port scan",
            }),
        )
        .await
        .expect(201);
        approve(&app, filed.id()).await;

        app.clock.advance_seconds(10);
        let executed = execute(&app, filed.id()).await;

        let blocks = blocks_of(&app, "2001:db8::7", true).await;
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        let block = &blocks[0];
        assert_eq!(executed["result"], json!({"block_id": block["id"]}));
        assert_eq!(block["entity_type"], "ip");
        assert_eq!(block["value"], "2001:db8::7");
        assert_eq!(block["reason"], "port scan");
        assert_eq!(block["source"], "human");
        assert_eq!(block["created_by"], "alice");
        assert_eq!(block["action_request_id"], filed.id());
        assert_eq!(block["is_active"], true);
        assert_eq!(instant(&block["created_at"]), app.now());
        assert_eq!(
            instant(&block["expires_at"]),
            app.now().plus_seconds(3600).unwrap()
        );
        assert_eq!(app.check_ip("2001:db8::7").await.body["blocked"], true);
    }

    async fn a_block_request_without_its_own_reason_blocks_for_the_request_reason(app: TestApp) {
        let detector = app.token("sensor-1", "detector").await;
        let filed = app
            .post(
                ACTIONS,
                &detector,
                json!({
                    "action_type": "block_entity",
                    "payload": {"entity_type": "user", "value": "mallory"},
                    "reason": "credential stuffing",
                }),
            )
            .await
            .expect(201);
        assert_eq!(filed.body["source"], "heimdall");
        approve(&app, filed.id()).await;

        let executed = execute(&app, filed.id()).await;

        let path = "/security/policy/blocks?entity_type=user&value=mallory";
        let blocks = app.admin_get(path).await.expect(200).items();
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        assert_eq!(executed["result"], json!({"block_id": blocks[0]["id"]}));
        assert_eq!(blocks[0]["reason"], "credential stuffing");
        assert_eq!(blocks[0]["source"], "heimdall");
        assert_eq!(blocks[0]["created_by"], "sensor-1");
        assert_eq!(blocks[0]["expires_at"], Value::Null);
    }

    async fn executing_an_unblock_request_deactivates_the_block(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let by_id_block = app
            .block("ip", "203.0.113.60", json!({}))
            .await
            .expect(201)
            .id();
        let by_entity_block = app
            .block("cidr", "198.51.100.0/24", json!({}))
            .await
            .expect(201)
            .id();
        let by_id = file(
            &app,
            &analyst,
            "unblock_entity",
            json!({"block_id": by_id_block}),
        )
        .await
        .expect(201)
        .id();
        let by_entity = file(
            &app,
            &analyst,
            "unblock_entity",
            json!({"entity_type": "cidr", "value": "198.51.100.0/24"}),
        )
        .await
        .expect(201)
        .id();

        app.clock.advance_seconds(60);
        for (id, block_id) in [(by_id, by_id_block), (by_entity, by_entity_block)] {
            approve(&app, id).await;
            let executed = execute(&app, id).await;
            assert_eq!(executed["status"], "executed", "{executed}");
            assert_eq!(executed["result"], json!({"block_id": block_id}));
        }

        assert!(blocks_of(&app, "203.0.113.60", true).await.is_empty());
        assert!(blocks_of(&app, "198.51.100.0/24", true).await.is_empty());
        for value in ["203.0.113.60", "198.51.100.0/24"] {
            let inactive = blocks_of(&app, value, false).await;
            assert_eq!(inactive.len(), 1, "{inactive:?}");
            assert_eq!(inactive[0]["is_active"], false);
            assert_eq!(instant(&inactive[0]["deactivated_at"]), app.now());
            assert!(inactive[0]["deactivated_by"].is_string(), "{}", inactive[0]);
        }
        assert_eq!(app.check_ip("203.0.113.60").await.body["blocked"], false);
        assert_eq!(app.check_ip("198.51.100.9").await.body["blocked"], false);
    }

    async fn executing_a_set_mode_request_changes_the_mode_and_the_version(app: TestApp) {
        let owner = app.token("olga", "policy_owner").await;
        let filed = file(&app, &owner, "set_mode", json!({"mode": "elevated"}))
            .await
            .expect(201);
        assert_eq!(filed.body["source"], "tyr");
        approve(&app, filed.id()).await;
        let before = app.admin_get("/security/policy/").await.expect(200).body;
        assert_eq!(before["mode"], "normal");

        let executed = execute(&app, filed.id()).await;

        assert_eq!(executed["status"], "executed");
        assert!(executed["result"].is_object(), "{executed}");
        let after = app.admin_get("/security/policy/").await.expect(200).body;
        assert_eq!(after["mode"], "elevated");
        assert_eq!(after["version"], before["version"].as_i64().unwrap() + 1);
        assert_eq!(instant(&after["updated_at"]), app.now());
        for field in [
            "auto_approve",
            "allowlist",
            "auto_block",
            "require_distinct_approver",
        ] {
            assert_eq!(after[field], before[field], "{field} changed");
        }
    }

    async fn executing_an_update_policy_request_merges_the_change(app: TestApp) {
        let owner = app.token("olga", "policy_owner").await;
        let changes = json!({
            "auto_block": {"threshold_events": 9},
            "deescalation_cooldown_seconds": 900,
        });
        let id = file(&app, &owner, "update_policy", changes)
            .await
            .expect(201)
            .id();
        approve(&app, id).await;
        let before = app.admin_get("/security/policy/").await.expect(200).body;

        let executed = execute(&app, id).await;

        assert_eq!(executed["status"], "executed");
        let after = app.admin_get("/security/policy/").await.expect(200).body;
        assert_eq!(after["version"], before["version"].as_i64().unwrap() + 1);
        assert_eq!(after["auto_block"]["threshold_events"], 9);
        assert_eq!(
            after["auto_block"]["window_seconds"],
            before["auto_block"]["window_seconds"]
        );
        assert_eq!(after["deescalation_cooldown_seconds"], 900);
        assert_eq!(after["mode"], before["mode"]);
        assert_eq!(audit_count(&app, "policy.updated").await, 1);
    }

    async fn an_unblock_of_a_block_that_does_not_exist_fails_with_a_reason(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let id = file(
            &app,
            &analyst,
            "unblock_entity",
            json!({"block_id": 999_999}),
        )
        .await
        .expect(201)
        .id();
        let approved = approve(&app, id).await;

        app.clock.advance_seconds(60);
        let failed = execute(&app, id).await;

        assert_eq!(failed["status"], "failed");
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|error| !error.is_empty()),
            "{failed}"
        );
        assert_eq!(failed["result"], Value::Null);
        assert_eq!(failed["executed_at"], Value::Null);
        assert_eq!(instant(&failed["resolved_at"]), app.now());
        assert_eq!(failed["approved_by"], approved["approved_by"]);
        assert_eq!(failed["approved_at"], approved["approved_at"]);
        assert_eq!(fetch(&app, id).await, failed);
        assert_eq!(
            audit_entries(&app, "action_request.failed", id).await.len(),
            1
        );
        assert_eq!(audit_count(&app, "action_request.executed").await, 0);
    }

    async fn an_unblock_of_an_entity_without_an_active_block_fails(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let block = app
            .block("ip", "203.0.113.70", json!({}))
            .await
            .expect(201)
            .id();
        app.admin_post(
            &format!("/security/policy/blocks/{block}/deactivate"),
            json!({}),
        )
        .await
        .expect(200);
        let id = file(
            &app,
            &analyst,
            "unblock_entity",
            json!({"entity_type": "ip", "value": "203.0.113.70"}),
        )
        .await
        .expect(201)
        .id();
        approve(&app, id).await;

        let failed = execute(&app, id).await;

        assert_eq!(failed["status"], "failed");
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|error| !error.is_empty()),
            "{failed}"
        );
        assert_eq!(failed["result"], Value::Null);
    }

    async fn a_block_allowlisted_after_approval_fails_and_blocks_nothing(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let id = file_block(&app, &analyst, "203.0.113.7").await;
        approve(&app, id).await;
        app.update_policy(json!({"allowlist": ["127.0.0.0/8", "::1/128", "203.0.113.0/24"]}))
            .await
            .expect(200);

        let failed = execute(&app, id).await;

        assert_eq!(failed["status"], "failed");
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(error.contains("allowlist"), "{failed}");
        assert_eq!(failed["result"], Value::Null);
        assert_eq!(failed["executed_at"], Value::Null);
        assert!(blocks_of(&app, "203.0.113.7", true).await.is_empty());
        assert!(blocks_of(&app, "203.0.113.7", false).await.is_empty());
        assert_eq!(app.check_ip("203.0.113.7").await.body["blocked"], false);
        assert_eq!(audit_count(&app, "block.created").await, 0);
        assert_eq!(audit_count(&app, "action_request.executed").await, 0);
    }

    async fn a_policy_update_that_no_longer_applies_fails_and_changes_nothing(app: TestApp) {
        let owner = app.token("olga", "policy_owner").await;
        let changes = json!({
            "expected_version": 1,
            "require_distinct_approver": false,
            "auto_approve": {"normal": ["heimdall"]},
        });
        let id = file(&app, &owner, "update_policy", changes)
            .await
            .expect(201)
            .id();
        approve(&app, id).await;
        app.update_policy(json!({"deescalation_cooldown_seconds": 600}))
            .await
            .expect(200);
        let before = app.admin_get("/security/policy/").await.expect(200).body;

        let failed = execute(&app, id).await;

        assert_eq!(failed["status"], "failed");
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|error| !error.is_empty()),
            "{failed}"
        );
        assert_eq!(failed["result"], Value::Null);
        let after = app.admin_get("/security/policy/").await.expect(200).body;
        assert_eq!(after, before);
        assert_eq!(after["version"], 2);
        assert_eq!(after["require_distinct_approver"], true);
        assert_eq!(after["auto_approve"]["normal"], json!([]));
        assert_eq!(audit_count(&app, "policy.updated").await, 1);
    }

    async fn the_requester_cannot_approve_their_own_request_under_four_eyes(app: TestApp) {
        let alice = app.token("alice", "analyst").await;
        let bob = app.token("bob", "analyst").await;
        let id = file_block(&app, &alice, "203.0.113.7").await;
        let admins_own = file_block(&app, &app.admin_token, "203.0.113.8").await;

        move_to(&app, &alice, id, "approved")
            .await
            .expect_problem(403);
        move_to(&app, &app.admin_token, admins_own, "approved")
            .await
            .expect_problem(403);
        assert_eq!(fetch(&app, id).await["status"], "pending");
        assert_eq!(fetch(&app, admins_own).await["status"], "pending");
        assert!(audit_entries(&app, "action_request.approved", id)
            .await
            .is_empty());

        let approved = move_to(&app, &bob, id, "approved").await.expect(200).body;
        assert_eq!(approved["approved_by"], "bob");
        let approved = move_to(&app, &alice, admins_own, "approved")
            .await
            .expect(200)
            .body;
        assert_eq!(approved["approved_by"], "alice");
    }

    async fn the_requester_may_approve_their_own_request_without_four_eyes(app: TestApp) {
        app.update_policy(json!({"require_distinct_approver": false}))
            .await
            .expect(200);
        let alice = app.token("alice", "analyst").await;
        let id = file_block(&app, &alice, "203.0.113.7").await;

        let approved = move_to(&app, &alice, id, "approved").await.expect(200).body;
        assert_eq!(approved["status"], "approved");
        assert_eq!(approved["approved_by"], "alice");

        let executed = move_to(&app, &alice, id, "executed").await.expect(200).body;
        assert_eq!(executed["status"], "executed");
    }

    async fn a_request_cannot_claim_a_source_other_than_its_principals(app: TestApp) {
        let tokens = [
            ("analyst", app.token("alice", "analyst").await, "alice"),
            (
                "detector",
                app.token("sensor-1", "detector").await,
                "sensor-1",
            ),
            (
                "policy_owner",
                app.token("olga", "policy_owner").await,
                "olga",
            ),
            ("admin", app.admin_token.clone(), "admin"),
        ];
        let own_source = |role: &str| match role {
            "detector" => "heimdall",
            "policy_owner" => "tyr",
            _ => "human",
        };

        let mut filed = 0;
        for (role, token, name) in &tokens {
            for claimed in [
                None,
                Some("heimdall"),
                Some("tyr"),
                Some("human"),
                Some("system"),
            ] {
                let mut body = json!({
                    "action_type": "block_entity",
                    "payload": {"entity_type": "ip", "value": "203.0.113.7"},
                    "reason": "test",
                });
                if let Some(claimed) = claimed {
                    body["source"] = json!(claimed);
                }
                let reply = app.post(ACTIONS, token, body).await;
                let case = format!("{role} claiming {claimed:?}");
                if claimed.is_none_or(|claimed| claimed == own_source(role)) {
                    assert_eq!(reply.status.as_u16(), 201, "{case}: {}", reply.text);
                    assert_eq!(reply.body["source"], own_source(role), "{case}");
                    assert_eq!(reply.body["requested_by"], *name, "{case}");
                    filed += 1;
                } else {
                    assert_eq!(reply.status.as_u16(), 403, "{case}: {}", reply.text);
                    reply.expect_problem(403);
                }
            }
        }

        assert_eq!(listed_ids(&app, "limit=1000").await.len(), filed);
    }

    async fn a_source_the_policy_auto_approves_is_executed_at_once(app: TestApp) {
        app.update_policy(json!({"auto_approve": {"normal": ["heimdall"]}}))
            .await
            .expect(200);
        let detector = app.token("sensor-1", "detector").await;
        let analyst = app.token("alice", "analyst").await;

        let reply = app
            .post(ACTIONS, &detector, json!({
                "action_type": "block_entity",
                "payload": {"entity_type": "ip", "value": "198.51.100.20", "duration_seconds": 600},
                "reason": "12 failed ssh logins in 10 minutes",
            }))
            .await
            .expect(201);

        let request = &reply.body;
        assert_eq!(request["status"], "executed", "{}", reply.text);
        assert_eq!(request["source"], "heimdall");
        assert!(request["approved_by"].is_string(), "{}", reply.text);
        for field in ["approved_at", "executed_at", "resolved_at"] {
            assert_eq!(instant(&request[field]), app.now(), "{field}");
        }
        assert_eq!(request["error"], Value::Null);
        let blocks = blocks_of(&app, "198.51.100.20", true).await;
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        assert_eq!(request["result"], json!({"block_id": blocks[0]["id"]}));
        assert_eq!(blocks[0]["source"], "heimdall");
        assert_eq!(blocks[0]["action_request_id"], reply.id());
        assert_eq!(blocks[0]["reason"], "12 failed ssh logins in 10 minutes");
        assert_eq!(
            instant(&blocks[0]["expires_at"]),
            app.now().plus_seconds(600).unwrap()
        );
        assert_eq!(fetch(&app, reply.id()).await, reply.body);
        for kind in [
            "action_request.created",
            "action_request.approved",
            "action_request.executed",
        ] {
            assert_eq!(
                audit_entries(&app, kind, reply.id()).await.len(),
                1,
                "{kind}"
            );
        }

        let human = file_block(&app, &analyst, "198.51.100.21").await;
        assert_eq!(fetch(&app, human).await["status"], "pending");
        assert!(blocks_of(&app, "198.51.100.21", true).await.is_empty());
    }

    async fn auto_approval_never_lets_a_detector_change_the_policy_or_lift_a_block(app: TestApp) {
        app.update_policy(json!({"mode": "elevated"})).await.expect(200);
        let detector = app.token("sensor-1", "detector").await;
        let block = app
            .block("ip", "198.51.100.30", json!({"reason": "seen"}))
            .await
            .expect(201)
            .id();
        let before = app.admin_get("/security/policy/").await.expect(200).body;

        let rewrite = file(
            &app,
            &detector,
            "update_policy",
            json!({"require_distinct_approver": false, "allowlist": ["0.0.0.0/0"]}),
        )
        .await
        .expect(201);
        let unblock = file(&app, &detector, "unblock_entity", json!({"block_id": block}))
            .await
            .expect(201);
        let calm = file(&app, &detector, "set_mode", json!({"mode": "normal"}))
            .await
            .expect(201);
        let blocked = file_ip_block(&app, &detector, "198.51.100.31").await
        .expect(201);

        for filed in [&rewrite, &unblock, &calm] {
            assert_eq!(filed.body["status"], "pending", "{}", filed.text);
        }
        assert_eq!(blocked.body["status"], "executed", "{}", blocked.text);
        let after = app.admin_get("/security/policy/").await.expect(200).body;
        assert_eq!(after["version"], before["version"]);
        assert_eq!(app.check_ip("198.51.100.30").await.body["blocked"], json!(true));
    }

    async fn only_policy_roles_approve_or_execute_a_policy_change(app: TestApp) {
        let (analyst, owner) = (
            app.token("alice", "analyst").await,
            app.token("tyr", "policy_owner").await,
        );
        let second_owner = app.token("tyr-2", "policy_owner").await;
        let change = json!({"deescalation_cooldown_seconds": 60});
        let filed = file(&app, &analyst, "update_policy", change)
            .await
            .expect(201)
            .id();
        let mode = file(&app, &analyst, "set_mode", json!({"mode": "lockdown"}))
            .await
            .expect(201)
            .id();
        let other_analyst = app.token("bob", "analyst").await;

        for id in [filed, mode] {
            let refused = move_to(&app, &other_analyst, id, "approved")
                .await
                .expect_problem(403);
            assert!(refused.text.contains("policy_owner"), "{}", refused.text);
            assert_eq!(fetch(&app, id).await["status"], "pending");
        }
        move_to(&app, &owner, filed, "approved").await.expect(200);
        move_to(&app, &other_analyst, filed, "executed")
            .await
            .expect_problem(403);
        assert_eq!(fetch(&app, filed).await["status"], "approved");
        let executed = move_to(&app, &second_owner, filed, "executed").await.expect(200);

        assert_eq!(executed.body["status"], "executed", "{}", executed.text);
        let policy = app.admin_get("/security/policy/").await.expect(200).body;
        assert_eq!(policy["deescalation_cooldown_seconds"], 60);
        assert_eq!(policy["mode"], "normal");
    }

    async fn in_elevated_mode_heimdall_is_auto_approved_by_default(app: TestApp) {
        let detector = app.token("sensor-1", "detector").await;
        let analyst = app.token("alice", "analyst").await;
        let owner = app.token("olga", "policy_owner").await;

        let in_normal = file_block(&app, &detector, "198.51.100.30").await;
        assert_eq!(fetch(&app, in_normal).await["status"], "pending");
        assert!(blocks_of(&app, "198.51.100.30", true).await.is_empty());

        app.update_policy(json!({"mode": "elevated"}))
            .await
            .expect(200);
        let reply = file_ip_block(&app, &detector, "198.51.100.31").await
        .expect(201);
        assert_eq!(reply.body["status"], "executed", "{}", reply.text);
        let blocks = blocks_of(&app, "198.51.100.31", true).await;
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        assert_eq!(reply.body["result"], json!({"block_id": blocks[0]["id"]}));

        for (token, value) in [(&analyst, "198.51.100.32"), (&owner, "198.51.100.33")] {
            let id = file_block(&app, token, value).await;
            assert_eq!(fetch(&app, id).await["status"], "pending", "{value}");
            assert!(blocks_of(&app, value, true).await.is_empty(), "{value}");
        }
    }

    async fn an_auto_approved_request_that_cannot_be_applied_comes_back_failed(app: TestApp) {
        app.update_policy(json!({"auto_approve": {"normal": ["tyr"]}}))
            .await
            .expect(200);
        let owner = app.token("tyr", "policy_owner").await;

        let reply = file(&app, &owner, "unblock_entity", json!({"block_id": 999_999}))
            .await
            .expect(201);

        assert_eq!(reply.body["status"], "failed", "{}", reply.text);
        assert!(reply.body["error"].is_string(), "{}", reply.text);
        assert_eq!(reply.body["result"], Value::Null);
        assert_eq!(fetch(&app, reply.id()).await, reply.body);
    }

    async fn the_action_list_filters_by_status_source_and_type(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let detector = app.token("sensor-1", "detector").await;
        let owner = app.token("olga", "policy_owner").await;
        let human_block = file_block(&app, &analyst, "203.0.113.1").await;
        let heimdall_block = file_block(&app, &detector, "203.0.113.2").await;
        let tyr_mode = file(&app, &owner, "set_mode", json!({"mode": "elevated"}))
            .await
            .expect(201)
            .id();
        let rejected = file_block(&app, &analyst, "203.0.113.3").await;
        move_to(&app, &app.admin_token, rejected, "rejected")
            .await
            .expect(200);
        let failed = file(
            &app,
            &detector,
            "unblock_entity",
            json!({"block_id": 999_999}),
        )
        .await
        .expect(201)
        .id();
        approve(&app, failed).await;
        execute(&app, failed).await;

        let cases: [(&str, Vec<i64>); 13] = [
            (
                "",
                vec![failed, rejected, tyr_mode, heimdall_block, human_block],
            ),
            (
                "status=pending",
                vec![tyr_mode, heimdall_block, human_block],
            ),
            ("status=rejected", vec![rejected]),
            ("status=failed", vec![failed]),
            ("status=approved", vec![]),
            ("source=heimdall", vec![failed, heimdall_block]),
            ("source=tyr", vec![tyr_mode]),
            ("source=human", vec![rejected, human_block]),
            ("source=system", vec![]),
            (
                "action_type=block_entity",
                vec![rejected, heimdall_block, human_block],
            ),
            ("action_type=set_mode", vec![tyr_mode]),
            ("action_type=unblock_entity", vec![failed]),
            (
                "status=pending&source=human&action_type=block_entity",
                vec![human_block],
            ),
        ];
        for (query, expected) in cases {
            assert_eq!(listed_ids(&app, query).await, expected, "?{query}");
        }

        for query in ["status=done", "source=odin", "action_type=quarantine"] {
            let reply = app.admin_get(&format!("{ACTIONS}?{query}")).await;
            assert_eq!(reply.status.as_u16(), 400, "?{query}: {}", reply.text);
            reply.expect_problem(400);
        }
    }

    async fn one_request_reads_as_it_was_answered(app: TestApp) {
        let analyst = app.token("alice", "analyst").await;
        let viewer = app.token("vera", "viewer").await;
        let filed = file(&app, &analyst, "set_mode", json!({"mode": "lockdown"}))
            .await
            .expect(201);

        let read = app
            .get(&format!("{ACTIONS}{}", filed.id()), &viewer)
            .await
            .expect(200);

        assert_eq!(read.body, filed.body);
        app.get(&format!("{ACTIONS}{}", filed.id() + 1), &viewer)
            .await
            .expect_problem(404);
    }
}
