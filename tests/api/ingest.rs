//! Bulk ingest of native honeypot logs: the real Cowrie and OpenCanary
//! samples, the field cases about their formats, retries and limits.

use serde_json::{json, Value};
use sqlx::Connection;

use crate::support::{encode, Reply, TestApp};

const COWRIE_LOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/samples/honeypot/cowrie/cowrie.json"
);
const OPENCANARY_LOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/samples/honeypot/opencanary/opencanary.log"
);

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn non_blank_lines(text: &str) -> usize {
    text.lines().filter(|line| !line.trim().is_empty()).count()
}

fn rejected_count(reply: &Reply) -> usize {
    reply.body["rejected"]
        .as_array()
        .expect("a rejected list")
        .len()
}

/// Every stored event of one source, all pages.
async fn events_of(app: &TestApp, query: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/security/honeypot/events?limit=1000&{query}{cursor}");
        let page = app.admin_get(&path).await.expect(200);
        events.extend(page.items());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={}", encode(next)),
            None => return events,
        }
    }
}

backend_tests! {
    async fn a_single_event_sent_again_under_its_idempotency_key_is_stored_once(app: TestApp) {
        let (honeypot_id, key) = app.honeypot("named-01", "ssh").await;
        let (_, other_key) = app.honeypot("named-02", "ssh").await;
        let event = json!({"event_type": "auth_attempt", "source_ip": "192.0.2.71",
                           "username": "root", "password": "hunter2"});

        let first = app.post_named_event(&key, b"attempt-1", event.clone()).await.expect(201);
        let again = app.post_named_event(&key, b"attempt-1", event.clone()).await.expect(201);
        let changed = json!({"event_type": "scan", "source_ip": "192.0.2.72"});
        let reused = app.post_named_event(&key, b"attempt-1", changed).await.expect(201);
        let other_name = app.post_named_event(&key, b"attempt-2", event.clone()).await.expect(201);
        let other_honeypot =
            app.post_named_event(&other_key, b"attempt-1", event.clone()).await.expect(201);

        let without_processed = |reply: &Reply| {
            let mut body = reply.body.clone();
            body.as_object_mut().unwrap().remove("is_processed");
            body
        };
        assert_eq!(without_processed(&again), without_processed(&first));
        assert_eq!(without_processed(&reused), without_processed(&first));
        assert_ne!(other_name.id(), first.id());
        assert_ne!(other_honeypot.id(), first.id());
        let stored = app
            .admin_get(&format!("/security/honeypot/events?honeypot_id={honeypot_id}"))
            .await
            .expect(200);
        assert_eq!(stored.items().len(), 2, "{}", stored.text);
    }

    async fn requests_racing_under_one_idempotency_key_store_one_event(app: TestApp) {
        let (_, key) = app.honeypot("named-race", "ssh").await;
        let event = json!({"event_type": "scan", "source_ip": "192.0.2.73"});

        let http = reqwest::Client::new();
        let posts: Vec<_> = (0..16)
            .map(|_| {
                let request = http
                    .post(format!("{}/security/honeypot/events", app.base_url))
                    .header("X-HONEYPOT-KEY", &key)
                    .header("Idempotency-Key", "race")
                    .json(&event);
                tokio::spawn(async move {
                    let reply = request.send().await.expect("an answer");
                    assert_eq!(reply.status().as_u16(), 201);
                    reply.json::<Value>().await.expect("an event")["id"].as_i64().unwrap()
                })
            })
            .collect();

        let mut ids = std::collections::BTreeSet::new();
        for post in posts {
            ids.insert(post.await.expect("the task ran"));
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
    }

    async fn a_malformed_idempotency_key_is_refused_and_stores_nothing(app: TestApp) {
        let (honeypot_id, key) = app.honeypot("named-bad", "ssh").await;
        let event = json!({"event_type": "scan", "source_ip": "192.0.2.74"});
        let too_long = vec![b'k'; 256];

        for name in [&b""[..], b"two words", "caf\u{e9}".as_bytes(), &too_long] {
            app.post_named_event(&key, name, event.clone()).await.expect_problem(400);
        }

        let stored = app
            .admin_get(&format!("/security/honeypot/events?honeypot_id={honeypot_id}"))
            .await
            .expect(200);
        assert!(stored.items().is_empty(), "{}", stored.text);
    }

    async fn an_event_row_stored_some_other_way_does_not_stop_ingest(app: TestApp) {
        // A row the writer did not number (a restore, a hand-made insert, an
        // older release during an upgrade) sits above the event sequence:
        // the next groups must number past it instead of failing on it.
        let (honeypot_id, key) = app.honeypot("stray-01", "ssh").await;
        let event = json!({"event_type": "scan", "source_ip": "192.0.2.61"});
        let first = app.post_event(&key, event.clone()).await.expect(201);
        let stray = first.id() + 1;
        let mut connection = sqlx::AnyConnection::connect(&app.database_url).await.unwrap();
        sqlx::query(
            "INSERT INTO honeypot_events (id, honeypot_id, event_type, source_ip, occurred_at, \
                 received_at, threat_level, threat_tags) \
             VALUES ($1, $2, 'scan', '192.0.2.62', 0, 0, 'low', '[]')",
        )
        .bind(stray)
        .bind(honeypot_id)
        .execute(&mut connection)
        .await
        .unwrap();

        let next = app.post_event(&key, event.clone()).await.expect(201);
        let bulk = app.post_bulk(&key, "valhalla", event.to_string()).await.expect(200);

        assert!(next.id() > stray, "{}", next.text);
        assert_eq!(bulk.body["accepted"], 1, "{}", bulk.text);
    }

    async fn every_line_of_the_real_cowrie_log_is_accounted_for(app: TestApp) {
        let (_, key) = app.honeypot("cowrie-01", "ssh").await;
        let log = read(COWRIE_LOG);

        let report = app.post_bulk(&key, "cowrie", log.clone()).await.expect(200);

        let accepted = report.body["accepted"].as_u64().unwrap() as usize;
        let skipped = report.body["skipped"].as_u64().unwrap() as usize;
        assert_eq!(accepted + skipped + rejected_count(&report), non_blank_lines(&log));
        assert_eq!(rejected_count(&report), 0, "{}", report.text);
        // From the log: 16 connects, 36 failed and 5 accepted logins, one
        // public-key attempt, one HTTP request sent to the SSH port, 14
        // commands and one upload are attack steps; the rest is bookkeeping.
        assert_eq!(accepted, 16 + 36 + 5 + 1 + 1 + 14 + 1, "{}", report.text);
    }

    async fn cowrie_records_map_to_the_documented_event_kinds(app: TestApp) {
        let (_, key) = app.honeypot("cowrie-01", "ssh").await;
        app.post_bulk(&key, "cowrie", read(COWRIE_LOG)).await.expect(200);

        let brute_forcer = events_of(&app, "source_ip=198.51.100.23&event_type=auth_attempt").await;
        assert_eq!(brute_forcer.len(), 30);
        let guess = &brute_forcer[0];
        assert_eq!(guess["protocol"], "ssh");
        assert_eq!(guess["destination_port"], 2222);
        assert_eq!(guess["threat_level"], "low");
        assert_eq!(guess["threat_tags"], json!(["brute_force"]));
        assert!(guess["session_id"].as_str().is_some_and(|id| id.len() == 12));
        assert_eq!(guess["payload"]["eventid"], "cowrie.login.failed");

        let intruder = events_of(&app, "source_ip=203.0.113.77").await;
        let accepted_login = intruder
            .iter()
            .find(|event| event["payload"]["eventid"] == "cowrie.login.success")
            .expect("the accepted login");
        assert_eq!(accepted_login["username"], "root");
        assert_eq!(accepted_login["password"], "admin");
        assert_eq!(accepted_login["threat_level"], "high");
        let commands: Vec<&str> = intruder
            .iter()
            .filter(|event| event["event_type"] == "exploitation")
            .filter_map(|event| event["command"].as_str())
            .collect();
        assert!(commands.contains(&"uname -a"), "{commands:?}");
        assert!(intruder.iter().any(|event| event["threat_level"] == "critical"));

        let scanner = events_of(&app, "source_ip=192.0.2.150&event_type=scan").await;
        assert_eq!(scanner.len(), 1);
        assert_eq!(scanner[0]["payload"]["version"], "GET / HTTP/1.1");

        let uploads = events_of(&app, "source_ip=198.51.100.204&threat_level=critical").await;
        assert!(
            uploads.iter().any(|event| event["payload"]["eventid"] == "cowrie.session.file_upload"),
            "the SFTP upload is a payload delivery"
        );
    }

    async fn every_line_of_the_real_opencanary_log_is_accounted_for(app: TestApp) {
        let (_, key) = app.honeypot("canary-01", "custom").await;
        let log = read(OPENCANARY_LOG);

        let report = app.post_bulk(&key, "opencanary", log.clone()).await.expect(200);

        let accepted = report.body["accepted"].as_u64().unwrap() as usize;
        let skipped = report.body["skipped"].as_u64().unwrap() as usize;
        assert_eq!(accepted + skipped + rejected_count(&report), non_blank_lines(&log));
        assert_eq!(skipped, 8, "the eight start-up lines: {}", report.text);
        assert_eq!(rejected_count(&report), 0, "{}", report.text);

        let events = events_of(&app, "").await;
        assert!(events.iter().all(|event| event["source_ip"] != ""));
        assert!(events.iter().all(|event| event["source_port"].as_i64().is_none_or(|p| p > 0)));
        let sprayer = events_of(&app, "source_ip=203.0.113.9&event_type=auth_attempt").await;
        let protocols: std::collections::BTreeSet<&str> =
            sprayer.iter().filter_map(|event| event["protocol"].as_str()).collect();
        for protocol in ["http", "redis", "ssh", "ftp", "mysql"] {
            assert!(protocols.contains(protocol), "{protocol} missing from {protocols:?}");
        }
        let redis_auth = sprayer.iter().find(|event| event["protocol"] == "redis").unwrap();
        assert_eq!(redis_auth["password"], "123456");
    }

    async fn fc_10_opencanary_local_time_holds_utc_and_is_stored_as_such(app: TestApp) {
        let (_, key) = app.honeypot("canary-test-1", "custom").await;
        let current = json!({"dst_host":"192.0.2.10","dst_port":22,
            "local_time":"2026-12-04 13:00:00.000000",
            "local_time_adjusted":"2026-12-04 23:00:00.000000",
            "logdata":{"USERNAME":"wmaker","PASSWORD":"hunter2",
                "LOCALVERSION":"SSH-2.0-OpenSSH_5.1p1 Debian-4",
                "REMOTEVERSION":"SSH-2.0-libssh2_1.9.0"},
            "logtype":4002,"node_id":"canary-test-1","src_host":"203.0.113.12",
            "src_port":50122,"utc_time":"2026-12-04 13:00:00.000000"});
        let older = json!({"dst_host":"192.0.2.10","dst_port":22,
            "local_time":"2026-12-04 13:05:00.000000",
            "logdata":{"USERNAME":"wmaker","PASSWORD":"hunter2"},
            "logtype":4002,"node_id":"canary-test-1","src_host":"203.0.113.13",
            "src_port":50122});
        let body = format!("{current}\n{older}\n");

        let report = app.post_bulk(&key, "opencanary", body).await.expect(200);

        assert_eq!(report.body["accepted"], 2, "{}", report.text);
        let first = &events_of(&app, "source_ip=203.0.113.12").await[0];
        assert_eq!(first["occurred_at"], "2026-12-04T13:00:00.000Z");
        assert_eq!(first["event_type"], "auth_attempt");
        assert_eq!(first["username"], "wmaker");
        assert_eq!(first["destination_port"], 22);
        assert_eq!(first["payload"], current);
        let second = &events_of(&app, "source_ip=203.0.113.13").await[0];
        assert_eq!(second["occurred_at"], "2026-12-04T13:05:00.000Z");
    }

    async fn fc_11_opencanary_sentinels_and_string_ports_never_reach_storage(app: TestApp) {
        let (_, key) = app.honeypot("canary-test-1", "custom").await;
        let lines = [
            r#"{"dst_host":"","dst_port":-1,"local_time":"2026-12-04 13:00:00.000000","logdata":{"msg":{"logdata":"Canary running!!!"}},"logtype":1001,"node_id":"canary-test-1","src_host":"","src_port":-1,"utc_time":"2026-12-04 13:00:00.000000"}"#,
            r#"{"dst_host":"192.0.2.10","dst_port":22,"local_time":"2026-12-04 13:00:30.000000","logdata":{"USERNAME":"opal_tester","PASSWORD":"x"},"logtype":4002,"node_id":"canary-test-1","src_host":"198.51.100.14","src_port":40000,"utc_time":"2026-12-04 13:00:30.000000"}"#,
            r#"{"dst_host":"192.0.2.10","dst_port":"38081","local_time":"2026-12-04 13:01:00.000000","logdata":{"PROTO":"TCP","SYN":"","TTL":"246"},"logtype":5001,"node_id":"canary-test-1","src_host":"198.51.100.15","src_port":"32767","utc_time":"2026-12-04 13:01:00.000000"}"#,
            r#"{"logtype": 4002, "src_host": "198.51.100.16""#,
        ];

        let report = app.post_bulk(&key, "opencanary", lines.join("\n")).await.expect(200);

        assert_eq!(report.body["accepted"], 2, "{}", report.text);
        assert_eq!(report.body["skipped"], 1, "{}", report.text);
        assert_eq!(report.body["rejected"][0]["line"], 4, "{}", report.text);
        assert_eq!(rejected_count(&report), 1);
        let scan = &events_of(&app, "source_ip=198.51.100.15").await[0];
        assert_eq!(scan["event_type"], "scan");
        assert_eq!(scan["destination_port"], 38081);
        assert_eq!(scan["source_port"], 32767);
        for event in events_of(&app, "").await {
            assert_ne!(event["source_ip"], "");
            assert_ne!(event["source_port"], -1);
            assert_ne!(event["destination_port"], -1);
        }
    }

    async fn fc_12_a_resent_batch_stores_nothing_new_and_equal_session_ids_stay_apart(
        app: TestApp
    ) {
        let (_, key) = app.honeypot("hp-test", "ssh").await;
        let first = r#"{"eventid":"cowrie.login.failed","username":"test_user_a","password":"123456","session":"c768498d","src_ip":"203.0.113.21","sensor":"hp-test","timestamp":"2026-01-10T08:00:00.000000Z","message":"login attempt [test_user_a/123456] failed"}"#;
        let second = r#"{"eventid":"cowrie.login.failed","username":"test_user_a","password":"123456","session":"c768498d","src_ip":"198.51.100.21","sensor":"hp-test","timestamp":"2026-06-10T08:00:00.000000Z","message":"login attempt [test_user_a/123456] failed"}"#;
        let body = format!("{first}\n{second}\n");

        let sent = app.post_bulk(&key, "cowrie", body.clone()).await.expect(200);
        let resent = app.post_bulk(&key, "cowrie", body).await.expect(200);

        assert_eq!(sent.body["accepted"], 2, "{}", sent.text);
        assert_eq!(sent.body["duplicates"], 0, "{}", sent.text);
        assert_eq!(resent.body["duplicates"], 2, "{}", resent.text);
        let events = events_of(&app, "").await;
        let sessions: Vec<_> = events.iter().filter(|e| e["session_id"] == "c768498d").collect();
        assert_eq!(sessions.len(), 2);
        let mut sources: Vec<&str> =
            sessions.iter().filter_map(|event| event["source_ip"].as_str()).collect();
        sources.sort();
        assert_eq!(sources, ["198.51.100.21", "203.0.113.21"]);
    }

    async fn an_attacker_cannot_hide_an_event_behind_a_nul_character(app: TestApp) {
        let (honeypot_id, key) = app.honeypot("hp-nul", "ssh").await;
        let line = r#"{"eventid":"cowrie.login.failed","username":"ro\u0000ot","password":"ab\u0000cd","session":"0a0b0c0d","src_ip":"203.0.113.44","timestamp":"2026-01-10T08:00:00.000000Z","message":"login attempt"}"#;
        let single = json!({"event_type": "auth_attempt", "source_ip": "203.0.113.44",
                            "username": "\u{0}admin", "payload": {"typed\u{0}": "x\u{0}"}});

        let bulk = app.post_bulk(&key, "cowrie", format!("{line}\n")).await.expect(200);
        app.post_event(&key, single).await.expect(201);

        assert_eq!(bulk.body["accepted"], 1, "{}", bulk.text);
        assert_eq!(rejected_count(&bulk), 0, "{}", bulk.text);
        let events = events_of(&app, &format!("honeypot_id={honeypot_id}")).await;
        assert_eq!(events.len(), 2, "{events:?}");
        let mut usernames: Vec<&str> =
            events.iter().filter_map(|event| event["username"].as_str()).collect();
        usernames.sort();
        assert_eq!(usernames, ["ro\u{fffd}ot", "\u{fffd}admin"]);
        let stored = events.iter().find(|event| event["payload"]["eventid"].is_string());
        assert_eq!(stored.expect("the Cowrie event")["payload"]["password"], "ab\u{fffd}cd");
        let single = events.iter().find(|event| event["username"] == "\u{fffd}admin");
        assert_eq!(single.expect("the single event")["payload"]["typed\u{fffd}"], "x\u{fffd}");
    }

    async fn a_bulk_record_naming_a_key_twice_is_rejected_alone(app: TestApp) {
        let (_, key) = app.honeypot("hp-dup", "ssh").await;
        let good = r#"{"event_type":"scan","source_ip":"203.0.113.50"}"#;
        let twice = r#"{"event_type":"scan","source_ip":"203.0.113.51","source_ip":"127.0.0.1"}"#;

        let lines = app.post_bulk(&key, "valhalla", format!("{good}\n{twice}\n")).await.expect(200);
        let array = app.post_bulk(&key, "valhalla", format!("[{twice}]")).await;

        assert_eq!(lines.body["accepted"], 1, "{}", lines.text);
        assert_eq!(lines.body["rejected"][0]["line"], 2, "{}", lines.text);
        let reason = lines.body["rejected"][0]["error"].as_str().unwrap_or_default();
        assert!(reason.contains("duplicate key"), "{}", lines.text);
        array.expect_problem(400);
        assert_eq!(events_of(&app, "").await.len(), 1);
    }

    async fn a_bad_line_is_reported_with_its_number_and_never_stops_the_rest(app: TestApp) {
        let (_, key) = app.honeypot("hp-1", "ssh").await;
        let good = |ip: &str| {
            json!({"event_type": "scan", "source_ip": ip,
                   "occurred_at": "2026-12-04T13:00:00Z"}).to_string()
        };
        let body = [
            good("198.51.100.1"),
            "{not json".to_string(),
            String::new(),
            json!({"event_type": "scan", "source_ip": "not-an-address"}).to_string(),
            json!({"event_type": "bogus", "source_ip": "198.51.100.2"}).to_string(),
            json!({"event_type": "scan", "source_ip": "198.51.100.3", "extra": 1}).to_string(),
            good("198.51.100.4"),
        ]
        .join("\n");

        let report = app.post_bulk(&key, "valhalla", body).await.expect(200);

        assert_eq!(report.body["accepted"], 2, "{}", report.text);
        let lines: Vec<i64> = report.body["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rejected| rejected["line"].as_i64().unwrap())
            .collect();
        assert_eq!(lines, [2, 4, 5, 6]);
        assert_eq!(events_of(&app, "").await.len(), 2);
    }

    async fn a_json_array_body_is_read_like_ndjson(app: TestApp) {
        let (_, key) = app.honeypot("hp-1", "ssh").await;
        let body = json!([
            {"event_type": "connection", "source_ip": "198.51.100.1",
             "occurred_at": "2026-12-04T13:00:00Z"},
            {"event_type": "nope", "source_ip": "198.51.100.1"},
        ]);

        let report = app.post_bulk(&key, "valhalla", body.to_string()).await.expect(200);

        assert_eq!(report.body["accepted"], 1, "{}", report.text);
        assert_eq!(report.body["rejected"][0]["line"], 2, "{}", report.text);
    }

    async fn bulk_uploads_need_an_active_key_and_a_json_media_type(app: TestApp) {
        let (id, key) = app.honeypot("hp-1", "ssh").await;
        let line = json!({"event_type": "scan", "source_ip": "198.51.100.1"}).to_string();

        app.post_bulk("hp_wrong", "valhalla", line.clone()).await.expect_problem(401);
        let plain = app
            .send_raw(
                reqwest::Method::POST,
                "/security/honeypot/events/bulk",
                None,
                Some("text/plain"),
                line.clone().into_bytes(),
            )
            .await;
        plain.expect_problem(401);
        app.post_bulk(&key, "elsewhere", line.clone()).await.expect_problem(400);
        app.admin_post(&format!("/security/honeypot/instances/{id}/deactivate"), json!({}))
            .await
            .expect(200);
        app.post_bulk(&key, "valhalla", line).await.expect_problem(401);
    }

    async fn a_bulk_body_over_its_limit_is_refused_whole(app: TestApp) {
        let (_, key) = app.honeypot("hp-1", "ssh").await;
        let line = |n: usize| {
            json!({"event_type": "scan", "source_ip": "198.51.100.1",
                   "occurred_at": format!("2026-12-04T13:00:{:02}.{:03}Z", n / 1000 % 60, n % 1000)})
                .to_string()
        };
        // The harness allows 64 KiB for ordinary bodies and 256 KiB for bulk.
        let within: Vec<String> = (0..1500).map(line).collect();
        let within = within.join("\n");
        assert!(within.len() > 64 * 1024 && within.len() < 256 * 1024);
        let over: Vec<String> = (0..5000).map(line).collect();

        let accepted = app.post_bulk(&key, "valhalla", within).await.expect(200);
        app.post_bulk(&key, "valhalla", over.join("\n")).await.expect_problem(413);

        assert_eq!(accepted.body["accepted"], 1500, "{}", accepted.text);
        assert_eq!(events_of(&app, "").await.len(), 1500, "the refused body stored nothing");
    }
}
