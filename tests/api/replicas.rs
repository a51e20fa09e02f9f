//! Two servers on one database, as replicas sharing PostgreSQL run (and,
//! on SQLite, two servers on one file): a change made on either is enforced
//! by the other within a second, through the blocklist's change log.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::TestApp;

/// The longest a replica may take to enforce another's change.
const WITHIN: Duration = Duration::from_secs(1);

/// Polls `app`'s check for `address` until it answers `blocked`, and
/// returns how long that took; fails after `WITHIN`.
async fn until_checked(app: &TestApp, address: &str, blocked: bool) -> Duration {
    let started = Instant::now();
    loop {
        let check = app.check_ip(address).await;
        if check.body["blocked"] == json!(blocked) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WITHIN,
            "{address} still answers blocked = {} after {WITHIN:?}",
            !blocked
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

backend_tests! {
    async fn a_block_on_one_replica_is_enforced_by_the_other(app: TestApp) {
        let other = app.replica().await;
        other.check_ip("198.51.100.61").await;

        let block = app.block("ip", "198.51.100.61", json!({})).await.expect(201);
        until_checked(&other, "198.51.100.61", true).await;

        let deactivated = format!("/security/policy/blocks/{}/deactivate", block.id());
        other.admin_post(&deactivated, json!({"reason": "false positive"})).await.expect(200);
        until_checked(&app, "198.51.100.61", false).await;

        other.stop().await;
    }

    async fn ranges_and_extensions_reach_the_other_replica(app: TestApp) {
        let other = app.replica().await;

        app.block("cidr", "2001:db8:61::/48", json!({"duration_seconds": 60})).await.expect(201);
        until_checked(&other, "2001:db8:61::7", true).await;

        // Extended on the first replica: the second must answer with the
        // later expiry (its record of the block is cached since the check
        // above), and keep enforcing after the first minute.
        let extended = app
            .block("cidr", "2001:db8:61::/48", json!({"duration_seconds": 3600}))
            .await
            .expect(200);
        let started = Instant::now();
        loop {
            let check = other.check_ip("2001:db8:61::7").await;
            if check.body["matches"][0]["expires_at"] == extended.body["expires_at"] {
                break;
            }
            assert!(started.elapsed() < WITHIN, "still the old expiry: {}", check.text);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app.clock.advance_seconds(120);
        let check = other.check_ip("2001:db8:61::7").await;
        assert_eq!(check.body["blocked"], json!(true), "{}", check.text);

        other.stop().await;
    }

    async fn a_replica_started_later_loads_what_the_first_made(app: TestApp) {
        app.block("ip", "203.0.113.61", json!({})).await.expect(201);
        app.block("cidr", "2001:db8:62::/48", json!({"duration_seconds": 600})).await.expect(201);
        app.block("user", "Mallory O'Brien ünïcode", json!({})).await.expect(201);
        app.block("api_key", "key with spaces", json!({})).await.expect(201);
        let gone = app.block("ip", "203.0.113.62", json!({})).await.expect(201);
        let deactivate = format!("/security/policy/blocks/{}/deactivate", gone.id());
        app.admin_post(&deactivate, json!({})).await.expect(200);

        let other = app.replica().await;
        assert_eq!(other.check_ip("203.0.113.61").await.body["blocked"], json!(true));
        assert_eq!(other.check_ip("2001:db8:62::1").await.body["blocked"], json!(true));
        assert_eq!(other.check_ip("203.0.113.62").await.body["blocked"], json!(false));
        let names = [("user", "Mallory O'Brien ünïcode"), ("api_key", "key with spaces")];
        for (entity_type, value) in names {
            let path = format!(
                "/security/policy/blocks/check?entity_type={entity_type}&value={}",
                crate::support::encode(value)
            );
            let check = other.admin_get(&path).await.expect(200);
            assert_eq!(check.body["blocked"], json!(true), "{entity_type}: {}", check.text);
        }

        // Start-up honours expiry too.
        app.clock.advance_seconds(601);
        let later = app.replica().await;
        assert_eq!(later.check_ip("2001:db8:62::1").await.body["blocked"], json!(false));

        later.stop().await;
        other.stop().await;
    }

    async fn a_block_racing_an_allowlist_change_never_outlives_it(app: TestApp) {
        let other = app.replica().await;
        let mut allowlist = app.admin_get("/security/policy/").await.body["allowlist"].clone();

        // Each round allowlists a new network on one server while the other
        // blocks an address inside it. Whichever commits first, the address
        // must end up not blocked: refused, or deactivated by the change.
        for round in 0..12 {
            let network = format!("10.61.{round}.0/24");
            let address = format!("10.61.{round}.7");
            allowlist.as_array_mut().expect("a list").push(json!(network));
            let policy = app.update_policy(json!({"allowlist": allowlist.clone()}));
            let block = other.block("ip", &address, json!({}));
            let (policy, block) = tokio::join!(policy, block);

            policy.expect(200);
            assert!(
                [200, 201, 409].contains(&block.status.as_u16()),
                "{}",
                block.text
            );
            until_checked(&app, &address, false).await;
            until_checked(&other, &address, false).await;
        }

        other.stop().await;
    }

    async fn concurrent_writes_on_both_replicas_all_succeed(app: TestApp) {
        let other = app.replica().await;

        // Blocks and extensions of a few addresses, sent at once to both
        // servers: each write takes the other server's turn on the database
        // into account, so none may fail with a 500.
        let http = reqwest::Client::new();
        let mut writes = Vec::new();
        for n in 0..48 {
            let base = if n % 2 == 0 { &app.base_url } else { &other.base_url };
            let request = http
                .post(format!("{base}/security/policy/blocks"))
                .bearer_auth(&app.admin_token)
                .json(&json!({
                    "entity_type": "ip",
                    "value": format!("198.51.100.{}", 70 + n % 6),
                    "reason": "concurrent",
                    "duration_seconds": 60 + n,
                }));
            writes.push(tokio::spawn(request.send()));
        }
        for write in writes {
            let reply = write.await.expect("the task ran").expect("an answer");
            let status = reply.status().as_u16();
            let text = reply.text().await.unwrap_or_default();
            assert!(status == 200 || status == 201, "{status}: {text}");
        }

        other.stop().await;
    }

    async fn events_written_through_both_replicas_are_each_judged_once(app: TestApp) {
        // Both servers store events at once while both engines judge: event
        // ids follow commit order across the two writers, so an engine that
        // resumes "after the last id judged" never passes over an event
        // another writer commits late, and never judges one twice.
        const SOURCES: usize = 12;
        const PER_SERVER: usize = 240;
        let other = app.replica().await;
        let (_, key) = app.honeypot("ssh-both", "ssh").await;
        let source = |n: usize| format!("203.0.113.{}", 200 + n % SOURCES);

        let http = reqwest::Client::new();
        let mut posts = Vec::new();
        for n in 0..2 * PER_SERVER {
            let base = if n % 2 == 0 { &app.base_url } else { &other.base_url };
            let request = http
                .post(format!("{base}/security/honeypot/events"))
                .header("X-HONEYPOT-KEY", &key)
                .json(&json!({"event_type": "scan", "source_ip": source(n)}));
            posts.push(tokio::spawn(request.send()));
        }
        for post in posts {
            let reply = post.await.expect("the task ran").expect("an answer");
            assert_eq!(reply.status().as_u16(), 201);
        }
        app.wait_for_engine().await;
        other.wait_for_engine().await;

        let incidents = app.admin_get("/security/incidents?limit=1000").await.expect(200);
        let counted: i64 = incidents
            .items()
            .iter()
            .filter(|incident| incident["source_ip"].as_str().is_some_and(|ip| {
                (0..SOURCES).any(|n| source(n) == ip)
            }))
            .map(|incident| incident["event_count"].as_i64().unwrap())
            .sum();
        assert_eq!(counted, (2 * PER_SERVER) as i64, "{}", incidents.text);

        other.stop().await;
    }
}

/// Replicas reach a shared PostgreSQL across a network: the URL's
/// `sslmode` must give an encrypted session. Needs a server with `ssl = on`
/// (Debian's default, with its self-signed certificate; `require` encrypts
/// without verifying, as libpq's `require` does).
#[tokio::test]
async fn postgres_sessions_are_encrypted_when_the_url_asks() {
    let admin_url = crate::support::postgres_admin_url();
    let separator = if admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{admin_url}{separator}sslmode=require");
    let db = valhalla::storage::Db::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("no TLS session with PostgreSQL (is ssl on?): {error}"));

    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(db.reader())
            .await
            .expect("the session's TLS state");

    assert!(encrypted);
    db.close().await;
}
