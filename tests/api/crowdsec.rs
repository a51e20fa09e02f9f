//! The CrowdSec bouncer endpoints, against the shapes CrowdSec 1.4.6
//! answers with (shared/reference/crowdsec-lapi) and the field cases of
//! the bouncer stream (FC-01 step 5, FC-02 step 4, FC-03, FC-04, FC-05).

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{encode, Reply, TestApp};

const JSON_TYPE: &str = "application/json; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";
const FORBIDDEN: &str = r#"{"message":"access forbidden"}"#;
const EMPTY_STREAM: &str = r#"{"deleted":null,"new":null}"#;
/// ipset's largest timeout, written as Go writes durations.
const CAPPED: &str = "596h31m23s";
const CAP_SECONDS: i64 = 2_147_483;

/// A token for a bouncer.
async fn bouncer_key(app: &TestApp, name: &str) -> String {
    app.token(name, "bouncer").await
}

async fn live(app: &TestApp, key: &str, query: &str) -> Reply {
    let reply = app
        .bouncer_request(Method::GET, &format!("/v1/decisions{query}"), Some(key))
        .await
        .expect(200);
    assert_eq!(content_type(&reply), Some(JSON_TYPE));
    reply
}

async fn pull(app: &TestApp, key: &str, query: &str) -> Reply {
    let path = format!("/v1/decisions/stream{query}");
    let reply = app
        .bouncer_request(Method::GET, &path, Some(key))
        .await
        .expect(200);
    assert_eq!(content_type(&reply), Some(JSON_TYPE));
    assert!(
        reply.text.starts_with(r#"{"deleted":"#),
        "deleted comes first: {}",
        reply.text
    );
    assert_positive_durations(&reply.body);
    reply
}

fn content_type(reply: &Reply) -> Option<&str> {
    reply
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// The decisions of an array that may be `null`.
fn decisions(value: &Value) -> Vec<Value> {
    match value {
        Value::Null => Vec::new(),
        Value::Array(items) => {
            assert!(!items.is_empty(), "an empty list is null, never []");
            items.clone()
        }
        other => panic!("not a decision list: {other}"),
    }
}

fn values(list: &Value) -> Vec<String> {
    decisions(list)
        .iter()
        .map(|decision| decision["value"].as_str().expect("a value").to_string())
        .collect()
}

fn new_values(reply: &Reply) -> Vec<String> {
    values(&reply.body["new"])
}

fn deleted_values(reply: &Reply) -> Vec<String> {
    values(&reply.body["deleted"])
}

/// Go's `time.ParseDuration` for the units a duration may carry, in seconds.
fn go_seconds(text: &str) -> f64 {
    let units = [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3)]
        .into_iter()
        .chain([("s", 1.0), ("m", 60.0), ("h", 3600.0)]);
    let units: Vec<(&str, f64)> = units.collect();
    let negative = text.starts_with('-');
    let mut rest = text.trim_start_matches(['-', '+']);
    let mut total = 0.0;
    assert!(!rest.is_empty(), "empty duration");
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or_else(|| panic!("a number without a unit in {text}"));
        let number: f64 = rest[..end].parse().expect("a number");
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = units
            .iter()
            .find(|(unit, _)| *unit == &rest[..unit_end])
            .unwrap_or_else(|| panic!("unknown unit in {text}"))
            .1;
        total += number * scale;
        rest = &rest[unit_end..];
    }
    if negative {
        -total
    } else {
        total
    }
}

/// `^(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$`, the durations FC-05 allows.
fn is_hours_minutes_seconds(text: &str) -> bool {
    let mut rest = text;
    for unit in ['h', 'm'] {
        if let Some(end) = rest.find(unit) {
            if end > 0 && rest[..end].chars().all(|c| c.is_ascii_digit()) {
                rest = &rest[end + 1..];
            }
        }
    }
    let Some(number) = rest.strip_suffix('s') else {
        return rest.is_empty();
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    digits(whole) && digits(fraction)
}

/// FC-03: no duration anywhere is zero or negative, and every one is in
/// hours, minutes and seconds.
fn assert_positive_durations(body: &Value) {
    let lists = match body {
        Value::Array(_) | Value::Null => vec![body.clone()],
        _ => vec![body["deleted"].clone(), body["new"].clone()],
    };
    for list in lists {
        for decision in decisions(&list) {
            let duration = decision["duration"].as_str().expect("a duration");
            assert!(is_hours_minutes_seconds(duration), "{duration}");
            let seconds = go_seconds(duration);
            assert!(seconds > 0.0, "{decision}");
            assert!(seconds <= CAP_SECONDS as f64, "{decision}");
        }
    }
}

/// The one decision of a list with this value.
fn decision_for(list: &Value, value: &str) -> Value {
    let found: Vec<Value> = decisions(list)
        .into_iter()
        .filter(|decision| decision["value"] == value)
        .collect();
    assert_eq!(found.len(), 1, "one decision for {value} in {list}");
    found[0].clone()
}

async fn deactivate(app: &TestApp, id: i64) {
    app.admin_post(
        &format!("/security/policy/blocks/{id}/deactivate"),
        json!({"reason": "test"}),
    )
    .await
    .expect(200);
}

backend_tests! {
    async fn a_decision_has_crowdsecs_seven_keys_in_order(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        let block = app
            .block("ip", "192.0.2.10", json!({"duration_seconds": 14400, "reason": "ssh scan"}))
            .await
            .expect(201);

        let reply = live(&app, &key, "?ip=192.0.2.10").await;

        let expected_prefix = format!(
            r#"[{{"duration":"4h0m0s","id":{},"origin":"human","scenario":"ssh scan","scope":"Ip","type":"ban","value":"192.0.2.10"}}]"#,
            block.id()
        );
        assert_eq!(reply.text, expected_prefix);
    }

    async fn no_match_is_the_four_bytes_null(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("ip", "192.0.2.10", json!({})).await.expect(201);

        for query in ["?ip=192.0.2.99", "?ip=2001:db8::99", "?range=203.0.113.0/24"] {
            let reply = live(&app, &key, query).await;
            assert_eq!(reply.text, "null", "{query}");
        }
        let empty = TestApp::start(app.backend).await;
        let other_key = bouncer_key(&empty, "edge").await;
        assert_eq!(live(&empty, &other_key, "").await.text, "null");
        empty.stop().await;
    }

    async fn a_missing_unknown_or_revoked_key_is_access_forbidden(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.admin_post("/security/tokens/edge/revoke", json!({})).await.expect(200);
        for path in ["/v1/decisions?ip=192.0.2.10", "/v1/decisions/stream"] {
            for sent in [None, Some("wrong"), Some(key.as_str())] {
                let reply = app.bouncer_request(Method::GET, path, sent).await.expect(403);
                assert_eq!(reply.text, FORBIDDEN, "{path}");
                assert_eq!(content_type(&reply), Some(JSON_TYPE));
                let head = app.bouncer_request(Method::HEAD, path, sent).await.expect(403);
                assert_eq!(head.text, "");
                assert_eq!(head.headers[CONTENT_LENGTH], "30");
            }
        }
        let bearer = app.get("/v1/decisions", &app.admin_token.clone()).await.expect(403);
        assert_eq!(bearer.text, FORBIDDEN, "the bearer header is not the bouncer's key");
    }

    async fn any_role_that_reads_the_blocklist_may_pull(app: TestApp) {
        let viewer = app.token("eyes", "viewer").await;
        app.block("ip", "192.0.2.10", json!({})).await.expect(201);
        let reply = pull(&app, &viewer, "?startup=true").await;
        assert_eq!(new_values(&reply), vec!["192.0.2.10"]);
    }

    async fn unknown_paths_and_methods_answer_empty_like_crowdsec(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        let missing = app
            .bouncer_request(Method::GET, "/v1/nothing-here", Some(&key))
            .await
            .expect(404);
        assert_eq!(missing.text, "");
        let v2 = app
            .bouncer_request(Method::GET, "/v2/decisions", Some(&key))
            .await
            .expect(404);
        assert!(v2.text.is_empty() || v2.body["status"] == 404);
        let wrong = app
            .bouncer_request(Method::POST, "/v1/decisions/stream", Some(&key))
            .await
            .expect(405);
        assert_eq!(wrong.text, "");
    }

    async fn live_queries_find_addresses_ranges_and_mapped_ipv4(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        let address = app.block("ip", "192.0.2.10", json!({})).await.expect(201);
        let range = app.block("cidr", "198.51.100.0/24", json!({})).await.expect(201);
        let address6 = app.block("ip", "2001:db8::10", json!({})).await.expect(201);
        let range6 = app.block("cidr", "2001:db8:1::/48", json!({})).await.expect(201);
        app.block("user", "mallory", json!({})).await.expect(201);
        let ids = |reply: &Reply| -> Vec<i64> {
            decisions(&reply.body).iter().map(|d| d["id"].as_i64().unwrap()).collect()
        };

        let inside = live(&app, &key, "?ip=198.51.100.77").await;
        assert_eq!(ids(&inside), vec![range.id()]);
        assert_eq!(inside.body[0]["scope"], "Range");
        assert_eq!(inside.body[0]["value"], "198.51.100.0/24");

        let mapped = live(&app, &key, &format!("?ip={}", encode("::ffff:192.0.2.10"))).await;
        assert_eq!(ids(&mapped), vec![address.id()]);
        assert_eq!(mapped.body[0]["value"], "192.0.2.10");

        let six = live(&app, &key, &format!("?ip={}", encode("2001:db8:1::5"))).await;
        assert_eq!(ids(&six), vec![range6.id()]);
        let exact6 = live(&app, &key, &format!("?ip={}", encode("2001:db8::10"))).await;
        assert_eq!(ids(&exact6), vec![address6.id()]);

        let containing = live(&app, &key, &format!("?range={}", encode("198.51.100.0/25"))).await;
        assert_eq!(ids(&containing), vec![range.id()]);
        let query = format!("?range={}&contains=false", encode("198.51.0.0/16"));
        assert_eq!(ids(&live(&app, &key, &query).await), vec![range.id()]);
        let query = format!("?range={}&contains=false", encode("2001:db8::/32"));
        assert_eq!(ids(&live(&app, &key, &query).await), vec![address6.id(), range6.id()]);
        let query = format!("?range={}&contains=false", encode("198.51.100.0/25"));
        assert_eq!(live(&app, &key, &query).await.text, "null");

        let all = live(&app, &key, "").await;
        assert_eq!(
            ids(&all),
            vec![address.id(), range.id(), address6.id(), range6.id()],
            "every ip and cidr block, never a user block"
        );
        assert_positive_durations(&all.body);
    }

    async fn live_filters_read_as_crowdsec_reads_them(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("ip", "192.0.2.10", json!({"reason": "SSH brute force"})).await.expect(201);
        app.block("cidr", "198.51.100.0/24", json!({"reason": "web scan"})).await.expect(201);
        let owner = app.token("owner", "policy_owner").await;
        app.post(
            "/security/policy/blocks",
            &owner,
            json!({"entity_type": "ip", "value": "192.0.2.30", "reason": "imported list"}),
        )
        .await
        .expect(201);

        let cases: &[(&str, &[&str])] = &[
            ("?scopes=range", &["198.51.100.0/24"]),
            ("?scopes=IP", &["192.0.2.10", "192.0.2.30"]),
            ("?scopes=country", &[]),
            ("?scope=range", &["192.0.2.10", "198.51.100.0/24", "192.0.2.30"]),
            ("?origins=human", &["192.0.2.10", "198.51.100.0/24"]),
            ("?origins=heimdall,tyr", &["192.0.2.30"]),
            ("?scenarios_containing=ssh,WEB", &["192.0.2.10", "198.51.100.0/24"]),
            ("?scenarios_not_containing=scan", &["192.0.2.10", "192.0.2.30"]),
            ("?type=ban&scopes=range", &["198.51.100.0/24"]),
            ("?type=captcha", &[]),
            ("?value=192.0.2.30", &["192.0.2.30"]),
            ("?value=%3A%3Affff%3A192.0.2.10", &["192.0.2.10"]),
        ];
        for (query, expected) in cases {
            let reply = live(&app, &key, query).await;
            assert_eq!(values(&reply.body), *expected, "{query}");
        }
    }

    async fn bad_live_input_is_400_with_crowdsecs_body_shape(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        for query in [
            "?ip=not-an-ip",
            "?range=not-a-range",
            "?range=198.51.100.1/24",
            "?ip=192.0.2.10&contains=maybe",
            "?ip=192.0.2.10&range=192.0.2.0/24",
            "?ip=192.0.2.10:22",
        ] {
            let reply = app
                .bouncer_request(Method::GET, &format!("/v1/decisions{query}"), Some(&key))
                .await
                .expect(400);
            assert_eq!(content_type(&reply), Some(JSON_TYPE), "{query}");
            let object = reply.body.as_object().expect("an object");
            assert_eq!(object.len(), 1, "{query}: {}", reply.text);
            assert!(object["message"].is_string(), "{query}: {}", reply.text);
        }
    }

    async fn head_on_live_decisions_answers_200_plain_text_match_or_not(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("ip", "192.0.2.10", json!({})).await.expect(201);
        for query in ["?ip=192.0.2.10", "?ip=192.0.2.99"] {
            let path = format!("/v1/decisions{query}");
            let reply = app.bouncer_request(Method::HEAD, &path, Some(&key)).await.expect(200);
            assert_eq!(content_type(&reply), Some(TEXT_TYPE));
            assert_eq!(reply.text, "");
        }
    }

    async fn the_stream_starts_with_everything_then_sends_only_changes(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        let kept = app.block("ip", "192.0.2.10", json!({})).await.expect(201);
        let ended = app.block("cidr", "198.51.100.0/24", json!({})).await.expect(201);
        app.block("user", "mallory", json!({})).await.expect(201);

        let startup = pull(&app, &key, "?startup=true").await;
        assert_eq!(startup.body["deleted"], Value::Null);
        assert_eq!(new_values(&startup), vec!["192.0.2.10", "198.51.100.0/24"]);

        let quiet = pull(&app, &key, "").await;
        assert_eq!(quiet.text, EMPTY_STREAM);

        let added = app.block("ip", "2001:db8::10", json!({"duration_seconds": 60})).await;
        deactivate(&app, ended.id()).await;
        let changes = pull(&app, &key, "").await;
        assert_eq!(new_values(&changes), vec!["2001:db8::10"]);
        assert_eq!(decision_for(&changes.body["new"], "2001:db8::10")["id"], added.id());
        assert_eq!(deleted_values(&changes), vec!["198.51.100.0/24"]);
        assert_eq!(decision_for(&changes.body["deleted"], "198.51.100.0/24")["id"], ended.id());

        assert_eq!(pull(&app, &key, "").await.text, EMPTY_STREAM, "nothing is sent twice");

        app.block("ip", "2001:db8::10", json!({"duration_seconds": 3600})).await.expect(200);
        let extended = pull(&app, &key, "").await;
        assert_eq!(new_values(&extended), vec!["2001:db8::10"]);
        let duration = decision_for(&extended.body["new"], "2001:db8::10")["duration"].clone();
        assert_eq!(go_seconds(duration.as_str().unwrap()), 3600.0);

        let restarted = pull(&app, &key, "?startup=true").await;
        assert_eq!(new_values(&restarted), vec!["192.0.2.10", "2001:db8::10"]);
        assert_eq!(restarted.body["deleted"], Value::Null);
        let _ = kept;
    }

    async fn a_bouncers_first_pull_is_a_startup_pull(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("ip", "192.0.2.10", json!({})).await.expect(201);
        let first = pull(&app, &key, "").await;
        assert_eq!(new_values(&first), vec!["192.0.2.10"]);
        assert_eq!(pull(&app, &key, "").await.text, EMPTY_STREAM);
    }

    async fn head_on_the_stream_consumes_the_changes(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("ip", "192.0.2.10", json!({})).await.expect(201);
        let path = "/v1/decisions/stream";

        let startup = app
            .bouncer_request(Method::HEAD, &format!("{path}?startup=true"), Some(&key))
            .await
            .expect(200);
        assert_eq!(content_type(&startup), Some(TEXT_TYPE));
        assert_eq!(startup.text, "");
        assert_eq!(pull(&app, &key, "").await.text, EMPTY_STREAM, "HEAD moved the position");

        let quiet = app.bouncer_request(Method::HEAD, path, Some(&key)).await.expect(200);
        assert_eq!(content_type(&quiet), Some(JSON_TYPE));
        assert_eq!(quiet.headers[CONTENT_LENGTH], "27");
        assert_eq!(quiet.text, "");

        app.block("ip", "192.0.2.11", json!({})).await.expect(201);
        let changed = app.bouncer_request(Method::HEAD, path, Some(&key)).await.expect(200);
        let length: usize = changed.headers[CONTENT_LENGTH].to_str().unwrap().parse().unwrap();
        assert!(length > 27, "the length of the body it would have sent: {length}");
        assert_eq!(pull(&app, &key, "").await.text, EMPTY_STREAM, "HEAD consumed it");
    }

    async fn stream_filters_and_default_scopes(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("ip", "192.0.2.10", json!({"reason": "ssh brute force"})).await.expect(201);
        app.block("cidr", "198.51.100.0/24", json!({"reason": "web scan"})).await.expect(201);

        let cases: &[(&str, &[&str])] = &[
            ("", &["192.0.2.10", "198.51.100.0/24"]),
            ("&scopes=ip", &["192.0.2.10"]),
            ("&scopes=Range", &["198.51.100.0/24"]),
            ("&scopes=country", &[]),
            ("&origins=human", &["192.0.2.10", "198.51.100.0/24"]),
            ("&origins=heimdall", &[]),
            ("&scenarios_containing=SSH", &["192.0.2.10"]),
            ("&scenarios_not_containing=ssh", &["198.51.100.0/24"]),
            ("&dedup=false&type=captcha", &["192.0.2.10", "198.51.100.0/24"]),
        ];
        for (filters, expected) in cases {
            let reply = pull(&app, &key, &format!("?startup=true{filters}")).await;
            assert_eq!(new_values(&reply), *expected, "{filters}");
        }

        let scoped = bouncer_key(&app, "ranges-only").await;
        pull(&app, &scoped, "?startup=true&scopes=range").await;
        app.block("ip", "192.0.2.11", json!({})).await.expect(201);
        app.block("cidr", "203.0.113.0/24", json!({})).await.expect(201);
        let changes = pull(&app, &scoped, "?scopes=range").await;
        assert_eq!(new_values(&changes), vec!["203.0.113.0/24"]);
    }

    async fn an_allowlisted_address_leaves_the_stream_as_deleted_and_never_comes_back(
        app: TestApp
    ) {
        let key = bouncer_key(&app, "edge").await;
        let late = bouncer_key(&app, "late").await;
        app.block("ip", "192.0.2.10", json!({})).await.expect(201);
        app.block("ip", "203.0.113.5", json!({})).await.expect(201);
        pull(&app, &key, "?startup=true").await;

        app.update_policy(json!({"allowlist": ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]}))
            .await
            .expect(200);
        app.block("ip", "192.0.2.10", json!({})).await.expect(409);

        let changes = pull(&app, &key, "").await;
        assert_eq!(deleted_values(&changes), vec!["192.0.2.10"]);
        assert_eq!(changes.body["new"], Value::Null);
        let startup = pull(&app, &late, "?startup=true").await;
        assert_eq!(new_values(&startup), vec!["203.0.113.5"]);
        assert_eq!(live(&app, &key, "?ip=192.0.2.10").await.text, "null");
    }

    async fn a_value_blocked_again_is_new_and_not_deleted(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        let first = app.block("ip", "192.0.2.10", json!({"duration_seconds": 5})).await;
        pull(&app, &key, "?startup=true").await;

        app.clock.advance_seconds(10);
        let second = app.block("ip", "192.0.2.10", json!({"duration_seconds": 60})).await;
        assert_ne!(second.expect(201).id(), first.expect(201).id());
        let changes = pull(&app, &key, "").await;
        assert_eq!(new_values(&changes), vec!["192.0.2.10"]);
        assert_eq!(changes.body["deleted"], Value::Null);
    }

    async fn permanent_blocks_are_capped_and_sent_again_before_the_cap_runs_out(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("ip", "192.0.2.10", json!({})).await.expect(201);
        let month = 40 * 24 * 3600;
        app.block("ip", "192.0.2.11", json!({"duration_seconds": month})).await.expect(201);
        app.block("ip", "192.0.2.12", json!({"duration_seconds": 3600})).await.expect(201);

        let startup = pull(&app, &key, "?startup=true").await;
        assert_eq!(decision_for(&startup.body["new"], "192.0.2.10")["duration"], CAPPED);
        assert_eq!(decision_for(&startup.body["new"], "192.0.2.11")["duration"], CAPPED);

        app.clock.advance_seconds(CAP_SECONDS / 2 - 10);
        let before = pull(&app, &key, "").await;
        assert_eq!(
            deleted_values(&before),
            vec!["192.0.2.12"],
            "the short block expired, the long ones are not due yet"
        );
        assert_eq!(before.body["new"], Value::Null);

        app.clock.advance_seconds(20);
        let due = pull(&app, &key, "").await;
        assert_eq!(new_values(&due), vec!["192.0.2.10", "192.0.2.11"]);
        assert_eq!(decision_for(&due.body["new"], "192.0.2.10")["duration"], CAPPED);
        assert_eq!(pull(&app, &key, "").await.text, EMPTY_STREAM);

        app.clock.advance_seconds(CAP_SECONDS / 2);
        let again = pull(&app, &key, "").await;
        assert_eq!(new_values(&again), vec!["192.0.2.10", "192.0.2.11"]);
        let left = decision_for(&again.body["new"], "192.0.2.11")["duration"].clone();
        let left = go_seconds(left.as_str().unwrap());
        assert!(left < CAP_SECONDS as f64 && left > 0.0, "{left}");
    }

    async fn fc_01_step_5_the_mapped_address_is_one_ip_decision(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        let body = |value: &str, reason: &str, kind: &str| {
            json!({"entity_type": kind, "value": value, "reason": reason})
        };
        app.admin_post("/security/policy/blocks", body("::ffff:203.0.113.9", "mapped form", "ip"))
            .await
            .expect(201);
        app.admin_post("/security/policy/blocks", body("203.0.113.9", "plain form", "ip"))
            .await
            .expect(200);
        app.admin_post(
            "/security/policy/blocks",
            body("::ffff:203.0.113.0/120", "mapped range", "cidr"),
        )
        .await
        .expect(201);

        let startup = pull(&app, &key, "?startup=true").await;
        let decision = decision_for(&startup.body["new"], "203.0.113.9");
        assert_eq!(decision["scope"], "Ip");
        assert_eq!(new_values(&startup), vec!["203.0.113.9", "203.0.113.0/24"]);
        assert!(!startup.text.contains("::ffff:"), "{}", startup.text);
    }

    async fn fc_02_step_4_one_stream_entry_with_the_longest_expiry(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        for seconds in [60, 3600, 60] {
            let reply = app
                .block("ip", "198.51.100.20", json!({"duration_seconds": seconds}))
                .await;
            assert!(reply.status.is_success(), "{}", reply.text);
        }

        let startup = pull(&app, &key, "?startup=true").await;
        assert_eq!(new_values(&startup), vec!["198.51.100.20"]);
        let decision = decision_for(&startup.body["new"], "198.51.100.20");
        let seconds = go_seconds(decision["duration"].as_str().unwrap());
        assert!((3599.0..=3600.0).contains(&seconds), "{seconds}");
    }

    async fn fc_03_expired_blocks_leave_once_and_never_with_a_negative_duration(app: TestApp) {
        let a = bouncer_key(&app, "bouncer-a").await;
        let b = bouncer_key(&app, "bouncer-b").await;
        let c = bouncer_key(&app, "bouncer-c").await;

        pull(&app, &a, "?startup=true").await;
        pull(&app, &b, "?startup=true").await;

        let block = app
            .block("ip", "198.51.100.40", json!({"duration_seconds": 2}))
            .await
            .expect(201);

        let step3 = pull(&app, &a, "").await;
        let decision = decision_for(&step3.body["new"], "198.51.100.40");
        let seconds = go_seconds(decision["duration"].as_str().unwrap());
        assert!(seconds > 0.0 && seconds <= 2.0, "{seconds}");

        app.clock.advance_seconds(3);
        assert_eq!(app.check_ip("198.51.100.40").await.body["blocked"], false);
        assert_eq!(live(&app, &a, "?ip=198.51.100.40").await.text, "null");

        let a_first = pull(&app, &a, "").await;
        assert_eq!(deleted_values(&a_first), vec!["198.51.100.40"]);
        assert_eq!(decision_for(&a_first.body["deleted"], "198.51.100.40")["id"], block.id());
        assert_eq!(a_first.body["new"], Value::Null);
        let a_second = pull(&app, &a, "").await;
        assert_eq!(a_second.text, EMPTY_STREAM, "A's second pull does not repeat it");

        let b_pull = pull(&app, &b, "").await;
        assert!(!new_values(&b_pull).contains(&"198.51.100.40".to_string()));
        assert_eq!(b_pull.text, EMPTY_STREAM, "B never held it");

        let c_startup = pull(&app, &c, "?startup=true").await;
        assert_eq!(c_startup.text, EMPTY_STREAM, "C's startup pull does not contain it");

        let export = app
            .admin_get("/security/policy/blocks/export?format=ipset")
            .await
            .expect(200);
        assert!(!export.text.contains("198.51.100.40"), "{}", export.text);
        assert!(!export.text.contains("timeout -"), "{}", export.text);
    }

    async fn fc_04_ranges_stream_with_scope_range_and_their_prefix(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("cidr", "198.51.100.0/24", json!({})).await.expect(201);
        app.block("cidr", "2001:db8:abcd::/48", json!({})).await.expect(201);

        let startup = pull(&app, &key, "?startup=true").await;
        assert_eq!(new_values(&startup), vec!["198.51.100.0/24", "2001:db8:abcd::/48"]);
        for decision in decisions(&startup.body["new"]) {
            assert_eq!(decision["scope"], "Range", "{decision}");
            assert_eq!(decision["type"], "ban", "{decision}");
        }
        let inside = live(&app, &key, &format!("?ip={}", encode("2001:db8:abcd:1::5"))).await;
        assert_eq!(values(&inside.body), vec!["2001:db8:abcd::/48"]);
    }

    async fn fc_05_step_1_a_three_day_block_is_written_in_hours(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        app.block("ip", "203.0.113.70", json!({"duration_seconds": 259200}))
            .await
            .expect(201);

        let reply = live(&app, &key, "?ip=203.0.113.70").await;
        let duration = decision_for(&reply.body, "203.0.113.70")["duration"].clone();
        let duration = duration.as_str().unwrap();
        assert!(is_hours_minutes_seconds(duration), "{duration}");
        assert!(!duration.contains('d'), "{duration}");
        let seconds = go_seconds(duration);
        assert!((259190.0..=259200.0).contains(&seconds), "{duration} = {seconds}");
    }
}

#[test]
fn the_test_duration_reader_follows_go() {
    assert_eq!(go_seconds("3h59m57.791015368s").floor(), 14397.0);
    assert_eq!(go_seconds("-9.605602ms"), -0.009605602);
    assert_eq!(go_seconds("596h31m23s"), CAP_SECONDS as f64);
    assert!(is_hours_minutes_seconds("72h0m0s"));
    assert!(!is_hours_minutes_seconds("3d"));
    assert!(!is_hours_minutes_seconds("500ms"));
}

backend_tests! {
    async fn the_openapi_document_describes_the_bouncer_endpoints(app: TestApp) {
        let reply = app
            .request(Method::GET, "/openapi.json", None, None)
            .await
            .expect(200);
        let document = &reply.body;
        let scheme = &document["components"]["securitySchemes"]["crowdsec_key"];
        assert_eq!(scheme["type"], "apiKey", "{scheme}");
        assert_eq!(scheme["in"], "header");
        assert_eq!(scheme["name"], "X-Api-Key");
        for path in ["/v1/decisions", "/v1/decisions/stream"] {
            for method in ["get", "head"] {
                let operation = &document["paths"][path][method];
                assert!(operation.is_object(), "{method} {path}");
                assert_eq!(operation["security"], json!([{"crowdsec_key": []}]));
                let responses = &operation["responses"];
                for status in ["200", "403"] {
                    assert!(responses[status].is_object(), "{method} {path} {status}");
                }
                assert!(responses["401"].is_null(), "no 401: {method} {path}");
                assert!(responses["403"]["content"][JSON_TYPE].is_object());
            }
            let get = &document["paths"][path]["get"]["responses"];
            assert!(get["400"].is_object(), "{path}");
            let forbidden = &get["403"]["content"][JSON_TYPE]["schema"]["$ref"];
            assert_eq!(forbidden, "#/components/schemas/LapiMessage");
        }
        let head = &document["paths"]["/v1/decisions"]["head"]["responses"]["200"];
        assert!(head["content"][TEXT_TYPE].is_object(), "{head}");
    }
}

/// Writes `count` active `ip` blocks (10.0.x.y) straight into the database,
/// past the API, to have more than one page of the startup stream cheaply.
async fn insert_blocks_directly(app: &TestApp, count: i64) {
    use sqlx::{Connection, Executor};

    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(&app.database_url)
        .await
        .expect("the test database");
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) \
         INSERT INTO blocks (entity_type, value, family, reason, source, created_by, \
             created_at, created_seq, changed_seq) \
         SELECT 'ip', '10.0.' || (i / 256) || '.' || (i % 256), 4, 'bulk', 'system', \
             'test', {}, 0, 0 FROM n",
        app.now().millis()
    );
    connection
        .execute(sql.as_str())
        .await
        .expect("the blocks are inserted");
    connection.close().await.ok();
}

backend_tests! {
    async fn a_startup_stream_longer_than_a_page_sends_each_block_once(app: TestApp) {
        let key = bouncer_key(&app, "edge").await;
        insert_blocks_directly(&app, 9_000).await;
        app.block("user", "mallory", json!({})).await.expect(201);
        let last = app.block("ip", "192.0.2.10", json!({})).await.expect(201);

        let startup = pull(&app, &key, "?startup=true").await;
        let ids: Vec<i64> = decisions(&startup.body["new"])
            .iter()
            .map(|decision| decision["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids.len(), 9_001);
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "in id order, no repeat");
        assert_eq!(ids.last(), Some(&last.id()));

        let all = live(&app, &key, "").await;
        assert_eq!(decisions(&all.body).len(), 9_001);
    }
}

/// Sends `GET path` over HTTP/1.0 (no chunking: the body ends when the
/// server closes) from a socket with a small receive buffer, so that the
/// server can write only a little ahead of what has been read.
async fn slow_bouncer_get(app: &TestApp, path: &str, key: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;

    let address = app.base_url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address).await.expect("the server accepts");
    let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\nX-Api-Key: {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

backend_tests! {
    async fn a_block_created_during_a_startup_stream_is_deleted_when_deactivated(app: TestApp) {
        use std::collections::BTreeSet;
        use sqlx::{Connection, Executor};
        use tokio::io::AsyncReadExt;

        // Enough decisions (about 9 MB) that the stream is still being
        // written, a page at a time, once the first bytes have arrived.
        let key = bouncer_key(&app, "edge").await;
        let mut connection = sqlx::AnyConnection::connect(&app.database_url).await.unwrap();
        let sql = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 80000) \
             INSERT INTO blocks (entity_type, value, family, reason, source, created_by, \
                 created_at, created_seq, changed_seq) \
             SELECT 'ip', '10.' || (i / 65536) || '.' || ((i / 256) % 256) || '.' || (i % 256), \
                 4, 'bulk', 'system', 'test', {}, 0, 0 FROM n",
            app.now().millis()
        );
        connection.execute(sql.as_str()).await.unwrap();
        connection.close().await.ok();

        // The startup pull has read its position once its first bytes are
        // out; a block made now has a later change number.
        let mut stream = slow_bouncer_get(&app, "/v1/decisions/stream?startup=true", &key).await;
        let mut received = vec![0_u8; 1024];
        let first = stream.read(&mut received).await.unwrap();
        received.truncate(first);
        let late = app.block("ip", "192.0.2.77", json!({})).await.expect(201);
        stream.read_to_end(&mut received).await.unwrap();
        let text = String::from_utf8(received).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let startup: Value = serde_json::from_str(body).expect("a complete document");
        let mut held: BTreeSet<String> = values(&startup["new"]).into_iter().collect();

        // Whatever the bouncer holds after the next pull is what is active.
        deactivate(&app, late.id()).await;
        let next = pull(&app, &key, "").await;
        for value in deleted_values(&next) {
            held.remove(&value);
        }
        held.extend(new_values(&next));
        let all = live(&app, &key, "").await;
        let active: BTreeSet<String> = values(&all.body).into_iter().collect();
        assert!(!held.contains("192.0.2.77"), "a deactivated block stays with the bouncer");
        assert_eq!(held.len(), active.len());
    }
}
