//! `GET /metrics`: the dashboard's numbers in Prometheus's text format.

use std::collections::BTreeMap;

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::json;

/// Each sample line (`name{label="value"} 3`) keyed by everything before
/// the value; checks that every metric is announced by HELP and TYPE, and
/// that the security state's are gauges.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut announced = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a TYPE line names a type");
            let expected = match name {
                "valhalla_http_requests_total" => "counter",
                "valhalla_http_request_duration_seconds" => "histogram",
                _ => "gauge",
            };
            assert_eq!(kind, expected, "{line}");
            announced.push(name.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let name = series.split('{').next().expect("a name");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| announced.iter().any(|known| known == family))
                .unwrap_or(name);
            assert!(
                announced.iter().any(|known| known == family),
                "{name} has no TYPE"
            );
            samples.insert(series.to_string(), value.parse().expect("a number"));
        }
    }
    samples
}

backend_tests! {
    async fn metrics_show_the_security_state_as_the_dashboard_does(app: TestApp) {
        app.update_policy(json!({"mode": "elevated"})).await.expect(200);
        app.block("ip", "198.51.100.40", json!({"reason": "seen"})).await.expect(201);
        app.block("user", "mallory", json!({"reason": "seen"})).await.expect(201);
        let analyst = app.token("alice", "analyst").await;
        let request = json!({"action_type": "set_mode", "payload": {"mode": "lockdown"},
                             "reason": "test"});
        app.post("/security/actions/", &analyst, request).await.expect(201);
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        let event = json!({"event_type": "scan", "source_ip": "203.0.113.9"});
        app.post_event(&key, event).await.expect(201);
        app.wait_for_engine().await;
        let viewer = app.token("grafana", "viewer").await;

        let reply = app.get("/metrics", &viewer).await.expect(200);

        let content_type = reply.headers.get(CONTENT_TYPE).unwrap().to_str().unwrap();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        let samples = samples(&reply.text);
        let dashboard = app.get("/security/dashboard", &viewer).await.expect(200).body;
        assert_eq!(samples["valhalla_mode{mode=\"elevated\"}"], 1.0);
        assert_eq!(samples["valhalla_mode{mode=\"normal\"}"], 0.0);
        assert_eq!(samples["valhalla_mode{mode=\"lockdown\"}"], 0.0);
        assert_eq!(samples["valhalla_blocks_active{entity_type=\"ip\"}"], 1.0);
        assert_eq!(samples["valhalla_blocks_active{entity_type=\"user\"}"], 1.0);
        assert_eq!(samples["valhalla_blocks_active{entity_type=\"cidr\"}"], 0.0);
        assert_eq!(samples["valhalla_action_requests{status=\"pending\"}"], 1.0);
        assert_eq!(samples["valhalla_honeypots{state=\"active\"}"], 1.0);
        assert_eq!(samples["valhalla_events_24h{event_type=\"scan\"}"], 1.0);
        assert_eq!(samples["valhalla_events_unjudged"], 0.0);
        assert_eq!(
            samples["valhalla_policy_version"],
            dashboard["policy"]["version"].as_f64().unwrap()
        );
    }

    async fn metrics_count_the_requests_answered_by_route_method_and_status(app: TestApp) {
        let viewer = app.token("grafana", "viewer").await;
        for _ in 0..3 {
            app.check_ip("203.0.113.77").await;
        }
        app.get("/security/actions/987654", &viewer).await.expect_problem(404);
        app.request(Method::GET, "/no/such/path/4711", None, None).await.expect_problem(404);
        let brew = Method::from_bytes(b"BREW").unwrap();
        app.request(brew, "/healthz", None, None).await.expect_problem(405);

        let reply = app.get("/metrics", &viewer).await.expect(200);

        let samples = samples(&reply.text);
        let count = |labels: &str| {
            samples
                .get(&format!("valhalla_http_requests_total{{{labels}}}"))
                .copied()
                .unwrap_or_else(|| panic!("no series {labels} in\n{}", reply.text))
        };
        let check = "route=\"/security/policy/blocks/check\",method=\"GET\"";
        assert_eq!(count(&format!("{check},status=\"200\"")), 3.0);
        let one_request = "route=\"/security/actions/{id}\",method=\"GET\"";
        assert_eq!(count(&format!("{one_request},status=\"404\"")), 1.0);
        // Neither a client's path nor its method becomes a label.
        assert_eq!(count("route=\"unmatched\",method=\"GET\",status=\"404\""), 1.0);
        assert_eq!(count("route=\"/healthz\",method=\"other\",status=\"405\""), 1.0);
        assert!(!reply.text.contains("4711") && !reply.text.contains("BREW"), "{}", reply.text);
        let histogram = "valhalla_http_request_duration_seconds";
        assert_eq!(samples[&format!("{histogram}_count{{{check}}}")], 3.0);
        assert_eq!(samples[&format!("{histogram}_bucket{{{check},le=\"+Inf\"}}")], 3.0);
        assert!(samples[&format!("{histogram}_bucket{{{check},le=\"30\"}}")] <= 3.0);
    }

    async fn metrics_need_a_token_that_reads_the_security_state(app: TestApp) {
        let bouncer = app.token("fw", "bouncer").await;

        app.request(Method::GET, "/metrics", None, None).await.expect_problem(401);
        app.get("/metrics", &bouncer).await.expect_problem(403);
    }
}
