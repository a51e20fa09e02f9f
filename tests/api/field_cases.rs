//! Field cases from /work/shared/cases/field-cases.md, each asserting the
//! case's Expected values as written. Steps that use endpoints a later issue
//! adds (the bouncer decision stream, exports) belong to that tests.

use serde_json::{json, Value};

use crate::support::{Reply, TestApp};

/// The ids of the blocks an address check matched.
fn matched_ids(check: &Reply) -> Vec<i64> {
    check.body["matches"]
        .as_array()
        .unwrap_or_else(|| panic!("no matches in {}", check.text))
        .iter()
        .map(|block| block["id"].as_i64().expect("a block id"))
        .collect()
}

/// Every block, active or not, as the admin.
async fn all_blocks(app: &TestApp) -> Vec<Value> {
    let active = app.admin_get("/security/policy/blocks?active=true").await;
    let inactive = app.admin_get("/security/policy/blocks?active=false").await;
    let mut blocks = active.expect(200).items();
    blocks.extend(inactive.expect(200).items());
    blocks
}

/// A block request with the case's own reason.
async fn block(app: &TestApp, entity_type: &str, value: &str, reason: &str) -> Reply {
    let body = json!({"entity_type": entity_type, "value": value, "reason": reason});
    app.admin_post("/security/policy/blocks", body).await
}

async fn policy_version(app: &TestApp) -> Value {
    app.admin_get("/security/policy/").await.expect(200).body["version"].clone()
}

backend_tests! {
    async fn fc_01_a_mapped_ipv4_address_is_one_ipv4_block(app: TestApp) {
        let created = block(&app, "ip", "::ffff:203.0.113.9", "mapped form").await.expect(201);
        assert_eq!(created.body["value"], "203.0.113.9");
        assert_eq!(created.body["entity_type"], "ip");

        for spelling in ["203.0.113.9", "::ffff:203.0.113.9", "0:0:0:0:0:ffff:cb00:7109"] {
            let check = app.check_ip(spelling).await;
            assert_eq!(check.body["blocked"], true, "{spelling}: {}", check.text);
            assert_eq!(matched_ids(&check), vec![created.id()], "{spelling}");
        }

        let plain = block(&app, "ip", "203.0.113.9", "plain form").await.expect(200);
        assert_eq!(plain.id(), created.id());
        assert_eq!(plain.body["value"], "203.0.113.9");

        let range = block(&app, "cidr", "::ffff:203.0.113.0/120", "mapped range")
            .await
            .expect(201);
        assert_eq!(range.body["value"], "203.0.113.0/24");
        assert_eq!(range.body["entity_type"], "cidr");

        let blocks = all_blocks(&app).await;
        assert_eq!(blocks.len(), 2, "no second block of the address: {blocks:?}");
    }

    async fn fc_02_duplicate_blocks_keep_the_longest_expiry(app: TestApp) {
        let t = app.now();
        let at = |seconds: i64| json!(t.plus_seconds(seconds).expect("in range").to_string());

        let first = app
            .block("ip", "198.51.100.20", json!({"duration_seconds": 60}))
            .await
            .expect(201);
        assert_eq!(first.body["expires_at"], at(60));

        let second = app
            .block("ip", "198.51.100.20", json!({"duration_seconds": 3600}))
            .await
            .expect(200);
        assert_eq!(second.id(), first.id());
        assert_eq!(second.body["expires_at"], at(3600));

        let third = app
            .block("ip", "198.51.100.20", json!({"duration_seconds": 60}))
            .await
            .expect(200);
        assert_eq!(third.id(), first.id());
        assert_eq!(third.body["expires_at"], at(3600));

        // Step 4 (the bouncer decision stream) belongs to that tests.

        app.clock.advance_seconds(61);
        let check = app.check_ip("198.51.100.20").await;
        assert_eq!(check.body["blocked"], true, "{}", check.text);
        assert_eq!(matched_ids(&check), vec![first.id()]);
        assert_eq!(check.body["matches"][0]["expires_at"], at(3600));

        let permanent = app.block("ip", "198.51.100.21", json!({})).await.expect(201);
        assert_eq!(permanent.body["expires_at"], Value::Null);
        let again = app
            .block("ip", "198.51.100.21", json!({"duration_seconds": 60}))
            .await
            .expect(200);
        assert_eq!(again.id(), permanent.id());
        assert_eq!(again.body["expires_at"], Value::Null);
    }

    async fn fc_05_duration_strings_and_non_positive_durations_are_refused(app: TestApp) {
        let version = policy_version(&app).await;

        let reply = app
            .update_policy(json!({"auto_block": {"block_seconds": "3d"}}))
            .await
            .expect_problem(422);
        let named = reply.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors in {}", reply.text))
            .iter()
            .any(|error| error["field"] == "auto_block.block_seconds");
        assert!(named, "{}", reply.text);
        assert_eq!(policy_version(&app).await, version);

        for duration in [0, -5] {
            let reply = app
                .block("ip", "203.0.113.71", json!({"duration_seconds": duration}))
                .await
                .expect_problem(422);
            assert!(reply.body["errors"].is_array(), "{duration}: {}", reply.text);
        }
        assert!(all_blocks(&app).await.is_empty());
    }

    async fn fc_08_allowlist_entries_without_double_colon_are_refused(app: TestApp) {
        let version = policy_version(&app).await;

        let without = json!(["127.0.0.0/8", "::1/128", "2001:db8:1837:5b00/56"]);
        let reply = app
            .update_policy(json!({"allowlist": without}))
            .await
            .expect_problem(422);
        let third = reply.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors in {}", reply.text))
            .iter()
            .any(|error| error["field"] == "allowlist[2]");
        assert!(third, "{}", reply.text);
        assert_eq!(policy_version(&app).await, version);

        let allowlist = json!(["127.0.0.0/8", "::1/128", "2001:db8:1837:5b00::/56"]);
        let updated = app
            .update_policy(json!({"allowlist": allowlist}))
            .await
            .expect(200);
        assert_eq!(updated.body["allowlist"], allowlist);
        let stored = app.admin_get("/security/policy/").await.expect(200);
        assert_eq!(stored.body["allowlist"], allowlist);

        // With the range allowlisted, blocking any of it is 409 (API.md);
        // steps 3 to 6 therefore run on a fresh deployment, in the next test.
        block(&app, "cidr", "2001:db8:1837:5b00::/56", "allowlisted")
            .await
            .expect_problem(409);
    }

    async fn fc_08_block_values_are_parsed_strictly_and_never_truncated(app: TestApp) {
        let reply = block(&app, "cidr", "2001:DB8:1837:5B00::1/56", "host bits")
            .await
            .expect_problem(422);
        let detail = reply.body["detail"].as_str().expect("a detail");
        assert!(detail.contains("2001:db8:1837:5b00::/56"), "{detail}");

        let network = block(&app, "cidr", "2001:db8:1837:5b00::/56", "range")
            .await
            .expect(201);
        assert_eq!(network.body["value"], "2001:db8:1837:5b00::/56");

        let address = block(&app, "ip", "2001:0db8:0000:0000:0000:0000:0000:0001", "long form")
            .await
            .expect(201);
        assert_eq!(address.body["value"], "2001:db8::1");

        for written in ["[2001:db8::1]:22", "2001:db8::1:1 port 60910"] {
            block(&app, "ip", written, "with a port").await.expect_problem(422);
        }

        let values: Vec<Value> = all_blocks(&app)
            .await
            .iter()
            .map(|block| block["value"].clone())
            .collect();
        assert_eq!(values, [json!("2001:db8::1"), json!("2001:db8:1837:5b00::/56")]);
        for truncated in ["2001:db8::1:1", "2001:db8::"] {
            let check = app.check_ip(truncated).await;
            assert_eq!(check.body["blocked"], false, "{truncated}: {}", check.text);
        }
    }
}
