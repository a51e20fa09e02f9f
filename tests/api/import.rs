//! Bulk import of blocks: NDJSON and CSV, per-line errors with their line
//! numbers, duplicates within a file and against live blocks, the
//! allowlist, the change log and the index, roles, media types and limits.

use serde_json::{json, Value};
use sqlx::{AnyConnection, Connection, Row};

use crate::support::{instant, TestApp};

const NDJSON: &str = "application/x-ndjson";
const CSV: &str = "text/csv";

/// Imports as the admin and expects 200.
async fn import(app: &TestApp, content_type: &str, body: &str) -> Value {
    app.import(&app.admin_token.clone(), content_type, body)
        .await
        .expect(200)
        .body
}

/// The `(line, error)` pairs of a report.
fn rejected(report: &Value) -> Vec<(u64, String)> {
    report["rejected"]
        .as_array()
        .unwrap_or_else(|| panic!("no rejected list in {report}"))
        .iter()
        .map(|line| {
            let number = line["line"].as_u64().expect("a line number");
            (
                number,
                line["error"].as_str().expect("an error").to_string(),
            )
        })
        .collect()
}

/// The line numbers of a report's rejected lines.
fn rejected_lines(report: &Value) -> Vec<u64> {
    rejected(report).into_iter().map(|(line, _)| line).collect()
}

/// `[created, extended, unchanged, rejected_total]` of a report.
fn counts(report: &Value) -> [u64; 4] {
    ["created", "extended", "unchanged", "rejected_total"].map(|field| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {report}"))
    })
}

/// The active block of an entity, from the list.
async fn active_block(app: &TestApp, entity_type: &str, value: &str) -> Value {
    let path = format!(
        "/security/policy/blocks?entity_type={entity_type}&value={}",
        crate::support::encode(value)
    );
    let items = app.admin_get(&path).await.expect(200).items();
    assert_eq!(items.len(), 1, "one active block of {value}: {items:?}");
    items[0].clone()
}

/// Seconds from the app's clock to a block's expiry.
fn seconds_left(app: &TestApp, block: &Value) -> i64 {
    (instant(&block["expires_at"]).millis() - app.now().millis()) / 1000
}

/// Sends only the head of an import whose `Content-Length` is past the
/// test server's limit (8 MiB), and returns the answer's text. A client
/// could not send such a body through reqwest and read the answer: the
/// server answers before reading the body and closes, which breaks the
/// client's write first.
async fn announce_oversized_body(app: &TestApp, token: &str) -> String {
    use std::io::{Read, Write};

    let address = app.base_url.trim_start_matches("http://").to_string();
    let head = format!(
        "POST /security/policy/blocks/import HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: {NDJSON}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        9 * 1024 * 1024
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("the server listens");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("a read timeout");
        stream.write_all(head.as_bytes()).expect("the head is sent");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("the exchange ends")
}

async fn database(app: &TestApp) -> AnyConnection {
    AnyConnection::connect(&app.database_url)
        .await
        .expect("the test database")
}

backend_tests! {
    async fn ndjson_lines_become_canonical_blocks_that_checks_see_at_once(app: TestApp) {
        let body = [
            json!({"entity_type": "ip", "value": "::ffff:203.0.113.10", "reason": "mapped"}),
            json!({"entity_type": "ip", "value": "2001:DB8::A", "reason": "v6",
                   "duration_seconds": 3600}),
            json!({"entity_type": "cidr", "value": "198.51.100.0/24", "reason": "range",
                   "expires_at": app.now().plus_seconds(7200).unwrap().to_string()}),
            json!({"entity_type": "user", "value": "mallory", "reason": "stuffing"}),
            json!({"entity_type": "api_key", "value": "key-123", "reason": "leaked"}),
        ]
        .map(|line| line.to_string())
        .join("\n");

        let report = import(&app, NDJSON, &body).await;

        assert_eq!(counts(&report), [5, 0, 0, 0], "{report}");
        assert_eq!(report["rejected"], json!([]));
        assert_eq!(app.check_ip("203.0.113.10").await.body["blocked"], json!(true));
        assert_eq!(app.check_ip("2001:db8::a").await.body["blocked"], json!(true));
        assert_eq!(app.check_ip("198.51.100.77").await.body["blocked"], json!(true));
        assert_eq!(app.check_ip("198.51.101.1").await.body["blocked"], json!(false));
        let v6 = active_block(&app, "ip", "2001:db8::a").await;
        assert_eq!(seconds_left(&app, &v6), 3600);
        let mapped = active_block(&app, "ip", "203.0.113.10").await;
        assert_eq!(mapped["expires_at"], Value::Null);
        assert_eq!(mapped["reason"], json!("mapped"));
        assert_eq!(mapped["source"], json!("human"));
        let user = app
            .admin_get("/security/policy/blocks/check?entity_type=user&value=mallory")
            .await
            .expect(200);
        assert_eq!(user.body["blocked"], json!(true));
    }

    async fn bad_ndjson_lines_are_reported_by_number_and_never_stop_the_rest(app: TestApp) {
        let too_long = "x".repeat(1001);
        let lines = [
            r#"{"entity_type":"ip","value":"192.0.2.1","reason":"good"}"#.to_string(),
            r#"{"entity_type":"ip","value":"192.0.2.2","reason":"#.to_string(),
            r#"{"entity_type":"host","value":"192.0.2.3","reason":"r"}"#.to_string(),
            String::new(),
            r#"{"entity_type":"ip","value":"192.0.2.300","reason":"r"}"#.to_string(),
            r#"{"entity_type":"cidr","value":"192.0.2.7/24","reason":"r"}"#.to_string(),
            r#"{"entity_type":"ip","value":"127.0.0.5","reason":"r"}"#.to_string(),
            r#"{"entity_type":"cidr","value":"0.0.0.0/0","reason":"r"}"#.to_string(),
            r#"{"entity_type":"ip","value":"192.0.2.9","reason":"r","duration_seconds":0}"#
                .to_string(),
            r#"{"entity_type":"ip","value":"192.0.2.9","reason":"r","duration_seconds":-5}"#
                .to_string(),
            format!(r#"{{"entity_type":"ip","value":"192.0.2.10","reason":"{too_long}"}}"#),
            r#"{"entity_type":"ip","value":"192.0.2.11","reason":"a\u0000b"}"#.to_string(),
            r#"{"entity_type":"ip","value":"192.0.2.12","reason":"r","extra":1}"#.to_string(),
            r#"{"entity_type":"ip","value":"192.0.2.13","reason":"good too"}"#.to_string(),
        ];
        let body = lines.join("\r\n");

        let report = import(&app, NDJSON, &body).await;

        assert_eq!(counts(&report), [2, 0, 0, 11], "{report}");
        assert_eq!(rejected_lines(&report), vec![2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        let errors: Vec<String> = rejected(&report).into_iter().map(|(_, error)| error).collect();
        assert!(errors[0].starts_with("malformed JSON"), "{}", errors[0]);
        assert!(errors[3].contains("192.0.2.0/24"), "{}", errors[3]);
        assert!(errors[4].contains("allowlist"), "{}", errors[4]);
        assert!(errors[5].contains("allowlist"), "{}", errors[5]);
        assert!(errors[6].starts_with("duration_seconds"), "{}", errors[6]);
        assert!(errors[8].starts_with("reason"), "{}", errors[8]);
        assert!(errors[9].contains("NUL"), "{}", errors[9]);
        assert_eq!(app.check_ip("192.0.2.13").await.body["blocked"], json!(true));
        assert_eq!(app.check_ip("192.0.2.2").await.body["blocked"], json!(false));
    }

    async fn csv_follows_rfc_4180_quoting_and_counts_lines_across_quoted_breaks(app: TestApp) {
        let body = "entity_type,value,reason,duration_seconds\r\n\
                    ip,198.51.100.1,\"ssh, then \"\"root\"\"\",3600\r\n\
                    \r\n\
                    cidr,2001:db8:5::/48,\"two\r\nlines\",\r\n\
                    ip,not-an-address,bad,\r\n\
                    user,\"eve\",quoted name,60\r\n\
                    ip,198.51.100.2,bad \"quote,\r\n\
                    ip,198.51.100.3,short\r\n\
                    ip,198.51.100.4,zero,0\r\n\
                    ip,198.51.100.5,fraction,1.5\r\n\
                    api_key,k-9,last,";

        let report = import(&app, CSV, body).await;

        assert_eq!(counts(&report), [4, 0, 0, 5], "{report}");
        assert_eq!(rejected_lines(&report), vec![6, 8, 9, 10, 11]);
        let first = active_block(&app, "ip", "198.51.100.1").await;
        assert_eq!(first["reason"], json!("ssh, then \"root\""));
        assert_eq!(seconds_left(&app, &first), 3600);
        let range = active_block(&app, "cidr", "2001:db8:5::/48").await;
        assert_eq!(range["reason"], json!("two\r\nlines"));
        assert_eq!(range["expires_at"], Value::Null);
        active_block(&app, "user", "eve").await;
        active_block(&app, "api_key", "k-9").await;
    }

    async fn a_csv_header_may_order_the_columns_but_not_invent_them(app: TestApp) {
        let reordered = "reason,value,entity_type\nfrom a list,203.0.113.40,ip\n";
        let report = import(&app, CSV, reordered).await;
        assert_eq!(counts(&report), [1, 0, 0, 0], "{report}");

        let token = app.admin_token.clone();
        let unknown = "entity_type,value,reason,severity\nip,203.0.113.41,r,high\n";
        let reply = app.import(&token, CSV, unknown).await.expect_problem(422);
        assert!(reply.text.contains("severity"), "{}", reply.text);
        let missing = "entity_type,value\nip,203.0.113.42\n";
        app.import(&token, CSV, missing).await.expect_problem(422);
        assert_eq!(app.check_ip("203.0.113.41").await.body["blocked"], json!(false));
    }

    async fn duplicates_in_the_file_and_against_live_blocks_extend_to_the_later_expiry(
        app: TestApp
    ) {
        app.block("ip", "203.0.113.50", json!({"duration_seconds": 600})).await.expect(201);
        app.block("ip", "203.0.113.51", json!({})).await.expect(201);
        let line = |value: &str, duration: Option<i64>| {
            json!({"entity_type": "ip", "value": value, "reason": "dup",
                   "duration_seconds": duration})
            .to_string()
        };
        let body = [
            line("203.0.113.50", Some(60)),    // shorter than the live block: unchanged
            line("203.0.113.50", Some(3600)),  // later: extended
            line("203.0.113.51", Some(3600)),  // the live block is permanent: unchanged
            line("203.0.113.52", Some(100)),   // created
            line("::ffff:203.0.113.52", Some(50)), // same entity, shorter: unchanged
            line("203.0.113.53", Some(100)),   // created
            line("203.0.113.53", None),        // permanent wins: extended
        ]
        .join("\n");

        let report = import(&app, NDJSON, &body).await;

        assert_eq!(counts(&report), [2, 2, 3, 0], "{report}");
        let extended = active_block(&app, "ip", "203.0.113.50").await;
        assert_eq!(seconds_left(&app, &extended), 3600);
        let permanent = active_block(&app, "ip", "203.0.113.51").await;
        assert_eq!(permanent["expires_at"], Value::Null);
        let kept = active_block(&app, "ip", "203.0.113.52").await;
        assert_eq!(seconds_left(&app, &kept), 100);
        let made_permanent = active_block(&app, "ip", "203.0.113.53").await;
        assert_eq!(made_permanent["expires_at"], Value::Null);

        // The same file again changes nothing.
        let again = import(&app, NDJSON, &body).await;
        assert_eq!(counts(&again), [0, 0, 7, 0], "{again}");
    }

    async fn duplicates_across_batches_count_once_and_every_batch_is_logged(app: TestApp) {
        // Three batches or more: SQLite takes 100,000 lines a batch,
        // PostgreSQL 20,000. As CSV to stay within the test server's 8 MiB.
        let mut lines = vec!["entity_type,value,reason,duration_seconds".to_string()];
        lines.extend((0..205_000).map(|n| {
            format!("ip,10.{}.{}.{},many,60", n / 65536 + 1, (n / 256) % 256, n % 256)
        }));
        lines.push("ip,10.1.0.0,again,120".to_string());

        let report = import(&app, CSV, &lines.join("\n")).await;

        assert_eq!(counts(&report), [205_000, 1, 0, 0], "{report}");
        let first = active_block(&app, "ip", "10.1.0.0").await;
        assert_eq!(seconds_left(&app, &first), 120);
        assert_eq!(first["reason"], json!("many"));
        let audit = app.admin_get("/security/audit?kind=blocks.imported").await.expect(200);
        let entries = audit.items();
        // A batch ends at the first 64 KiB slice that fills it, so its
        // size is only about the backend's batch size.
        assert!(entries.len() >= 3, "{}", audit.text);
        let created: u64 = entries
            .iter()
            .map(|entry| entry["new_value"]["created"].as_u64().expect("created"))
            .sum();
        assert_eq!(created, 205_000);
    }

    async fn an_expired_block_not_yet_swept_is_retired_and_a_new_one_created(app: TestApp) {
        let old = app
            .block("ip", "203.0.113.60", json!({"duration_seconds": 60}))
            .await
            .expect(201)
            .id();
        app.clock.advance_seconds(120);
        let body = json!({"entity_type": "ip", "value": "203.0.113.60", "reason": "back"})
            .to_string();

        let report = import(&app, NDJSON, &body).await;

        assert_eq!(counts(&report), [1, 0, 0, 0], "{report}");
        let new = active_block(&app, "ip", "203.0.113.60").await;
        assert_ne!(new["id"], json!(old));
        assert_eq!(new["expires_at"], Value::Null);
        let retired = app
            .admin_get("/security/policy/blocks?active=false&value=203.0.113.60")
            .await
            .expect(200)
            .items();
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0]["id"], json!(old));
        assert_eq!(retired[0]["deactivation_reason"], json!("expired"));
        assert_eq!(app.check_ip("203.0.113.60").await.body["blocked"], json!(true));
    }

    async fn a_live_block_the_index_has_not_seen_is_extended_not_doubled(app: TestApp) {
        // In the database but not in this server's index, as another
        // replica's blocks are until the change log reaches this one.
        let mut connection = database(&app).await;
        let now = app.now().millis();
        let mut unseen = Vec::new();
        let unseen_blocks = [("unseen-live", now + 600_000), ("unseen-ended", now - 60_000)];
        for (value, expires_at) in unseen_blocks {
            let row = sqlx::query(
                "INSERT INTO blocks (entity_type, value, reason, source, created_by, created_at, \
                     expires_at) \
                 VALUES ('user', $1, 'elsewhere', 'human', 'replica', $2, $3) RETURNING id",
            )
            .bind(value)
            .bind(now - 120_000)
            .bind(expires_at)
            .fetch_one(&mut connection)
            .await
            .expect("a block written behind the server's back");
            unseen.push(row.get::<i64, _>("id"));
        }
        let line = |value: &str| {
            json!({"entity_type": "user", "value": value, "reason": "list",
                   "duration_seconds": 3600})
            .to_string()
        };
        let body = [line("unseen-live"), line("unseen-ended"), line("fresh")].join("\n");

        let report = import(&app, NDJSON, &body).await;

        assert_eq!(counts(&report), [2, 1, 0, 0], "{report}");
        let extended = active_block(&app, "user", "unseen-live").await;
        assert_eq!(extended["id"], json!(unseen[0]));
        assert_eq!(seconds_left(&app, &extended), 3600);
        let replaced = active_block(&app, "user", "unseen-ended").await;
        assert_ne!(replaced["id"], json!(unseen[1]));
        assert_eq!(seconds_left(&app, &replaced), 3600);
        active_block(&app, "user", "fresh").await;
    }

    async fn an_import_batch_is_one_change_in_the_log_that_replicas_follow(app: TestApp) {
        let other = app.replica().await;
        other.check_ip("198.51.100.90").await;
        let body = "entity_type,value,reason,duration_seconds\n\
                    ip,198.51.100.90,r,\n\
                    cidr,2001:db8:90::/48,r,3600\n";

        let report = import(&app, CSV, body).await;

        assert_eq!(counts(&report), [2, 0, 0, 0], "{report}");
        let mut connection = database(&app).await;
        let change = sqlx::query(
            "SELECT seq, actor, block_id, blocks FROM blocklist_changes \
             WHERE kind = 'blocks.imported'",
        )
        .fetch_one(&mut connection)
        .await
        .expect("one imported change");
        let seq: i64 = change.get("seq");
        assert_eq!(change.get::<Option<i64>, _>("block_id"), None);
        assert_eq!(change.get::<i64, _>("blocks"), 2);
        let rows = sqlx::query(
            "SELECT created_seq, changed_seq FROM blocks \
             WHERE value IN ('198.51.100.90', '2001:db8:90::/48')",
        )
        .fetch_all(&mut connection)
        .await
        .expect("the imported rows");
        assert_eq!(rows.len(), 2);
        for row in &rows {
            assert_eq!(row.get::<i64, _>("created_seq"), seq);
            assert_eq!(row.get::<i64, _>("changed_seq"), seq);
        }
        connection.close().await.ok();

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let seen = other.check_ip("2001:db8:90::1").await.body["blocked"] == json!(true)
                && other.check_ip("198.51.100.90").await.body["blocked"] == json!(true);
            if seen {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the replica never saw the import");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        other.stop().await;
    }

    async fn only_policy_owners_and_admins_import(app: TestApp) {
        let body = |n: usize| {
            json!({"entity_type": "ip", "value": format!("192.0.2.{}", 100 + n), "reason": "r"})
                .to_string()
        };
        for (n, role) in ["viewer", "analyst", "detector", "bouncer"].into_iter().enumerate() {
            let token = app.token(&format!("{role}-importer"), role).await;
            app.import(&token, NDJSON, body(n)).await.expect_problem(403);
            assert_eq!(
                app.check_ip(&format!("192.0.2.{}", 100 + n)).await.body["blocked"],
                json!(false)
            );
        }
        let owner = app.token("owner-importer", "policy_owner").await;
        let report = app.import(&owner, NDJSON, body(10)).await.expect(200).body;
        assert_eq!(counts(&report), [1, 0, 0, 0]);
        assert_eq!(active_block(&app, "ip", "192.0.2.110").await["source"], json!("tyr"));
        app.import("vh_not_a_token_at_all", NDJSON, body(11)).await.expect_problem(401);
    }

    async fn other_media_types_and_oversized_bodies_are_refused(app: TestApp) {
        let token = app.admin_token.clone();
        let line = json!({"entity_type": "ip", "value": "192.0.2.200", "reason": "r"}).to_string();
        app.import(&token, "application/json", line.clone()).await.expect_problem(415);
        app.import(&token, "text/plain", line.clone()).await.expect_problem(415);
        let reply = app
            .send_raw(
                reqwest::Method::POST,
                "/security/policy/blocks/import",
                Some(&token),
                None,
                line.into_bytes(),
            )
            .await;
        reply.expect_problem(415);

        let answer = announce_oversized_body(&app, &token).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
    }

    async fn an_empty_file_imports_nothing(app: TestApp) {
        assert_eq!(counts(&import(&app, NDJSON, "").await), [0, 0, 0, 0]);
        assert_eq!(counts(&import(&app, CSV, "\r\n").await), [0, 0, 0, 0]);
    }
}
