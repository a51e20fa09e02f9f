//! The policy: its defaults, partial updates that merge into nested objects,
//! optimistic concurrency, validation of the whole document, and the history
//! and audit trail of each change.

use serde_json::{json, Value};

use crate::support::{Reply, TestApp};

/// The policy API.md documents for a fresh deployment, without its stamp.
fn documented_defaults() -> Value {
    json!({
        "mode": "normal",
        "auto_escalation_enabled": true,
        "escalation_thresholds": {"window_seconds": 300, "elevated": 20, "lockdown": 200},
        "deescalation_cooldown_seconds": 1800,
        "rate_limits": {
            "normal": {"requests_per_minute": 6000, "burst": 600},
            "elevated": {"requests_per_minute": 1200, "burst": 120},
            "lockdown": {"requests_per_minute": 120, "burst": 20}
        },
        "auto_block": {
            "enabled": true,
            "threshold_events": 5,
            "window_seconds": 600,
            "block_seconds": 3600,
            "repeat_multiplier": 2.0,
            "max_block_seconds": 604800
        },
        "auto_approve": {
            "normal": [], "elevated": ["heimdall"], "lockdown": ["heimdall", "system"]
        },
        "require_distinct_approver": true,
        "allowlist": ["127.0.0.0/8", "::1/128"]
    })
}

/// The writable fields of a policy answer, without version and stamp.
fn settings(policy: &Value) -> Value {
    let mut settings = policy.clone();
    let object = settings.as_object_mut().expect("a policy object");
    for stamp in ["version", "updated_at", "updated_by"] {
        object.remove(stamp);
    }
    settings
}

async fn current_policy(app: &TestApp) -> Value {
    app.admin_get("/security/policy/").await.expect(200).body
}

/// Asserts a 422 whose `errors` name `field`.
#[track_caller]
fn assert_invalid(reply: Reply, field: &str) {
    let reply = reply.expect_problem(422);
    let named = reply.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {}", reply.text))
        .iter()
        .any(|error| error["field"] == field);
    assert!(named, "{field} not named in {}", reply.text);
}

backend_tests! {
    async fn a_new_deployment_has_the_documented_default_policy(app: TestApp) {
        let policy = current_policy(&app).await;

        let mut expected = documented_defaults();
        expected["version"] = json!(1);
        expected["updated_at"] = json!(app.now().to_string());
        expected["updated_by"] = json!("bootstrap");
        for (field, value) in expected.as_object().expect("an object") {
            assert_eq!(&policy[field], value, "{field} in {policy}");
        }
    }

    async fn a_partial_update_changes_only_the_fields_sent(app: TestApp) {
        let before = current_policy(&app).await;
        app.clock.advance_seconds(10);

        let updated = app
            .update_policy(json!({"mode": "elevated", "require_distinct_approver": false}))
            .await
            .expect(200);

        let mut expected = settings(&before);
        expected["mode"] = json!("elevated");
        expected["require_distinct_approver"] = json!(false);
        assert_eq!(settings(&updated.body), expected);
        assert_eq!(updated.body["version"], 2);
        assert_eq!(updated.body["updated_by"], "admin");
        assert_eq!(updated.body["updated_at"], json!(app.now().to_string()));
        assert_eq!(current_policy(&app).await, updated.body);
    }

    async fn a_nested_partial_update_keeps_the_other_nested_fields(app: TestApp) {
        let updated = app
            .update_policy(json!({"auto_block": {"block_seconds": 7200}}))
            .await
            .expect(200);
        let mut expected = documented_defaults();
        expected["auto_block"]["block_seconds"] = json!(7200);
        assert_eq!(settings(&updated.body), expected);
        assert_eq!(updated.body["version"], 2);

        let updated = app
            .update_policy(json!({"rate_limits": {"elevated": {"burst": 150}}}))
            .await
            .expect(200);
        expected["rate_limits"]["elevated"]["burst"] = json!(150);
        assert_eq!(settings(&updated.body), expected);
        assert_eq!(updated.body["version"], 3);

        let updated = app
            .update_policy(json!({
                "escalation_thresholds": {"lockdown": 500},
                "auto_approve": {"normal": ["heimdall"]}
            }))
            .await
            .expect(200);
        expected["escalation_thresholds"]["lockdown"] = json!(500);
        expected["auto_approve"]["normal"] = json!(["heimdall"]);
        assert_eq!(settings(&updated.body), expected);
        assert_eq!(updated.body["version"], 4);
        assert_eq!(settings(&current_policy(&app).await), expected);
    }

    async fn a_list_in_an_update_replaces_the_whole_list(app: TestApp) {
        let updated = app
            .update_policy(json!({"auto_approve": {"lockdown": ["system"]}}))
            .await
            .expect(200);
        assert_eq!(
            updated.body["auto_approve"],
            json!({"normal": [], "elevated": ["heimdall"], "lockdown": ["system"]})
        );

        let updated = app
            .update_policy(json!({"allowlist": ["127.0.0.0/8"]}))
            .await
            .expect(200);
        assert_eq!(updated.body["allowlist"], json!(["127.0.0.0/8"]));
    }

    async fn allowlist_entries_are_stored_canonically(app: TestApp) {
        let updated = app
            .update_policy(json!({
                "allowlist": ["127.0.0.0/8", "::1/128", "2001:DB8:0::/32", "::ffff:192.0.2.0/120"]
            }))
            .await
            .expect(200);

        assert_eq!(
            updated.body["allowlist"],
            json!(["127.0.0.0/8", "::1/128", "2001:db8::/32", "192.0.2.0/24"])
        );
    }

    async fn an_update_at_a_stale_version_is_a_conflict_and_changes_nothing(app: TestApp) {
        let updated = app
            .update_policy(json!({"expected_version": 1, "mode": "elevated"}))
            .await
            .expect(200);
        assert_eq!(updated.body["version"], 2);

        for stale in [1, 3, 99] {
            app.update_policy(json!({"expected_version": stale, "mode": "lockdown"}))
                .await
                .expect_problem(409);
            assert_eq!(current_policy(&app).await, updated.body);
        }

        let next = app
            .update_policy(json!({"expected_version": 2, "mode": "lockdown"}))
            .await
            .expect(200);
        assert_eq!(next.body["version"], 3);
        assert_eq!(next.body["mode"], "lockdown");
    }

    async fn of_two_concurrent_updates_at_one_version_exactly_one_wins(app: TestApp) {
        let (elevated, lockdown) = tokio::join!(
            app.update_policy(json!({"expected_version": 1, "mode": "elevated"})),
            app.update_policy(json!({"expected_version": 1, "mode": "lockdown"})),
        );

        let mut statuses = [elevated.status.as_u16(), lockdown.status.as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "{} / {}", elevated.text, lockdown.text);
        let winner = if elevated.status == 200 { elevated } else { lockdown };
        assert_eq!(current_policy(&app).await, winner.body);
        assert_eq!(winner.body["version"], 2);
        let history = app.admin_get("/security/policy/history").await.expect(200);
        assert_eq!(history.items().len(), 2, "{}", history.text);
    }

    async fn an_expected_version_that_is_not_a_positive_integer_is_invalid(app: TestApp) {
        let before = current_policy(&app).await;

        for version in [json!("1"), json!(0), json!(-1), json!(1.5), json!(null)] {
            let reply = app
                .update_policy(json!({"expected_version": version, "mode": "elevated"}))
                .await;
            assert_invalid(reply, "expected_version");
        }

        assert_eq!(current_policy(&app).await, before);
    }

    async fn an_update_that_names_no_policy_field_is_invalid_and_makes_no_version(app: TestApp) {
        let before = current_policy(&app).await;

        for body in [json!({}), json!({"expected_version": 1})] {
            let reply = app.update_policy(body.clone()).await.expect_problem(422);
            let detail = &reply.body["errors"][0];
            assert_eq!(detail["field"], "body", "{body}: {}", reply.text);
            assert_eq!(
                detail["message"], "name at least one policy field to change",
                "{body}: {}",
                reply.text
            );
        }

        assert_eq!(current_policy(&app).await, before);
        let history = app.admin_get("/security/policy/history").await.expect(200);
        assert_eq!(history.items().len(), 1, "{}", history.text);
    }

    async fn an_invalid_policy_is_refused_as_a_whole_and_changes_nothing(app: TestApp) {
        let before = current_policy(&app).await;
        let cases = [
            (json!({"escalation_thresholds": {"lockdown": 20}}), "escalation_thresholds.lockdown"),
            (json!({"escalation_thresholds": {"lockdown": 5}}), "escalation_thresholds.lockdown"),
            (json!({"escalation_thresholds": {"elevated": 200}}), "escalation_thresholds.lockdown"),
            (
                json!({"escalation_thresholds": {"window_seconds": 0}}),
                "escalation_thresholds.window_seconds",
            ),
            (json!({"escalation_thresholds": {"elevated": 0}}), "escalation_thresholds.elevated"),
            (
                json!({"rate_limits": {"normal": {"requests_per_minute": 0}}}),
                "rate_limits.normal.requests_per_minute",
            ),
            (
                json!({"rate_limits": {"elevated": {"requests_per_minute": -60}}}),
                "rate_limits.elevated.requests_per_minute",
            ),
            (json!({"rate_limits": {"lockdown": {"burst": 0}}}), "rate_limits.lockdown.burst"),
            (json!({"auto_block": {"threshold_events": 0}}), "auto_block.threshold_events"),
            (json!({"auto_block": {"window_seconds": -1}}), "auto_block.window_seconds"),
            (json!({"auto_block": {"block_seconds": 0}}), "auto_block.block_seconds"),
            (json!({"auto_block": {"max_block_seconds": 60}}), "auto_block.max_block_seconds"),
            (
                json!({"auto_block": {"max_block_seconds": 10_000_000_000_i64}}),
                "auto_block.max_block_seconds",
            ),
            (json!({"auto_block": {"repeat_multiplier": 0.5}}), "auto_block.repeat_multiplier"),
            (json!({"auto_block": {"repeat_multiplier": 0}}), "auto_block.repeat_multiplier"),
            (json!({"auto_block": {"repeat_multiplier": -2.0}}), "auto_block.repeat_multiplier"),
            (json!({"deescalation_cooldown_seconds": -1}), "deescalation_cooldown_seconds"),
            (
                json!({"mode": "lockdown", "auto_block": {"repeat_multiplier": 0.9}}),
                "auto_block.repeat_multiplier",
            ),
            (
                json!({"auto_block": {"block_seconds": 7200, "max_block_seconds": 3600}}),
                "auto_block.max_block_seconds",
            ),
        ];
        for (changes, field) in cases {
            let reply = app.update_policy(changes.clone()).await;
            assert_invalid(reply, field);
            assert_eq!(current_policy(&app).await, before, "after {changes}");
        }

        let history = app.admin_get("/security/policy/history").await.expect(200);
        assert_eq!(history.items().len(), 1, "{}", history.text);
    }

    async fn every_invalid_field_is_named_at_once(app: TestApp) {
        let reply = app
            .update_policy(json!({
                "escalation_thresholds": {"lockdown": 10},
                "rate_limits": {"normal": {"burst": 0}},
                "auto_block": {"repeat_multiplier": 0.5}
            }))
            .await
            .expect_problem(422);

        let mut fields: Vec<&str> = reply.body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|error| error["field"].as_str())
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "auto_block.repeat_multiplier",
                "escalation_thresholds.lockdown",
                "rate_limits.normal.burst"
            ]
        );
        assert_eq!(current_policy(&app).await["version"], 1);
    }

    async fn values_of_the_wrong_type_are_invalid_and_change_nothing(app: TestApp) {
        let before = current_policy(&app).await;
        let cases = [
            (json!({"mode": "panic"}), "mode"),
            (json!({"mode": null}), "mode"),
            (json!({"auto_escalation_enabled": "yes"}), "auto_escalation_enabled"),
            (json!({"auto_block": {"block_seconds": "3d"}}), "auto_block.block_seconds"),
            (json!({"auto_block": {"block_seconds": 1.5}}), "auto_block.block_seconds"),
            (json!({"auto_block": {"block_seconds": u64::MAX}}), "auto_block.block_seconds"),
            (json!({"auto_block": {"enabled": null}}), "auto_block.enabled"),
            (json!({"auto_approve": {"normal": ["bob"]}}), "auto_approve.normal[0]"),
            (json!({"allowlist": ["127.0.0.0/8", "localhost"]}), "allowlist[1]"),
            (json!({"allowlist": ["127.0.0.1/8"]}), "allowlist[0]"),
        ];
        for (changes, field) in cases {
            let reply = app.update_policy(changes.clone()).await;
            assert_invalid(reply, field);
            assert_eq!(current_policy(&app).await, before, "after {changes}");
        }
    }

    async fn unknown_fields_are_invalid_and_change_nothing(app: TestApp) {
        let before = current_policy(&app).await;
        let cases = [
            (json!({"modee": "elevated"}), "modee"),
            (json!({"mode": "elevated", "version": 7}), "version"),
            (json!({"updated_by": "mallory"}), "updated_by"),
            (json!({"auto_block": {"block_secs": 60}}), "block_secs"),
            (json!({"rate_limits": {"normal": {"rpm": 60}}}), "rpm"),
            (json!({"rate_limits": {"panic": {"burst": 1}}}), "panic"),
        ];
        for (changes, field) in cases {
            let reply = app.update_policy(changes.clone()).await.expect_problem(422);
            assert!(reply.body["errors"].is_array(), "{changes}: {}", reply.text);
            assert!(reply.text.contains(field), "{changes}: {}", reply.text);
            assert_eq!(current_policy(&app).await, before, "after {changes}");
        }
    }

    async fn the_history_lists_each_version_newest_first_with_its_changes(app: TestApp) {
        let owner = app.token("tyr-owner", "policy_owner").await;
        let start = app.now();
        app.clock.advance_seconds(10);
        app.post("/security/policy/", &owner, json!({"mode": "elevated"}))
            .await
            .expect(200);
        let first_change = app.now();
        app.clock.advance_seconds(10);
        let latest = app
            .update_policy(json!({"auto_block": {"block_seconds": 7200}}))
            .await
            .expect(200);

        let history = app.admin_get("/security/policy/history").await.expect(200);
        assert_eq!(history.body["next_cursor"], Value::Null);
        let items = history.items();
        let versions: Vec<&Value> = items.iter().map(|item| &item["version"]).collect();
        assert_eq!(versions, [&json!(3), &json!(2), &json!(1)]);

        let mut old_auto_block = documented_defaults()["auto_block"].clone();
        let newest = &items[0];
        assert_eq!(newest["changed_by"], "admin");
        assert_eq!(newest["changed_at"], json!(app.now().to_string()));
        assert_eq!(
            newest["changes"]["auto_block"]["old"]["block_seconds"],
            old_auto_block["block_seconds"]
        );
        old_auto_block["block_seconds"] = json!(7200);
        assert_eq!(
            newest["changes"],
            json!({"auto_block": {"old": documented_defaults()["auto_block"],
                                  "new": old_auto_block}})
        );
        assert_eq!(newest["policy"], settings(&latest.body));

        let middle = &items[1];
        assert_eq!(middle["changed_by"], "tyr-owner");
        assert_eq!(middle["changed_at"], json!(first_change.to_string()));
        assert_eq!(middle["changes"], json!({"mode": {"old": "normal", "new": "elevated"}}));

        let oldest = &items[2];
        assert_eq!(oldest["changed_by"], "bootstrap");
        assert_eq!(oldest["changed_at"], json!(start.to_string()));
        assert_eq!(oldest["policy"], documented_defaults());

        let page = app.admin_get("/security/policy/history?limit=2").await.expect(200);
        let cursor = page.body["next_cursor"].as_str().expect("a cursor").to_string();
        let rest = app
            .admin_get(&format!("/security/policy/history?limit=2&cursor={cursor}"))
            .await
            .expect(200);
        let rest_versions: Vec<Value> =
            rest.items().iter().map(|item| item["version"].clone()).collect();
        assert_eq!(rest_versions, [json!(1)]);
    }

    async fn a_refused_update_leaves_no_history(app: TestApp) {
        app.update_policy(json!({"expected_version": 5, "mode": "elevated"}))
            .await
            .expect_problem(409);
        app.update_policy(json!({"auto_block": {"repeat_multiplier": 0.5}}))
            .await
            .expect_problem(422);

        let history = app.admin_get("/security/policy/history").await.expect(200);
        assert_eq!(history.items().len(), 1, "{}", history.text);
        let audit = app.admin_get("/security/audit?kind=policy.updated").await.expect(200);
        assert!(audit.items().is_empty(), "{}", audit.text);
    }

    async fn a_policy_update_is_recorded_in_the_audit_log(app: TestApp) {
        app.clock.advance_seconds(5);
        app.update_policy(json!({"mode": "lockdown"})).await.expect(200);

        let audit = app.admin_get("/security/audit?kind=policy.updated").await.expect(200);
        let entries = audit.items();
        assert_eq!(entries.len(), 1, "{}", audit.text);
        let entry = &entries[0];
        assert_eq!(entry["kind"], "policy.updated");
        assert_eq!(entry["actor"], "admin");
        assert_eq!(entry["subject_type"], "policy");
        assert_eq!(entry["occurred_at"], json!(app.now().to_string()));
        assert_eq!(entry["old_value"]["mode"], "normal", "{entry}");
        assert_eq!(
            entry["new_value"],
            json!({"mode": {"old": "normal", "new": "lockdown"}})
        );
    }

    async fn the_policy_owner_may_update_the_policy_and_a_viewer_may_read_it(app: TestApp) {
        let owner = app.token("tyr-owner", "policy_owner").await;
        let viewer = app.token("viewer-1", "viewer").await;

        let updated = app
            .post("/security/policy/", &owner, json!({"deescalation_cooldown_seconds": 600}))
            .await
            .expect(200);
        assert_eq!(updated.body["updated_by"], "tyr-owner");

        let read = app.get("/security/policy/", &viewer).await.expect(200);
        assert_eq!(read.body, updated.body);
        app.post("/security/policy/", &viewer, json!({"mode": "lockdown"}))
            .await
            .expect_problem(403);
        assert_eq!(current_policy(&app).await, updated.body);
    }
}
