//! Tests for blocklist.

use serde_json::json;

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
}
