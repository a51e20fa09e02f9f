//! The main job on real input: a real Cowrie log (see
//! `shared/data/honeypot/PROVENANCE.md`) posted event by event through
//! `POST /security/honeypot/events`, then read back through the list filters
//! and the dashboard.
//!
//! How a Cowrie record becomes an API event:
//!
//! | Cowrie `eventid`                 | `event_type`   | also sent                          |
//! |----------------------------------|----------------|------------------------------------|
//! | `cowrie.session.connect`         | `connection`   |                                    |
//! | `cowrie.login.failed`            | `auth_attempt` | `username`, `password` (if any)    |
//! | `cowrie.login.success`           | `auth_attempt` | the same, and `"success": true`    |
//! |                                  |                | in `payload`                       |
//! | `cowrie.command.input`           | `exploitation` | `command` (the record's `input`)   |
//! | `cowrie.session.file_upload`,    | `exploitation` |                                    |
//! | `cowrie.session.file_download`   |                |                                    |
//! | anything else                    | not posted     |                                    |
//!
//! Every posted event carries `source_ip` (`src_ip`), `source_port`
//! (`src_port`), `destination_port` (`dst_port`), `protocol`, `session_id`
//! (`session`), `occurred_at` (`timestamp`) and the whole record as `payload`.
//!
//! Not posted, because they carry no attack step of their own:
//! `cowrie.client.*` (version, key exchange, terminal size, environment and
//! fingerprints describe the client), `cowrie.session.params`,
//! `cowrie.telnet.option`, `cowrie.session.closed` and `cowrie.log.closed`
//! (bookkeeping of a session already counted at connect), and
//! `cowrie.command.failed` (Cowrie's answer to a command already posted from
//! its `cowrie.command.input`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::support::{encode, TestApp};

const COWRIE_LOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/samples/honeypot/cowrie/cowrie.json"
);

const EVENTS: &str = "/security/honeypot/events";
const EVENT_TYPES: [&str; 4] = ["connection", "auth_attempt", "exploitation", "scan"];

/// The records of the Cowrie log, in file order.
fn cowrie_records() -> Vec<Map<String, Value>> {
    let text = std::fs::read_to_string(COWRIE_LOG).expect("the Cowrie sample in samples/honeypot");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(record)) => record,
            other => panic!("not a JSON object: {line}: {other:?}"),
        })
        .collect()
}

/// The API event for a Cowrie record, or `None` for records that are not
/// posted (see the table above).
fn event_for(record: &Map<String, Value>) -> Option<Value> {
    let eventid = record["eventid"].as_str().expect("an eventid");
    let mut payload = record.clone();
    let mut event = json!({
        "source_ip": record["src_ip"],
        "source_port": record["src_port"],
        "destination_port": record["dst_port"],
        "protocol": record["protocol"],
        "session_id": record["session"],
        "occurred_at": record["timestamp"],
    });
    match eventid {
        "cowrie.session.connect" => event["event_type"] = json!("connection"),
        "cowrie.login.failed" | "cowrie.login.success" => {
            event["event_type"] = json!("auth_attempt");
            for field in ["username", "password"] {
                if let Some(value) = record.get(field) {
                    event[field] = value.clone();
                }
            }
            if eventid == "cowrie.login.success" {
                payload.insert("success".to_string(), json!(true));
            }
        }
        "cowrie.command.input" => {
            event["event_type"] = json!("exploitation");
            event["command"] = record["input"].clone();
        }
        "cowrie.session.file_upload" | "cowrie.session.file_download" => {
            event["event_type"] = json!("exploitation");
        }
        _ => return None,
    }
    event["payload"] = Value::Object(payload);
    Some(event)
}

/// The instant as the API writes it: UTC, milliseconds, `Z`. Cowrie writes
/// microseconds, which the API truncates.
fn as_stored(cowrie_timestamp: &str) -> String {
    let (seconds, fraction) = cowrie_timestamp
        .trim_end_matches('Z')
        .split_once('.')
        .expect("a fractional second");
    format!("{seconds}.{:0<3.3}Z", fraction)
}

/// Every event `GET /security/honeypot/events?{query}` lists, page by page.
async fn list_all(app: &TestApp, query: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("{EVENTS}?{query}&limit=10");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", encode(cursor)));
        }
        let page = app.admin_get(&path).await.expect(200);
        events.extend(page.items());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return events,
        }
    }
    panic!("{query}: no last page after 100 pages");
}

async fn count_listed(app: &TestApp, source_ip: &str, event_type: &str) -> usize {
    let query = format!("source_ip={}&event_type={event_type}", encode(source_ip));
    let events = list_all(app, &query).await;
    assert!(
        events
            .iter()
            .all(|event| event["source_ip"] == source_ip && event["event_type"] == event_type),
        "{query}: {events:?}"
    );
    events.len()
}

fn commands(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|event| event["command"].as_str())
        .collect()
}

/// Sets the clock a minute after the log's last record, so all of it falls
/// inside the dashboard's 24-hour window.
fn set_clock_after(app: &TestApp, records: &[Map<String, Value>]) {
    let last = records
        .iter()
        .map(|record| record["timestamp"].as_str().unwrap())
        .max()
        .expect("records");
    let last = valhalla::time::Timestamp::parse(last).expect("a Cowrie timestamp");
    app.clock.set(last.plus_seconds(60).expect("in range"));
}

backend_tests! {
    async fn a_real_cowrie_log_is_stored_counted_and_summarised_per_attacker(app: TestApp) {
        let records = cowrie_records();
        set_clock_after(&app, &records);
        let (honeypot_id, key) = app.honeypot("cowrie-vm", "ssh").await;

        let mut expected: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut posted = 0;
        for record in &records {
            let Some(event) = event_for(record) else {
                continue;
            };
            let stored = app.post_event(&key, event.clone()).await.expect(201);
            let timestamp = record["timestamp"].as_str().unwrap();
            assert_eq!(
                stored.body["occurred_at"],
                as_stored(timestamp),
                "{}",
                stored.text
            );
            assert_eq!(stored.body["source_ip"], record["src_ip"]);
            assert_eq!(stored.body["session_id"], record["session"]);
            assert_eq!(stored.body["payload"], event["payload"]);
            let source = record["src_ip"].as_str().unwrap().to_string();
            let kind = event["event_type"].as_str().unwrap().to_string();
            *expected.entry((source, kind)).or_default() += 1;
            posted += 1;
        }
        assert_eq!(posted, 72, "the file's attack steps");

        let mut by_source: BTreeMap<String, i64> = BTreeMap::new();
        let mut by_type: BTreeMap<String, i64> = BTreeMap::new();
        for ((source, kind), count) in &expected {
            *by_source.entry(source.clone()).or_default() += *count as i64;
            *by_type.entry(kind.clone()).or_default() += *count as i64;
        }
        for source in by_source.keys() {
            for kind in EVENT_TYPES {
                let listed = count_listed(&app, source, kind).await;
                let wanted = expected.get(&(source.clone(), kind.to_string())).copied();
                assert_eq!(listed, wanted.unwrap_or(0), "{source} {kind}");
            }
        }

        // Ground truth from PROVENANCE.md, independent of the mapping above.
        assert_eq!(
            count_listed(&app, "198.51.100.23", "auth_attempt").await,
            30
        );
        assert_eq!(count_listed(&app, "198.51.100.23", "connection").await, 10);
        assert_eq!(count_listed(&app, "198.51.100.23", "exploitation").await, 0);
        let guesses = list_all(&app, "source_ip=198.51.100.23&threat_level=low").await;
        assert_eq!(
            guesses.len(),
            30,
            "30 failed guesses, each a low brute-force step"
        );

        let b = list_all(&app, "source_ip=203.0.113.77").await;
        let accepted: Vec<&Value> = b
            .iter()
            .filter(|event| {
                event["threat_level"] == "high" && event["event_type"] == "auth_attempt"
            })
            .collect();
        assert_eq!(accepted.len(), 1, "root/admin accepted once");
        assert_eq!(accepted[0]["username"], "root");
        assert_eq!(accepted[0]["password"], "admin");
        assert_eq!(accepted[0]["threat_tags"], json!(["credential_compromise"]));
        let b_commands = commands(&b);
        for command in ["uname -a", "cat /etc/passwd", "chmod +x x.sh", "./x.sh"] {
            assert!(b_commands.contains(&command), "{command} in {b_commands:?}");
        }
        let fetch = b
            .iter()
            .find(|event| {
                event["command"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("wget "))
            })
            .expect("B's wget of a script");
        assert_eq!(fetch["threat_level"], "critical");

        let c = list_all(&app, "source_ip=192.0.2.150&event_type=exploitation").await;
        let mut c_commands = commands(&c);
        c_commands.sort_unstable();
        assert_eq!(c_commands, ["id", "uname -m"]);

        let d = list_all(&app, "source_ip=198.51.100.204").await;
        assert!(d.iter().any(|event| event["protocol"] == "telnet"));
        assert!(commands(&d)
            .iter()
            .any(|command| command.starts_with("/bin/busybox")));
        let upload = d
            .iter()
            .find(|event| event["payload"]["eventid"] == "cowrie.session.file_upload")
            .expect("D's SFTP upload");
        assert_eq!(upload["event_type"], "exploitation");
        assert_eq!(
            count_listed(&app, "198.51.100.204", "auth_attempt").await,
            4
        );

        let dashboard = app.admin_get("/security/dashboard").await.expect(200);
        let honeypots = &dashboard.body["honeypots"];
        assert_eq!(honeypots["instances_total"], 1);
        assert_eq!(honeypots["instances_active"], 1);
        assert_eq!(honeypots["events_24h"], posted);
        assert_eq!(
            honeypots["events_by_type_24h"],
            json!({"connection": 16, "auth_attempt": 41, "exploitation": 15, "scan": 0})
        );
        let by_type_json: Map<String, Value> = EVENT_TYPES
            .iter()
            .map(|kind| {
                (
                    kind.to_string(),
                    json!(by_type.get(*kind).copied().unwrap_or(0)),
                )
            })
            .collect();
        assert_eq!(honeypots["events_by_type_24h"], Value::Object(by_type_json));

        let mut top: Vec<(String, i64)> = by_source.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let top: Vec<Value> = top
            .iter()
            .map(|(source, events)| json!({"source_ip": source, "events": events}))
            .collect();
        assert_eq!(honeypots["top_sources_24h"], json!(top));
        assert_eq!(
            honeypots["top_sources_24h"][0],
            json!({"source_ip": "198.51.100.23", "events": 40})
        );

        let instances = app
            .admin_get("/security/honeypot/instances")
            .await
            .expect(200);
        assert_eq!(instances.items()[0]["id"], honeypot_id);
        assert_eq!(instances.items()[0]["event_count"], posted);

        app.clock.advance_seconds(24 * 3600);
        let a_day_later = app.admin_get("/security/dashboard").await.expect(200);
        let honeypots = &a_day_later.body["honeypots"];
        assert_eq!(honeypots["events_24h"], 0, "{}", a_day_later.text);
        assert_eq!(honeypots["top_sources_24h"], json!([]));
    }
}
