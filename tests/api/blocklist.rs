//! The blocklist: creating blocks of each entity type in canonical form,
//! the allowlist, duplicate blocks and their expiry, validation of
//! durations, expiry, CIDR containment, deactivation and list filters.

use serde_json::{json, Value};

use crate::support::{encode, TestApp};

/// The instant `seconds` after the app's current time, as the API writes it.
fn after(app: &TestApp, seconds: i64) -> Value {
    json!(app
        .now()
        .plus_seconds(seconds)
        .expect("in range")
        .to_string())
}

/// The ids of a list's or check's blocks, in the order answered.
fn ids(blocks: &[Value]) -> Vec<i64> {
    blocks
        .iter()
        .map(|block| block["id"].as_i64().expect("a block id"))
        .collect()
}

/// The ids of the blocks an address check matched, smallest first.
async fn matched_ids(app: &TestApp, address: &str) -> Vec<i64> {
    let check = app.check_ip(address).await;
    let matches = check.body["matches"].as_array().expect("matches").clone();
    assert_eq!(
        check.body["blocked"],
        json!(!matches.is_empty()),
        "{}",
        check.text
    );
    let mut ids = ids(&matches);
    ids.sort_unstable();
    ids
}

/// `GET /security/policy/blocks?{query}` as the admin.
async fn list(app: &TestApp, query: &str) -> Vec<Value> {
    app.admin_get(&format!("/security/policy/blocks?{query}"))
        .await
        .expect(200)
        .items()
}

/// Checks a user or API key as the admin.
async fn check_entity(app: &TestApp, entity_type: &str, value: &str) -> Value {
    let path = format!(
        "/security/policy/blocks/check?entity_type={entity_type}&value={}",
        encode(value)
    );
    app.admin_get(&path).await.expect(200).body
}

/// Deactivates a block as the admin with a reason.
async fn deactivate(app: &TestApp, id: i64, reason: &str) -> crate::support::Reply {
    app.admin_post(
        &format!("/security/policy/blocks/{id}/deactivate"),
        json!({"reason": reason}),
    )
    .await
}

/// Asserts a 422 whose `errors` name `field`, and returns the problem body.
#[track_caller]
fn assert_invalid(reply: crate::support::Reply, field: &str) -> Value {
    let reply = reply.expect_problem(422);
    let fields: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {}", reply.text))
        .iter()
        .filter_map(|error| error["field"].as_str())
        .collect();
    assert!(fields.contains(&field), "{field} not in {}", reply.text);
    reply.body
}

backend_tests! {
    async fn a_mapped_ipv4_address_is_blocked_as_ipv4(app: TestApp) {
        let created = app.block("ip", "::ffff:203.0.113.9", json!({})).await.expect(201);
        assert_eq!(created.body["value"], "203.0.113.9");

        for spelling in ["203.0.113.9", "::ffff:203.0.113.9", "0:0:0:0:0:ffff:cb00:7109"] {
            let check = app.check_ip(spelling).await;
            assert_eq!(check.body["blocked"], true, "{spelling}: {}", check.text);
        }

        let again = app.block("ip", "203.0.113.9", json!({})).await.expect(200);
        assert_eq!(again.id(), created.id());
    }

    async fn each_entity_type_is_blocked_with_its_canonical_value(app: TestApp) {
        let cases = [
            ("ip", "203.0.113.7", "203.0.113.7"),
            ("cidr", "198.51.100.0/24", "198.51.100.0/24"),
            ("user", "mallory", "mallory"),
            ("api_key", "ak_test_3f9c", "ak_test_3f9c"),
        ];
        for (entity_type, value, canonical) in cases {
            let body = json!({
                "entity_type": entity_type, "value": value, "reason": "ssh brute force"
            });
            let created = app.admin_post("/security/policy/blocks", body).await.expect(201);
            let expected = json!({
                "id": created.id(),
                "entity_type": entity_type,
                "value": canonical,
                "reason": "ssh brute force",
                "source": "human",
                "created_by": "admin",
                "action_request_id": null,
                "created_at": app.now().to_string(),
                "expires_at": null,
                "is_active": true,
                "deactivated_at": null,
                "deactivated_by": null,
                "deactivation_reason": null,
            });
            assert_eq!(created.body, expected);
        }

        assert_eq!(list(&app, "").await.len(), 4);
    }

    async fn a_block_with_a_duration_expires_that_many_seconds_from_now(app: TestApp) {
        let created = app
            .block("ip", "203.0.113.8", json!({"duration_seconds": 3600}))
            .await
            .expect(201);

        assert_eq!(created.body["expires_at"], after(&app, 3600));
        assert_eq!(created.body["is_active"], true);
    }

    async fn ipv6_values_are_compressed_and_lower_cased(app: TestApp) {
        let address = app
            .block("ip", "2001:0DB8:0000:0000:0000:0000:0000:00AB", json!({}))
            .await
            .expect(201);
        assert_eq!(address.body["value"], "2001:db8::ab");

        let network = app
            .block("cidr", "2001:DB8:ABCD:0000:0000::/48", json!({}))
            .await
            .expect(201);
        assert_eq!(network.body["value"], "2001:db8:abcd::/48");

        let again = app.block("ip", "2001:db8:0:0::AB", json!({})).await.expect(200);
        assert_eq!(again.id(), address.id());
    }

    async fn mapped_ipv4_networks_are_blocked_as_ipv4(app: TestApp) {
        let network = app
            .block("cidr", "::ffff:198.51.100.0/120", json!({}))
            .await
            .expect(201);
        assert_eq!(network.body["value"], "198.51.100.0/24");

        let again = app.block("cidr", "198.51.100.0/24", json!({})).await.expect(200);
        assert_eq!(again.id(), network.id());
        assert_eq!(matched_ids(&app, "198.51.100.77").await, vec![network.id()]);
    }

    async fn a_network_with_host_bits_set_is_refused_naming_the_network(app: TestApp) {
        let cases = [
            ("198.51.100.7/24", "198.51.100.0/24"),
            ("2001:DB8::1/32", "2001:db8::/32"),
            ("::ffff:198.51.100.1/120", "198.51.100.0/24"),
        ];
        for (written, network) in cases {
            let reply = app.block("cidr", written, json!({})).await;
            let problem = assert_invalid(reply, "value");
            let detail = problem["detail"].as_str().expect("a detail");
            assert!(detail.contains(network), "{written}: {detail}");
        }

        assert!(list(&app, "active=true").await.is_empty());
        assert!(list(&app, "active=false").await.is_empty());
    }

    async fn blocks_overlapping_the_allowlist_are_refused(app: TestApp) {
        let analyst = app.token("analyst-1", "analyst").await;
        let cases = [
            ("ip", "127.0.0.1"),
            ("ip", "127.255.255.254"),
            ("ip", "::ffff:127.0.0.1"),
            ("ip", "::1"),
            ("ip", "0:0:0:0:0:0:0:1"),
            ("cidr", "127.0.0.0/8"),
            ("cidr", "127.1.0.0/16"),
            ("cidr", "126.0.0.0/7"),
            ("cidr", "0.0.0.0/0"),
            ("cidr", "::/0"),
            ("cidr", "::/127"),
            ("cidr", "::ffff:127.0.0.0/104"),
        ];
        for (entity_type, value) in cases {
            let body = json!({"entity_type": entity_type, "value": value, "reason": "test"});
            app.admin_post("/security/policy/blocks", body.clone())
                .await
                .expect_problem(409);
            app.post("/security/policy/blocks", &analyst, body)
                .await
                .expect_problem(409);
        }

        assert!(list(&app, "active=true").await.is_empty());
        assert!(list(&app, "active=false").await.is_empty());
        assert_eq!(app.check_ip("127.0.0.1").await.body["blocked"], false);
    }

    async fn addresses_next_to_the_allowlist_can_be_blocked(app: TestApp) {
        app.block("ip", "128.0.0.0", json!({})).await.expect(201);
        app.block("ip", "126.255.255.255", json!({})).await.expect(201);
        app.block("cidr", "128.0.0.0/1", json!({})).await.expect(201);
        app.block("ip", "::2", json!({})).await.expect(201);
        app.block("cidr", "::2/127", json!({})).await.expect(201);
    }

    async fn blocking_an_entity_again_keeps_one_block_with_the_later_expiry(app: TestApp) {
        let first = app
            .block("ip", "198.51.100.20", json!({"duration_seconds": 60}))
            .await
            .expect(201);
        assert_eq!(first.body["expires_at"], after(&app, 60));

        let longer = app
            .block("ip", "198.51.100.20", json!({"duration_seconds": 3600}))
            .await
            .expect(200);
        assert_eq!(longer.id(), first.id());
        assert_eq!(longer.body["expires_at"], after(&app, 3600));

        let shorter = app
            .block("ip", "198.51.100.20", json!({"duration_seconds": 60}))
            .await
            .expect(200);
        assert_eq!(shorter.body, longer.body);

        let by_instant = app
            .block("ip", "198.51.100.20", json!({"expires_at": after(&app, 7200)}))
            .await
            .expect(200);
        assert_eq!(by_instant.id(), first.id());
        assert_eq!(by_instant.body["expires_at"], after(&app, 7200));

        let items = list(&app, "value=198.51.100.20").await;
        assert_eq!(items, vec![by_instant.body]);
    }

    async fn a_later_duplicate_moves_the_expiry_from_its_own_now(app: TestApp) {
        let first = app
            .block("ip", "198.51.100.21", json!({"duration_seconds": 3600}))
            .await
            .expect(201);
        app.clock.advance_seconds(1800);

        let again = app
            .block("ip", "198.51.100.21", json!({"duration_seconds": 3600}))
            .await
            .expect(200);

        assert_eq!(again.id(), first.id());
        assert_eq!(again.body["expires_at"], after(&app, 3600));
        assert_eq!(again.body["created_at"], first.body["created_at"]);
    }

    async fn concurrent_duplicate_blocks_create_exactly_one_block(app: TestApp) {
        let block = |seconds: i64| {
            app.block("ip", "198.51.100.22", json!({"duration_seconds": seconds}))
        };

        let (a, b, c, d) = tokio::join!(block(60), block(600), block(3600), block(120));

        let replies = [a, b, c, d];
        let statuses: Vec<u16> = replies.iter().map(|reply| reply.status.as_u16()).collect();
        assert_eq!(statuses.iter().filter(|status| **status == 201).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 3, "{statuses:?}");
        let id = replies[0].id();
        assert!(replies.iter().all(|reply| reply.id() == id), "{replies:?}");
        let items = list(&app, "value=198.51.100.22").await;
        assert_eq!(ids(&items), vec![id]);
        assert_eq!(items[0]["expires_at"], after(&app, 3600));
    }

    async fn malformed_block_requests_are_refused_naming_the_field(app: TestApp) {
        let cases = [
            (json!({"entity_type": "ip", "value": "203.0.113.256", "reason": "x"}), "value"),
            (json!({"entity_type": "ip", "value": "198.51.100.0/24", "reason": "x"}), "value"),
            (json!({"entity_type": "ip", "value": "203.0.113.7:22", "reason": "x"}), "value"),
            (json!({"entity_type": "cidr", "value": "198.51.100.0", "reason": "x"}), "value"),
            (json!({"entity_type": "cidr", "value": "10.0.0.0/33", "reason": "x"}), "value"),
            (json!({"entity_type": "user", "value": "", "reason": "x"}), "value"),
            (json!({"entity_type": "user", "value": " mallory", "reason": "x"}), "value"),
            (json!({"entity_type": "host", "value": "mallory", "reason": "x"}), "entity_type"),
            (json!({"entity_type": "user", "value": "mallory", "reason": "  "}), "reason"),
            (json!({"entity_type": "user", "value": "mallory"}), "reason"),
            (json!({"entity_type": "user", "value": "mallory", "reason": "x", "ttl": 5}), "ttl"),
        ];
        for (body, field) in cases {
            let reply = app.admin_post("/security/policy/blocks", body.clone()).await;
            let problem = reply.expect_problem(422);
            // A missing or unknown field is named in `detail`; the others
            // also in `errors`.
            let named_in_errors = problem.body["errors"]
                .as_array()
                .is_some_and(|errors| errors.iter().any(|error| error["field"] == field));
            let named_in_detail = problem.body["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains(&format!("`{field}`")));
            assert!(named_in_errors || named_in_detail, "{body}: {}", problem.text);
            assert!(problem.body["errors"].is_array(), "{body}: {}", problem.text);
        }

        assert!(list(&app, "active=true").await.is_empty());
        assert!(list(&app, "active=false").await.is_empty());
    }

    async fn names_that_display_as_another_are_refused_wherever_a_block_is_made(app: TestApp) {
        // U+202E (right-to-left override) shows "admin\u{202E}nimda" as
        // "adminadmin"; U+2066 (left-to-right isolate) hides one too.
        let spoofs = ["admin\u{202E}nimda", "svc\u{2066}-backup"];
        for (kind, value) in [("user", spoofs[0]), ("api_key", spoofs[1])] {
            let body = json!({"entity_type": kind, "value": value, "reason": "x"});
            let problem = app.admin_post("/security/policy/blocks", body).await.expect_problem(422);
            assert!(problem.text.contains("direction"), "{}", problem.text);
        }
        let request = json!({"action_type": "block_entity", "reason": "spoof",
            "payload": {"entity_type": "user", "value": spoofs[0]}});
        let problem = app.admin_post("/security/actions/", request).await.expect_problem(422);
        assert!(problem.text.contains("payload.value"), "{}", problem.text);
        let line = json!({"entity_type": "user", "value": spoofs[1], "reason": "x"}).to_string();
        let report = app
            .import(&app.admin_token.clone(), "application/x-ndjson", line)
            .await
            .expect(200);
        assert_eq!(report.body["rejected_total"], 1, "{}", report.text);
        let place = json!({"name": "ssh\u{202E}01", "honeypot_type": "ssh"});
        let problem = app
            .admin_post("/security/honeypot/instances", place)
            .await
            .expect_problem(422);
        assert!(problem.text.contains("direction"), "{}", problem.text);
        assert!(list(&app, "active=true").await.is_empty());

        // A right-to-left mark only nudges neutral characters: allowed.
        app.block("user", "\u{5E9}\u{5E8}\u{200F}-1", json!({})).await.expect(201);
    }

    async fn a_permanent_block_wins_over_any_expiry(app: TestApp) {
        let timed = app
            .block("user", "mallory", json!({"duration_seconds": 60}))
            .await
            .expect(201);
        let permanent = app.block("user", "mallory", json!({})).await.expect(200);
        assert_eq!(permanent.id(), timed.id());
        assert_eq!(permanent.body["expires_at"], Value::Null);

        let shorter = app
            .block("user", "mallory", json!({"duration_seconds": 86400}))
            .await
            .expect(200);
        assert_eq!(shorter.id(), timed.id());
        assert_eq!(shorter.body["expires_at"], Value::Null);

        app.clock.advance_seconds(86_401);
        let check = check_entity(&app, "user", "mallory").await;
        assert_eq!(check["blocked"], true, "{check}");
    }

    async fn durations_that_are_not_positive_whole_seconds_are_refused(app: TestApp) {
        let durations = [
            json!(0),
            json!(-1),
            json!(-3600),
            json!(1.5),
            json!("3600"),
            json!("3d"),
            json!(true),
            json!(300_000_000_000_i64),
            json!(i64::MAX),
            json!(u64::MAX),
        ];
        for duration in durations {
            let reply = app
                .block("ip", "203.0.113.71", json!({"duration_seconds": duration}))
                .await;
            assert_invalid(reply, "duration_seconds");
        }

        assert!(list(&app, "active=true").await.is_empty());
        assert!(list(&app, "active=false").await.is_empty());
    }

    async fn an_expiry_in_the_past_is_refused(app: TestApp) {
        let past = app.now().minus_seconds(1).to_string();
        let reply = app.block("ip", "203.0.113.72", json!({"expires_at": past})).await;
        assert_invalid(reply, "expires_at");

        let long_ago = app
            .block("ip", "203.0.113.72", json!({"expires_at": "2001-01-01T00:00:00Z"}))
            .await;
        assert_invalid(long_ago, "expires_at");

        assert!(list(&app, "active=false").await.is_empty());
    }

    async fn a_duration_and_an_expiry_together_are_refused(app: TestApp) {
        let extra = json!({"duration_seconds": 3600, "expires_at": after(&app, 3600)});
        let reply = app.block("ip", "203.0.113.73", extra).await.expect_problem(422);

        assert!(reply.body["errors"].is_array(), "{}", reply.text);
        assert!(list(&app, "active=true").await.is_empty());
    }

    async fn an_expiry_without_an_offset_is_refused(app: TestApp) {
        let reply = app
            .block("ip", "203.0.113.74", json!({"expires_at": "9000-01-01T00:00:00"}))
            .await;
        assert_invalid(reply, "expires_at");

        assert!(list(&app, "active=true").await.is_empty());
    }

    async fn an_expiry_with_an_offset_is_answered_in_utc(app: TestApp) {
        let utc = app.now().plus_seconds(7200).expect("in range");
        let written = chrono::DateTime::from_timestamp_millis(utc.millis())
            .expect("in range")
            .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).expect("an offset"))
            .to_rfc3339();
        assert!(written.ends_with("+02:00"), "{written}");

        let created = app
            .block("ip", "203.0.113.75", json!({"expires_at": written}))
            .await
            .expect(201);
        assert_eq!(created.body["expires_at"], json!(utc.to_string()));
    }

    async fn an_expired_block_is_no_longer_checked_or_listed_as_active(app: TestApp) {
        let created = app
            .block("ip", "198.51.100.30", json!({"duration_seconds": 60}))
            .await
            .expect(201);
        let permanent = app.block("ip", "198.51.100.31", json!({})).await.expect(201);
        assert_eq!(matched_ids(&app, "198.51.100.30").await, vec![created.id()]);

        app.clock.advance_seconds(61);

        let check = app.check_ip("198.51.100.30").await;
        assert_eq!(check.body, json!({"blocked": false, "matches": []}));
        assert_eq!(ids(&list(&app, "").await), vec![permanent.id()]);
        assert_eq!(ids(&list(&app, "active=true").await), vec![permanent.id()]);

        let inactive = list(&app, "active=false").await;
        assert_eq!(ids(&inactive), vec![created.id()]);
        assert_eq!(inactive[0], json_with(&created.body, "is_active", json!(false)));
    }

    async fn an_address_inside_a_blocked_ipv4_network_matches_both_blocks(app: TestApp) {
        let address = app.block("ip", "198.51.100.20", json!({})).await.expect(201);
        let network = app.block("cidr", "198.51.100.0/24", json!({})).await.expect(201);
        let wider = app.block("cidr", "198.51.0.0/16", json!({})).await.expect(201);
        let other = app.block("cidr", "198.51.101.0/24", json!({})).await.expect(201);

        let check = app.check_ip("198.51.100.20").await;
        assert_eq!(check.body["blocked"], true);
        let matches = check.body["matches"].as_array().expect("matches").clone();
        let mut expected = vec![address.body, network.body.clone(), wider.body.clone()];
        expected.sort_by_key(|block| std::cmp::Reverse(block["id"].as_i64()));
        let mut answered = matches.clone();
        answered.sort_by_key(|block| std::cmp::Reverse(block["id"].as_i64()));
        assert_eq!(answered, expected);

        let (network, wider, other) = (network.id(), wider.id(), other.id());
        assert_eq!(matched_ids(&app, "::ffff:198.51.100.20").await.len(), 3);
        assert_eq!(matched_ids(&app, "198.51.100.0").await, vec![network, wider]);
        assert_eq!(matched_ids(&app, "198.51.100.255").await, vec![network, wider]);
        assert_eq!(matched_ids(&app, "198.51.101.9").await, vec![wider, other]);
        assert_eq!(matched_ids(&app, "198.51.255.255").await, vec![wider]);
        assert!(matched_ids(&app, "198.52.0.0").await.is_empty());
        assert!(matched_ids(&app, "198.50.255.255").await.is_empty());
        assert!(matched_ids(&app, "::c633:6414").await.is_empty());
    }

    async fn an_address_inside_a_blocked_ipv6_network_matches_both_blocks(app: TestApp) {
        let address = app.block("ip", "2001:db8:abcd:1::5", json!({})).await.expect(201);
        let network = app.block("cidr", "2001:db8:abcd::/48", json!({})).await.expect(201);
        let (address, network) = (address.id(), network.id());

        assert_eq!(matched_ids(&app, "2001:db8:abcd:1::5").await, vec![address, network]);
        assert_eq!(matched_ids(&app, "2001:DB8:ABCD:1:0:0:0:5").await, vec![address, network]);
        assert_eq!(matched_ids(&app, "2001:db8:abcd::").await, vec![network]);
        let last = "2001:db8:abcd:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(matched_ids(&app, last).await, vec![network]);
        assert!(matched_ids(&app, "2001:db8:abce::").await.is_empty());
        assert!(matched_ids(&app, "2001:db8:abcc:ffff::1").await.is_empty());
    }

    async fn inactive_networks_do_not_match_addresses_inside_them(app: TestApp) {
        let deactivated = app.block("cidr", "203.0.113.0/25", json!({})).await.expect(201);
        deactivate(&app, deactivated.id(), "false positive").await.expect(200);
        app.block("cidr", "203.0.113.128/25", json!({"duration_seconds": 10}))
            .await
            .expect(201);

        app.clock.advance_seconds(11);

        assert!(matched_ids(&app, "203.0.113.1").await.is_empty());
        assert!(matched_ids(&app, "203.0.113.200").await.is_empty());
    }

    async fn users_and_api_keys_are_checked_by_type_and_value(app: TestApp) {
        let user = app.block("user", "mallory", json!({})).await.expect(201);
        let key = app.block("api_key", "ak_test_3f9c", json!({})).await.expect(201);

        let check = check_entity(&app, "user", "mallory").await;
        assert_eq!(check, json!({"blocked": true, "matches": [user.body]}));
        let check = check_entity(&app, "api_key", "ak_test_3f9c").await;
        assert_eq!(check, json!({"blocked": true, "matches": [key.body]}));

        let not_blocked = json!({"blocked": false, "matches": []});
        assert_eq!(check_entity(&app, "api_key", "mallory").await, not_blocked);
        assert_eq!(check_entity(&app, "user", "ak_test_3f9c").await, not_blocked);
        assert_eq!(check_entity(&app, "user", "Mallory").await, not_blocked);
        assert_eq!(check_entity(&app, "user", "trudy").await, not_blocked);
    }

    async fn addresses_and_networks_can_be_checked_by_entity_type_and_value(app: TestApp) {
        let address = app.block("ip", "198.51.100.40", json!({})).await.expect(201);
        let network = app.block("cidr", "198.51.100.0/24", json!({})).await.expect(201);

        let check = check_entity(&app, "ip", "::ffff:198.51.100.40").await;
        assert_eq!(check["blocked"], true, "{check}");
        let mut matched = ids(check["matches"].as_array().expect("matches"));
        matched.sort_unstable();
        assert_eq!(matched, vec![address.id(), network.id()]);

        let check = check_entity(&app, "cidr", "::ffff:198.51.100.0/120").await;
        assert_eq!(check, json!({"blocked": true, "matches": [network.body]}));
    }

    async fn shrinking_the_allowlist_lets_its_addresses_be_blocked(app: TestApp) {
        app.block("ip", "127.0.0.1", json!({})).await.expect_problem(409);

        app.update_policy(json!({"allowlist": ["::1/128"]})).await.expect(200);

        let created = app.block("ip", "127.0.0.1", json!({})).await.expect(201);
        assert_eq!(matched_ids(&app, "127.0.0.1").await, vec![created.id()]);
        app.block("ip", "::1", json!({})).await.expect_problem(409);
    }

    async fn deactivating_a_block_records_who_and_why(app: TestApp) {
        let analyst = app.token("analyst-1", "analyst").await;
        let created = app.block("ip", "203.0.113.50", json!({})).await.expect(201);
        app.clock.advance_seconds(30);

        let path = format!("/security/policy/blocks/{}/deactivate", created.id());
        let deactivated = app
            .post(&path, &analyst, json!({"reason": "false positive"}))
            .await
            .expect(200);
        let mut expected = created.body.clone();
        expected["is_active"] = json!(false);
        expected["deactivated_at"] = json!(app.now().to_string());
        expected["deactivated_by"] = json!("analyst-1");
        expected["deactivation_reason"] = json!("false positive");
        assert_eq!(deactivated.body, expected);

        assert_eq!(app.check_ip("203.0.113.50").await.body["blocked"], false);
        assert!(list(&app, "").await.is_empty());
        assert_eq!(list(&app, "active=false").await, vec![expected]);
    }

    async fn deactivating_an_inactive_block_changes_nothing(app: TestApp) {
        let created = app.block("ip", "203.0.113.51", json!({})).await.expect(201);
        let first = deactivate(&app, created.id(), "false positive").await.expect(200);

        app.clock.advance_seconds(60);
        let second = deactivate(&app, created.id(), "another reason").await.expect(200);
        assert_eq!(second.body, first.body);

        let expired = app
            .block("ip", "203.0.113.52", json!({"duration_seconds": 5}))
            .await
            .expect(201);
        app.clock.advance_seconds(6);
        let unchanged = deactivate(&app, expired.id(), "too late").await.expect(200);
        assert_eq!(unchanged.body["is_active"], false);
        assert_eq!(unchanged.body["deactivated_at"], Value::Null);
        assert_eq!(unchanged.body["deactivation_reason"], Value::Null);

        let audit = app.admin_get("/security/audit?kind=block.deactivated").await.expect(200);
        assert_eq!(audit.items().len(), 1, "{}", audit.text);
    }

    async fn deactivating_without_a_body_ends_the_block(app: TestApp) {
        let created = app.block("user", "mallory", json!({})).await.expect(201);
        let path = format!("/security/policy/blocks/{}/deactivate", created.id());

        let reply = app
            .request(reqwest::Method::POST, &path, Some(&app.admin_token), None)
            .await
            .expect(200);

        assert_eq!(reply.body["is_active"], false);
        assert_eq!(reply.body["deactivated_by"], "admin");
        assert!(reply.body["deactivation_reason"].is_string(), "{}", reply.text);
    }

    async fn deactivating_an_unknown_block_is_not_found(app: TestApp) {
        let reply = deactivate(&app, 987_654, "gone").await.expect_problem(404);
        assert_eq!(reply.body["status"], 404);

        let created = app.block("ip", "203.0.113.53", json!({})).await.expect(201);
        deactivate(&app, created.id() + 1, "gone").await.expect_problem(404);
    }

    async fn the_list_filters_by_entity_type_value_and_source(app: TestApp) {
        let owner = app.token("tyr-owner", "policy_owner").await;
        let address = app.block("ip", "203.0.113.7", json!({})).await.expect(201).id();
        let network = app.block("cidr", "203.0.113.0/24", json!({})).await.expect(201).id();
        let user = app.block("user", "mallory", json!({})).await.expect(201).id();
        let key = app.block("api_key", "mallory", json!({})).await.expect(201).id();
        let body = json!({"entity_type": "ip", "value": "2001:db8::7", "reason": "test"});
        let by_owner = app.post("/security/policy/blocks", &owner, body).await.expect(201);
        assert_eq!(by_owner.body["source"], "tyr");
        assert_eq!(by_owner.body["created_by"], "tyr-owner");
        let ipv6 = by_owner.id();

        let cases: Vec<(String, Vec<i64>)> = vec![
            (String::new(), vec![ipv6, key, user, network, address]),
            ("entity_type=ip".into(), vec![ipv6, address]),
            ("entity_type=cidr".into(), vec![network]),
            ("entity_type=user".into(), vec![user]),
            ("entity_type=api_key".into(), vec![key]),
            ("value=203.0.113.7".into(), vec![address]),
            (format!("value={}", encode("::ffff:203.0.113.7")), vec![address]),
            (format!("value={}", encode("2001:0DB8:0:0::7")), vec![ipv6]),
            (format!("entity_type=ip&value={}", encode("2001:DB8::7")), vec![ipv6]),
            (format!("value={}", encode("203.0.113.0/24")), vec![network]),
            (format!("value={}", encode("::ffff:203.0.113.0/120")), vec![network]),
            ("value=mallory".into(), vec![key, user]),
            ("entity_type=user&value=mallory".into(), vec![user]),
            ("entity_type=cidr&value=203.0.113.7".into(), vec![]),
            ("source=tyr".into(), vec![ipv6]),
            ("source=human".into(), vec![key, user, network, address]),
            ("source=heimdall".into(), vec![]),
            ("source=human&entity_type=ip".into(), vec![address]),
        ];
        for (query, expected) in cases {
            assert_eq!(ids(&list(&app, &query).await), expected, "?{query}");
        }
    }

    async fn a_check_needs_an_ip_or_an_entity_type_and_value(app: TestApp) {
        let queries = [
            "",
            "?entity_type=user",
            "?value=mallory",
            "?ip=203.0.113.7&entity_type=user&value=mallory",
            "?ip=not-an-address",
            "?ip=203.0.113.7%3A22",
            "?entity_type=planet&value=mars",
        ];
        for query in queries {
            let path = format!("/security/policy/blocks/check{query}");
            app.admin_get(&path).await.expect_problem(400);
        }
    }

    async fn growing_the_allowlist_deactivates_the_blocks_it_overlaps(app: TestApp) {
        let inside = app.block("ip", "198.51.100.7", json!({})).await.expect(201).id();
        let network = app.block("cidr", "198.51.100.0/24", json!({})).await.expect(201).id();
        let wider = app
            .block("cidr", "198.51.0.0/16", json!({"duration_seconds": 3600}))
            .await
            .expect(201)
            .id();
        let ipv6 = app.block("ip", "2001:db8::5", json!({})).await.expect(201).id();
        let outside = app.block("ip", "198.51.100.16", json!({})).await.expect(201).id();
        let user = app.block("user", "mallory", json!({})).await.expect(201).id();
        let earlier = app.block("cidr", "198.51.100.0/28", json!({})).await.expect(201).id();
        deactivate(&app, earlier, "manual").await.expect(200);
        app.clock.advance_seconds(10);

        let allowlist = json!(["127.0.0.0/8", "::1/128", "198.51.100.0/28", "2001:db8::/64"]);
        let policy = app.update_policy(json!({"allowlist": allowlist})).await.expect(200);
        assert_eq!(policy.body["allowlist"], allowlist);

        assert_eq!(ids(&list(&app, "").await), vec![user, outside]);
        let inactive = list(&app, "active=false").await;
        assert_eq!(ids(&inactive), vec![earlier, ipv6, wider, network, inside]);
        for block in &inactive[1..] {
            assert_eq!(block["is_active"], false, "{block}");
            assert_eq!(block["deactivation_reason"], "allowlisted", "{block}");
            assert_eq!(block["deactivated_by"], "admin", "{block}");
            assert_eq!(block["deactivated_at"], json!(app.now().to_string()), "{block}");
        }
        assert_eq!(inactive[0]["deactivation_reason"], "manual");

        let audit = app.admin_get("/security/audit?kind=block.deactivated").await.expect(200);
        let allowlisted: Vec<String> = audit
            .items()
            .iter()
            .filter(|entry| entry["new_value"]["reason"] == "allowlisted")
            .map(|entry| entry["subject_id"].as_str().expect("a subject id").to_string())
            .collect();
        let mut expected: Vec<String> =
            [inside, network, wider, ipv6].iter().map(i64::to_string).collect();
        let mut allowlisted_sorted = allowlisted.clone();
        allowlisted_sorted.sort();
        expected.sort();
        assert_eq!(allowlisted_sorted, expected, "{}", audit.text);
        for entry in audit.items() {
            assert_eq!(entry["subject_type"], "block", "{entry}");
        }

        app.block("ip", "198.51.100.7", json!({})).await.expect_problem(409);
        assert_eq!(app.check_ip("198.51.100.7").await.body["blocked"], false);
        assert_eq!(matched_ids(&app, "198.51.100.16").await, vec![outside]);
    }

    async fn a_check_answers_a_block_as_it_stands_after_each_change(app: TestApp) {
        let block = app
            .block("ip", "203.0.113.64", json!({"duration_seconds": 60}))
            .await
            .expect(201);
        let first = app.check_ip("203.0.113.64").await;
        assert_eq!(first.body["matches"][0]["expires_at"], block.body["expires_at"]);

        let extended = app
            .block("ip", "203.0.113.64", json!({"duration_seconds": 7200}))
            .await
            .expect(200);
        let second = app.check_ip("203.0.113.64").await;
        assert_eq!(second.body["matches"][0]["expires_at"], extended.body["expires_at"]);
        assert_eq!(second.body["matches"][0]["id"], block.body["id"]);

        deactivate(&app, block.id(), "false positive").await.expect(200);
        let third = app.check_ip("203.0.113.64").await;
        assert_eq!(third.body, json!({"blocked": false, "matches": []}));
    }

    async fn an_entity_blocked_again_after_its_block_expired_gets_a_new_block(app: TestApp) {
        let first = app
            .block("ip", "203.0.113.60", json!({"duration_seconds": 60}))
            .await
            .expect(201);
        app.clock.advance_seconds(61);

        let second = app
            .block("ip", "203.0.113.60", json!({"duration_seconds": 3600}))
            .await
            .expect(201);
        assert_ne!(second.id(), first.id());
        assert_eq!(second.body["expires_at"], after(&app, 3600));
        assert_eq!(second.body["is_active"], true);

        assert_eq!(ids(&list(&app, "").await), vec![second.id()]);
        let inactive = list(&app, "active=false").await;
        assert_eq!(ids(&inactive), vec![first.id()]);
        assert_eq!(inactive[0]["expires_at"], first.body["expires_at"]);
        assert_eq!(matched_ids(&app, "203.0.113.60").await, vec![second.id()]);
    }

    async fn an_entity_blocked_again_after_deactivation_gets_a_new_block(app: TestApp) {
        let first = app.block("user", "mallory", json!({})).await.expect(201);
        deactivate(&app, first.id(), "false positive").await.expect(200);

        let second = app.block("user", "mallory", json!({})).await.expect(201);
        assert_ne!(second.id(), first.id());

        let check = check_entity(&app, "user", "mallory").await;
        assert_eq!(check, json!({"blocked": true, "matches": [second.body]}));
    }

    async fn a_restarted_server_checks_the_blocks_active_before_it(app: TestApp) {
        let mut app = app;
        let address = app.block("ip", "203.0.113.70", json!({})).await.expect(201);
        let network = app
            .block("cidr", "203.0.113.64/26", json!({"duration_seconds": 3600}))
            .await
            .expect(201);
        let ended = app.block("cidr", "203.0.113.0/24", json!({})).await.expect(201);
        deactivate(&app, ended.id(), "false positive").await.expect(200);
        app.block("api_key", "leaked", json!({"duration_seconds": 60}))
            .await
            .expect(201);

        app.restart().await;

        let matched = matched_ids(&app, "203.0.113.70").await;
        assert_eq!(matched, vec![address.id(), network.id()]);
        assert_eq!(check_entity(&app, "api_key", "leaked").await["blocked"], true);
        app.clock.advance_seconds(60);
        assert_eq!(check_entity(&app, "api_key", "leaked").await["blocked"], false);
    }

    async fn blocks_made_and_ended_by_action_requests_are_checked_at_once(app: TestApp) {
        app.update_policy(json!({"auto_approve": {"normal": ["human"]}}))
            .await
            .expect(200);
        let request = json!({"action_type": "block_entity", "reason": "scanner range",
            "payload": {"entity_type": "cidr", "value": "192.0.2.0/24"}});
        let filed = app.admin_post("/security/actions/", request).await.expect(201);
        assert_eq!(filed.body["status"], "executed", "{}", filed.text);
        let block_id = filed.body["result"]["block_id"].as_i64().expect("a block id");
        assert_eq!(matched_ids(&app, "192.0.2.9").await, vec![block_id]);

        let request = json!({"action_type": "unblock_entity", "reason": "false positive",
            "payload": {"block_id": block_id}});
        let filed = app.admin_post("/security/actions/", request).await.expect(201);
        assert_eq!(filed.body["status"], "executed", "{}", filed.text);
        assert!(matched_ids(&app, "192.0.2.9").await.is_empty());
    }
}

/// `value` with `field` replaced.
fn json_with(value: &Value, field: &str, new: Value) -> Value {
    let mut value = value.clone();
    value[field] = new;
    value
}
