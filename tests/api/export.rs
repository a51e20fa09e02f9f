//! The blocklist export: each format's lines, merged nftables intervals,
//! ipset sizes and timeouts, the allowlist, ETag and 304, and who may read
//! it. nftables output is checked by `nft -c -f`, ipset output by
//! `ipset restore` in a network namespace of its own, and the STIX bundle
//! by `stix2_validator`, where those are installed (see `.ci/run`).

use std::process::Command;

use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::{json, Value};
use sqlx::{AnyConnection, Connection, Executor};
use valhalla::blocklist::entity::range_key;
use valhalla::blocklist::Network;

use crate::support::{Reply, TestApp};

/// `GET /security/policy/blocks/export?format={format}` as the admin.
async fn export(app: &TestApp, format: &str) -> Reply {
    let path = format!("/security/policy/blocks/export?format={format}");
    app.admin_get(&path).await.expect(200)
}

/// The export with an `If-None-Match` header, as the admin.
async fn export_if_none_match(app: &TestApp, format: &str, etag: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!(
            "{}/security/policy/blocks/export?format={format}",
            app.base_url
        ))
        .bearer_auth(&app.admin_token)
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("the server answers")
}

fn header(reply: &Reply, name: reqwest::header::HeaderName) -> &str {
    reply
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// The elements of an nftables set in the export, in order.
fn nft_elements(text: &str, set: &str) -> Vec<String> {
    let start = text
        .find(&format!("set {set} {{"))
        .unwrap_or_else(|| panic!("no set {set} in {text}"));
    let body = &text[start..];
    let body = &body[..body.find("\n\t}\n").expect("the set ends")];
    assert!(body.contains("flags interval"), "{body}");
    let Some(elements) = body.split_once("elements = {") else {
        return Vec::new();
    };
    elements
        .1
        .trim_end()
        .trim_end_matches('}')
        .split(',')
        .map(|element| element.trim().to_string())
        .collect()
}

/// Runs `nft -c -f` over an nftables export, or says why it cannot.
fn check_with_nft(text: &str) {
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("skipping the nft check: `nft` is not installed (Debian package nftables)");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("blocklist.nft");
    std::fs::write(&path, text).expect("the file is written");
    let output = Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("nft runs");
    assert!(
        output.status.success(),
        "nft -c refused the export: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Loads an ipset export with `ipset restore` inside a network namespace of
/// its own (so the host's sets stay untouched), or says why it cannot.
fn check_with_ipset(text: &str) {
    if Command::new("ipset").arg("version").output().is_err() {
        eprintln!("skipping the ipset check: `ipset` is not installed (Debian package ipset)");
        return;
    }
    let namespace = Command::new("unshare").args(["-n", "true"]).output();
    if !namespace.is_ok_and(|output| output.status.success()) {
        eprintln!("skipping the ipset check: cannot make a network namespace (needs root)");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("blocklist.ipset");
    std::fs::write(&path, text).expect("the file is written");
    let output = Command::new("unshare")
        .args(["-n", "ipset", "-file"])
        .arg(&path)
        .arg("restore")
        .output()
        .expect("ipset runs");
    assert!(
        output.status.success(),
        "ipset restore refused the export: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `stix2_validator` (its path in `VALHALLA_STIX2_VALIDATOR`) over a
/// bundle, or says why it cannot.
fn check_with_stix_validator(text: &str) {
    let Ok(validator) = std::env::var("VALHALLA_STIX2_VALIDATOR") else {
        eprintln!("skipping STIX validation: VALHALLA_STIX2_VALIDATOR is not set");
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("bundle.json");
    std::fs::write(&path, text).expect("the file is written");
    let output = Command::new(&validator)
        .arg("--strict")
        .arg(&path)
        .output()
        .unwrap_or_else(|error| panic!("{validator} runs: {error}"));
    assert!(
        output.status.success(),
        "stix2_validator refused the bundle: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Lines of an export that start with `prefix`.
fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .collect()
}

/// Inserts active, permanent `ip` blocks straight into the database, as a
/// bulk import would, then restarts the server so that it starts from
/// them: tens of thousands of POSTs would take minutes. Skips the allowlist
/// check on purpose, so tests can also stand in for a block that an
/// allowlist change has not deactivated yet.
async fn insert_ip_blocks(app: &mut TestApp, addresses: &[String]) {
    let mut connection = AnyConnection::connect(&app.database_url)
        .await
        .expect("the test database");
    let created_at = app.now().millis();
    let mut tx = connection.begin().await.expect("a transaction");
    for chunk in addresses.chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|address| {
                let network = Network::host(address.parse().expect("an address"));
                let (start, end) = network.range();
                format!(
                    "('ip', '{address}', {}, '{}', '{}', 'bulk', 'human', 'test', {created_at})",
                    network.family(),
                    range_key(start),
                    range_key(end)
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO blocks (entity_type, value, family, range_start, range_end, reason, \
             source, created_by, created_at) VALUES {}",
            rows.join(", ")
        );
        tx.execute(sql.as_str())
            .await
            .expect("the blocks are inserted");
    }
    tx.commit().await.expect("the blocks are committed");
    connection.close().await.ok();
    app.restart().await;
}

backend_tests! {
    async fn fc01_a_mapped_ipv4_address_is_exported_in_the_ipv4_set_only(app: TestApp) {
        let mapped = app.block("ip", "::ffff:203.0.113.9", json!({})).await.expect(201);
        assert_eq!(mapped.body["value"], "203.0.113.9");
        app.block("ip", "203.0.113.9", json!({})).await.expect(200);

        let text = export(&app, "nftables").await.text;
        assert_eq!(nft_elements(&text, "blocked_v4"), ["203.0.113.9/32"]);
        assert!(nft_elements(&text, "blocked_v6").is_empty(), "{text}");
        assert!(!text.contains("ffff"), "{text}");
        check_with_nft(&text);

        let range = json!({"entity_type": "cidr", "value": "::ffff:203.0.113.0/120",
            "reason": "mapped range"});
        app.admin_post("/security/policy/blocks", range).await.expect(201);
        let text = export(&app, "nftables").await.text;
        assert_eq!(nft_elements(&text, "blocked_v4"), ["203.0.113.0/24"]);
        assert!(nft_elements(&text, "blocked_v6").is_empty(), "{text}");
        check_with_nft(&text);
    }

    async fn fc03_an_expired_block_has_no_ipset_line_and_no_negative_timeout(app: TestApp) {
        let bouncer = app.token("firewall", "bouncer").await;
        app.block("ip", "198.51.100.40", json!({"duration_seconds": 2})).await.expect(201);
        app.block("ip", "198.51.100.41", json!({"duration_seconds": 3600})).await.expect(201);
        app.block("ip", "198.51.100.42", json!({})).await.expect(201);

        app.clock.advance_seconds(3);
        let reply = app
            .get("/security/policy/blocks/export?format=ipset", &bouncer)
            .await
            .expect(200);

        let text = reply.text;
        assert!(!text.contains("198.51.100.40"), "{text}");
        assert_eq!(
            lines_starting(&text, "add "),
            [
                "add valhalla-v4 198.51.100.41 timeout 3597 -exist",
                "add valhalla-v4 198.51.100.42 timeout 0 -exist",
            ]
        );
        assert!(!text.contains("timeout -"), "{text}");
        check_with_ipset(&text);
    }

    async fn fc04_ranges_are_exported_whole_in_each_firewall_format(app: TestApp) {
        app.block("cidr", "198.51.100.0/24", json!({})).await.expect(201);
        app.block("cidr", "2001:db8:abcd::/48", json!({})).await.expect(201);

        let nftables = export(&app, "nftables").await.text;
        assert_eq!(nft_elements(&nftables, "blocked_v4"), ["198.51.100.0/24"]);
        assert_eq!(nft_elements(&nftables, "blocked_v6"), ["2001:db8:abcd::/48"]);
        assert!(nftables.contains("type ipv4_addr\n\t\tflags interval"), "{nftables}");
        assert!(nftables.contains("type ipv6_addr\n\t\tflags interval"), "{nftables}");
        check_with_nft(&nftables);

        let ipset = export(&app, "ipset").await.text;
        let creates = lines_starting(&ipset, "create ");
        assert!(creates[0].starts_with("create valhalla-v4 hash:net family inet "), "{ipset}");
        assert!(creates[1].starts_with("create valhalla-v6 hash:net family inet6 "), "{ipset}");
        assert_eq!(
            lines_starting(&ipset, "add "),
            [
                "add valhalla-v4 198.51.100.0/24 timeout 0 -exist",
                "add valhalla-v6 2001:db8:abcd::/48 timeout 0 -exist",
            ]
        );
        check_with_ipset(&ipset);

        let nginx = export(&app, "nginx").await.text;
        assert_eq!(nginx, "deny 198.51.100.0/24;\ndeny 2001:db8:abcd::/48;\n");

        let plain = export(&app, "plain").await.text;
        assert_eq!(plain, "198.51.100.0/24\n2001:db8:abcd::/48\n");
        assert_eq!(app.check_ip("198.51.100.200").await.body["blocked"], true);
        assert_eq!(app.check_ip("2001:db8:abcd:1::5").await.body["blocked"], true);
    }

    async fn fc06_seventy_thousand_ipv6_blocks_fit_the_exported_sets(app: TestApp) {
        let mut addresses: Vec<String> = (1..=70_000u32)
            .map(|n| format!("2001:db8:1::{:x}:{:x}", n >> 16, n & 0xffff))
            .map(|text| text.parse::<std::net::Ipv6Addr>().expect("v6").to_string())
            .collect();
        assert_eq!(addresses.last().map(String::as_str), Some("2001:db8:1::1:1170"));
        addresses.push("203.0.113.80".to_string());
        let mut app = app;
        insert_ip_blocks(&mut app, &addresses).await;

        let ipset = export(&app, "ipset").await.text;
        let maxelem = |set: &str| -> usize {
            let line = lines_starting(&ipset, &format!("create {set} "))[0];
            let words: Vec<&str> = line.split(' ').collect();
            let at = words.iter().position(|word| *word == "maxelem").expect("maxelem");
            words[at + 1].parse().expect("a number")
        };
        assert!(maxelem("valhalla-v6") >= 70_000);
        assert!(maxelem("valhalla-v4") >= 1);
        assert_eq!(lines_starting(&ipset, "add valhalla-v6 ").len(), 70_000);
        assert_eq!(lines_starting(&ipset, "add ").len(), 70_001);
        check_with_ipset(&ipset);

        let nftables = export(&app, "nftables").await.text;
        assert!(!nftables.contains("size"), "no size may cap the sets");
        assert_eq!(nft_elements(&nftables, "blocked_v4"), ["203.0.113.80/32"]);
        check_with_nft(&nftables);

        let dashboard = app.admin_get("/security/dashboard").await.expect(200);
        assert_eq!(dashboard.body["blocklist"]["active"], 70_001, "{}", dashboard.text);
    }

    async fn overlapping_and_adjacent_ranges_are_merged_for_nftables(app: TestApp) {
        for (kind, value) in [
            ("cidr", "198.51.100.0/25"),
            ("cidr", "198.51.100.128/25"),
            ("ip", "198.51.100.7"),
            ("cidr", "203.0.113.0/24"),
            ("cidr", "203.0.113.0/25"),
            ("cidr", "2001:db8::/48"),
            ("ip", "2001:db8::1"),
            ("ip", "2001:db8:ffff::1"),
        ] {
            app.block(kind, value, json!({})).await.expect(201);
        }

        let text = export(&app, "nftables").await.text;

        assert_eq!(nft_elements(&text, "blocked_v4"), ["198.51.100.0/24", "203.0.113.0/24"]);
        assert_eq!(
            nft_elements(&text, "blocked_v6"),
            ["2001:db8::/48", "2001:db8:ffff::1/128"]
        );
        check_with_nft(&text);
        let plain = export(&app, "plain").await.text;
        assert_eq!(plain.lines().count(), 8, "plain lists every block as it is");
    }

    async fn an_allowlisted_address_never_appears_in_any_export(app: TestApp) {
        app.block("ip", "198.51.100.9", json!({})).await.expect(201);
        app.block("user", "mallory", json!({})).await.expect(201);
        // A block the allowlist covers but that was not deactivated yet, as
        // in a race with an allowlist change.
        let mut app = app;
        insert_ip_blocks(&mut app, &["127.0.0.5".to_string()]).await;
        let mut allowlist = app.admin_get("/security/policy/").await.expect(200).body
            ["allowlist"].as_array().expect("an allowlist").clone();
        allowlist.push(json!("198.51.100.0/24"));
        app.update_policy(json!({"allowlist": allowlist})).await.expect(200);

        for format in ["plain", "nftables", "ipset", "nginx", "csv", "json", "stix"] {
            let text = export(&app, format).await.text;
            assert!(!text.contains("198.51.100.9"), "{format}: {text}");
            assert!(!text.contains("127.0.0.5"), "{format}: {text}");
        }
        assert!(export(&app, "csv").await.text.contains("mallory"));
    }

    async fn a_csv_field_a_spreadsheet_would_run_as_a_formula_starts_with_a_quote(app: TestApp) {
        let blocks = [
            ("user", "=cmd|' /C calc'!A0", "+1 failed logins"),
            ("api_key", "@SUM(1+1)", "-2+3"),
            ("user", "mallory", "=HYPERLINK(\"http://evil.example\", \"open\")"),
        ];
        for (entity_type, value, reason) in blocks {
            let body = json!({"entity_type": entity_type, "value": value, "reason": reason});
            app.admin_post("/security/policy/blocks", body).await.expect(201);
        }

        let csv = export(&app, "csv").await;
        let lines: Vec<&str> = csv.text.lines().collect();
        let created = app.now().to_string();
        assert_eq!(
            &lines[1..],
            [
                format!("user,'=cmd|' /C calc'!A0,'+1 failed logins,human,{created},"),
                format!("api_key,'@SUM(1+1),'-2+3,human,{created},"),
                format!(
                    "user,mallory,\"'=HYPERLINK(\"\"http://evil.example\"\", \"\"open\"\")\",\
                     human,{created},"
                ),
            ],
            "{}",
            csv.text
        );

        let json_export = export(&app, "json").await;
        assert_eq!(json_export.items()[1]["value"], "@SUM(1+1)", "JSON is left as it is");
    }

    async fn each_format_has_its_content_type_and_shape(app: TestApp) {
        let reason = "said \"hi\", then left";
        let body = json!({"entity_type": "ip", "value": "198.51.100.1", "reason": reason,
            "duration_seconds": 60});
        app.admin_post("/security/policy/blocks", body).await.expect(201);
        app.block("cidr", "2001:db8::/32", json!({})).await.expect(201);
        app.block("api_key", "leaked-key", json!({})).await.expect(201);

        let plain = export(&app, "plain").await;
        assert_eq!(header(&plain, CONTENT_TYPE), "text/plain; charset=utf-8");
        assert_eq!(plain.text, "198.51.100.1\n2001:db8::/32\n");

        let csv = export(&app, "csv").await;
        assert_eq!(header(&csv, CONTENT_TYPE), "text/csv");
        let lines: Vec<&str> = csv.text.lines().collect();
        assert_eq!(lines[0], "entity_type,value,reason,source,created_at,expires_at");
        let created = app.now().to_string();
        let expires = app.now().plus_seconds(60).expect("in range").to_string();
        assert_eq!(
            lines[1],
            format!("ip,198.51.100.1,\"said \"\"hi\"\", then left\",human,{created},{expires}")
        );
        assert_eq!(lines[3], format!("api_key,leaked-key,test,human,{created},"));

        let json_export = export(&app, "json").await;
        assert_eq!(header(&json_export, CONTENT_TYPE), "application/json");
        let values: Vec<Value> =
            json_export.items().iter().map(|block| block["value"].clone()).collect();
        assert_eq!(values, [json!("198.51.100.1"), json!("2001:db8::/32"), json!("leaked-key")]);

        let stix = export(&app, "stix").await;
        assert_eq!(header(&stix, CONTENT_TYPE), "application/stix+json;version=2.1");
        assert_eq!(stix.body["type"], "bundle");
        let objects = stix.body["objects"].as_array().expect("objects").clone();
        assert_eq!(objects.len(), 2, "{}", stix.text);
        assert_eq!(objects[0]["type"], "indicator");
        assert_eq!(objects[0]["pattern_type"], "stix");
        assert_eq!(objects[0]["pattern"], "[ipv4-addr:value = '198.51.100.1']");
        assert_eq!(objects[0]["valid_until"], json!(expires));
        assert_eq!(objects[1]["pattern"], "[ipv6-addr:value = '2001:db8::/32']");
        assert!(objects[1].get("valid_until").is_none(), "{}", stix.text);
        let again = export(&app, "stix").await;
        assert_eq!(again.body["objects"][0]["id"], objects[0]["id"], "ids are stable");
        assert_eq!(again.body["id"], stix.body["id"]);
        check_with_stix_validator(&stix.text);
    }

    async fn an_unchanged_export_answers_304_to_its_etag(app: TestApp) {
        app.block("ip", "198.51.100.1", json!({})).await.expect(201);
        let first = export(&app, "nftables").await;
        let etag = header(&first, ETAG).to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2, "{etag}");

        let unchanged = export_if_none_match(&app, "nftables", &etag).await;
        assert_eq!(unchanged.status().as_u16(), 304);
        assert_eq!(unchanged.headers()[ETAG].to_str().unwrap(), etag);
        assert_eq!(unchanged.text().await.unwrap(), "");
        let weak = export_if_none_match(&app, "nftables", &format!("\"x\", W/{etag}")).await;
        assert_eq!(weak.status().as_u16(), 304);
        let other_format = export_if_none_match(&app, "plain", &etag).await;
        assert_eq!(other_format.status().as_u16(), 200);

        app.block("ip", "198.51.100.2", json!({})).await.expect(201);
        let changed = export_if_none_match(&app, "nftables", &etag).await;
        assert_eq!(changed.status().as_u16(), 200);
        assert_ne!(changed.headers()[ETAG].to_str().unwrap(), etag);
    }

    async fn the_etag_moves_with_every_kind_of_change(app: TestApp) {
        let lasting = app.block("ip", "198.51.100.3", json!({})).await.expect(201);
        app.block("ip", "198.51.100.4", json!({"duration_seconds": 60})).await.expect(201);
        let mut seen = vec![header(&export(&app, "plain").await, ETAG).to_string()];
        let mut expect_new_tag = |reply: &Reply, what: &str| {
            let tag = header(reply, ETAG).to_string();
            assert!(!seen.contains(&tag), "{what}: the tag {tag} was seen before");
            seen.push(tag);
        };

        // Expired but not yet swept: the export changes, so must the tag.
        app.clock.advance_seconds(61);
        let expired = export(&app, "plain").await;
        expect_new_tag(&expired, "expiry");
        assert!(!expired.text.contains("198.51.100.4"), "{}", expired.text);

        app.block("ip", "198.51.100.3", json!({"duration_seconds": 60})).await.expect(200);
        let deactivate = format!("/security/policy/blocks/{}/deactivate", lasting.id());
        app.admin_post(&deactivate, json!({})).await.expect(200);
        expect_new_tag(&export(&app, "plain").await, "deactivation");

        app.block("cidr", "203.0.113.0/24", json!({})).await.expect(201);
        expect_new_tag(&export(&app, "plain").await, "a new block");
        app.update_policy(json!({"allowlist": ["127.0.0.0/8", "203.0.113.0/25"]}))
            .await
            .expect(200);
        let allowlisted = export(&app, "plain").await;
        expect_new_tag(&allowlisted, "the allowlist");
        assert_eq!(allowlisted.text, "");

        // ipset writes remaining seconds, which change on their own.
        let ipset = export(&app, "ipset").await;
        assert!(header(&ipset, ETAG).starts_with("W/\""), "{:?}", ipset.headers);
    }

    async fn an_unknown_or_missing_format_is_a_bad_request(app: TestApp) {
        for query in ["?format=iptables", "?format=", ""] {
            app.admin_get(&format!("/security/policy/blocks/export{query}"))
                .await
                .expect_problem(400);
        }
    }

    async fn bouncers_may_export_and_anonymous_clients_may_not(app: TestApp) {
        app.block("ip", "198.51.100.1", json!({})).await.expect(201);
        let bouncer = app.token("edge", "bouncer").await;

        let reply = app
            .get("/security/policy/blocks/export?format=nginx", &bouncer)
            .await
            .expect(200);
        assert_eq!(reply.text, "deny 198.51.100.1;\n");

        app.request(
            reqwest::Method::GET,
            "/security/policy/blocks/export?format=nginx",
            None,
            None,
        )
        .await
        .expect_problem(401);
    }
}
