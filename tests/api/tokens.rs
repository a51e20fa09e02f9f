//! Tests for tokens: issued once, listed without secrets, revoked at once.

use serde_json::{json, Value};

use crate::support::Reply;

const TOKENS: &str = "/security/tokens";

/// The listed token called `name`, if it is listed.
fn listed(list: &Reply, name: &str) -> Option<Value> {
    list.items().into_iter().find(|token| token["name"] == name)
}

/// The names of the listed admin tokens.
fn listed_admins(list: &Reply) -> Vec<String> {
    list.items()
        .into_iter()
        .filter(|token| token["role"] == "admin")
        .map(|token| token["name"].as_str().expect("a name").to_string())
        .collect()
}

backend_tests! {
    async fn creating_a_token_shows_it_once_and_the_list_never_shows_a_token(app: TestApp) {
        let created = app
            .admin_post(
                TOKENS,
                json!({"name": "heimdall-sensor-1", "role": "detector"}),
            )
            .await
            .expect(201);
        let token = created.body["token"].as_str().expect("a token").to_string();
        assert!(
            token.len() >= 32,
            "a token carries at least 128 bits: {token}"
        );
        assert_eq!(
            created.body,
            json!({"name": "heimdall-sensor-1", "role": "detector",
                   "created_at": app.now().to_string(), "token": token})
        );

        let list = app.admin_get(TOKENS).await.expect(200);
        assert_eq!(list.body["next_cursor"], Value::Null);
        let names: Vec<Value> = list
            .items()
            .iter()
            .map(|token| token["name"].clone())
            .collect();
        assert_eq!(names, ["heimdall-sensor-1", "admin"], "newest first");
        for item in list.items() {
            let mut keys: Vec<&String> = item.as_object().unwrap().keys().collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["created_at", "last_used_at", "name", "role"],
                "{item}"
            );
        }
        assert!(
            !list.text.contains(&token),
            "the new token leaked: {}",
            list.text
        );
        assert!(
            !list.text.contains(&app.admin_token),
            "the admin token leaked: {}",
            list.text
        );

        let viewer = app.get("/security/dashboard", &token).await;
        viewer.expect(200);
    }

    async fn a_second_token_with_the_same_name_is_a_conflict(app: TestApp) {
        let first = app.token("grafana", "viewer").await;

        let again = app
            .admin_post(TOKENS, json!({"name": "grafana", "role": "admin"}))
            .await
            .expect_problem(409);
        assert!(!again.text.contains("token\":"), "{}", again.text);

        let list = app.admin_get(TOKENS).await.expect(200);
        assert_eq!(listed(&list, "grafana").unwrap()["role"], "viewer");
        app.get("/security/dashboard", &first).await.expect(200);
        app.post(
            "/security/policy/blocks",
            &first,
            json!({"entity_type": "ip",
                  "value": "203.0.113.7", "reason": "still a viewer"}),
        )
        .await
        .expect_problem(403);
    }

    async fn an_unknown_role_or_a_bad_name_is_invalid(app: TestApp) {
        let cases = [
            (json!({"name": "root", "role": "superuser"}), "role"),
            (json!({"name": "root", "role": "Admin"}), "role"),
            (json!({"name": "", "role": "viewer"}), "name"),
            (json!({"name": "has space", "role": "viewer"}), "name"),
        ];
        for (body, field) in cases {
            let refused = app
                .admin_post(TOKENS, body.clone())
                .await
                .expect_problem(422);
            assert_eq!(
                refused.body["errors"][0]["field"], field,
                "{body}: {}",
                refused.text
            );
        }
        let missing = app
            .admin_post(TOKENS, json!({"name": "root"}))
            .await
            .expect_problem(422);
        assert!(missing.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("role"));

        let list = app.admin_get(TOKENS).await.expect(200);
        assert_eq!(list.items().len(), 1, "only the admin token: {}", list.text);
    }

    async fn creating_one_name_concurrently_issues_exactly_one_token(app: TestApp) {
        let body = json!({"name": "grafana", "role": "viewer"});
        let (a, b, c) = tokio::join!(
            app.admin_post(TOKENS, body.clone()),
            app.admin_post(TOKENS, body.clone()),
            app.admin_post(TOKENS, body.clone()),
        );
        let mut statuses: Vec<u16> = [&a, &b, &c].iter().map(|r| r.status.as_u16()).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409, 409]);
        let winner = [a, b, c]
            .into_iter()
            .find(|reply| reply.status.as_u16() == 201)
            .unwrap();
        let token = winner.body["token"].as_str().unwrap();
        app.get("/security/dashboard", token).await.expect(200);
    }

    async fn a_revoked_token_stops_working_at_once(app: TestApp) {
        let token = app.token("ci-runner", "analyst").await;
        app.get("/security/dashboard", &token).await.expect(200);

        let revoked = app
            .admin_post(&format!("{TOKENS}/ci-runner/revoke"), json!({}))
            .await
            .expect(200);
        assert_eq!(revoked.body["name"], "ci-runner");
        assert_eq!(revoked.body["role"], "analyst");
        assert!(revoked.body.get("token").is_none(), "{}", revoked.text);

        app.get("/security/dashboard", &token)
            .await
            .expect_problem(401);
        app.post(
            "/security/policy/blocks",
            &token,
            json!({"entity_type": "ip",
                  "value": "203.0.113.7", "reason": "revoked"}),
        )
        .await
        .expect_problem(401);
        let list = app.admin_get(TOKENS).await.expect(200);
        assert!(listed(&list, "ci-runner").is_none(), "{}", list.text);

        app.admin_post(&format!("{TOKENS}/ci-runner/revoke"), json!({}))
            .await
            .expect_problem(404);
        app.admin_post(&format!("{TOKENS}/nobody/revoke"), json!({}))
            .await
            .expect_problem(404);
    }

    async fn the_last_active_admin_token_cannot_be_revoked(app: TestApp) {
        let viewer = app.token("grafana", "viewer").await;

        let refused = app
            .admin_post(&format!("{TOKENS}/admin/revoke"), json!({}))
            .await
            .expect_problem(409);
        assert_eq!(
            refused.body["detail"], "the last active admin token cannot be revoked",
            "{}",
            refused.text
        );
        app.admin_get(TOKENS).await.expect(200);
        let db = valhalla::storage::Db::connect(&app.database_url).await.unwrap();
        let from_cli = valhalla::auth::tokens::revoke_token_named(&db, app.now(), "cli", "admin")
            .await
            .expect_err("the command line keeps the last admin too");
        assert!(matches!(from_cli, valhalla::error::Error::Conflict(_)), "{from_cli:?}");
        db.close().await;
        let audit = app.admin_get("/security/audit?kind=token.revoked").await.expect(200);
        assert!(audit.items().is_empty(), "{}", audit.text);

        let second = app.token("second-admin", "admin").await;
        app.post(&format!("{TOKENS}/second-admin/revoke"), &second, json!({}))
            .await
            .expect(200);
        app.get(TOKENS, &second).await.expect_problem(401);
        app.admin_post(&format!("{TOKENS}/grafana/revoke"), json!({}))
            .await
            .expect(200);
        app.get("/security/dashboard", &viewer).await.expect_problem(401);
    }

    async fn of_two_admins_revoking_each_other_at_once_exactly_one_succeeds(app: TestApp) {
        let mut survivor = app.admin_token.clone();
        for round in 0..5 {
            let name = format!("admin-{round}");
            let created = app
                .post(TOKENS, &survivor, json!({"name": name, "role": "admin"}))
                .await
                .expect(201);
            let other = created.body["token"].as_str().unwrap().to_string();
            let list = app.get(TOKENS, &survivor).await.expect(200);
            let first = listed_admins(&list)
                .into_iter()
                .find(|admin| *admin != name)
                .expect("the surviving admin is listed");

            let (revoke_other, revoke_first) = (
                format!("{TOKENS}/{name}/revoke"),
                format!("{TOKENS}/{first}/revoke"),
            );
            let (by_first, by_other) = tokio::join!(
                app.post(&revoke_other, &survivor, json!({})),
                app.post(&revoke_first, &other, json!({})),
            );

            let statuses = [by_first.status.as_u16(), by_other.status.as_u16()];
            assert_eq!(
                statuses.iter().filter(|status| **status == 200).count(),
                1,
                "round {round}: {} / {}",
                by_first.text,
                by_other.text
            );
            // The loser either waited for the winner and found itself the
            // last admin (409), or was revoked before it was let in (401).
            assert!(
                statuses.iter().all(|status| [200, 401, 409].contains(status)),
                "round {round}: {} / {}",
                by_first.text,
                by_other.text
            );
            survivor = if by_first.status == 200 { survivor } else { other };
            let list = app.get(TOKENS, &survivor).await.expect(200);
            assert_eq!(listed_admins(&list).len(), 1, "round {round}: {}", list.text);
        }
    }

    async fn a_token_revoked_by_another_process_stops_working_within_a_second(app: TestApp) {
        let token = app.token("edge-proxy", "bouncer").await;
        app.get("/security/policy/blocks/check?ip=192.0.2.1", &token).await.expect(200);

        // As `valhalla token revoke` does beside a running server, or a
        // replica: through the database, not through this server.
        let db = valhalla::storage::Db::connect(&app.database_url).await.unwrap();
        valhalla::auth::tokens::revoke_token_named(&db, app.now(), "cli", "edge-proxy")
            .await
            .unwrap();
        db.close().await;

        let started = std::time::Instant::now();
        loop {
            let reply = app.get("/security/policy/blocks/check?ip=192.0.2.1", &token).await;
            if reply.status.as_u16() == 401 {
                break;
            }
            assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
            assert!(
                started.elapsed() < std::time::Duration::from_millis(1500),
                "the revoked token still works after 1.5 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn only_an_admin_manages_tokens(app: TestApp) {
        let owner = app.token("owner", "policy_owner").await;
        app.post(TOKENS, &owner, json!({"name": "sneaky", "role": "admin"}))
            .await
            .expect_problem(403);
        app.get(TOKENS, &owner).await.expect_problem(403);
        app.post(&format!("{TOKENS}/admin/revoke"), &owner, json!({}))
            .await
            .expect_problem(403);
        app.admin_get("/security/dashboard").await.expect(200);
    }

    async fn last_used_at_is_set_when_a_token_is_used(app: TestApp) {
        let token = app.token("grafana", "viewer").await;
        let list = app.admin_get(TOKENS).await.expect(200);
        assert_eq!(
            listed(&list, "grafana").unwrap()["last_used_at"],
            Value::Null
        );

        app.clock.advance_seconds(30);
        let first_use = app.now().to_string();
        app.get("/security/dashboard", &token).await.expect(200);
        let list = app.admin_get(TOKENS).await.expect(200);
        assert_eq!(
            listed(&list, "grafana").unwrap()["last_used_at"],
            first_use.as_str()
        );

        app.clock.advance_seconds(3600);
        let later_use = app.now().to_string();
        app.get("/security/policy/", &token).await.expect(200);
        let list = app.admin_get(TOKENS).await.expect(200);
        assert_eq!(
            listed(&list, "grafana").unwrap()["last_used_at"],
            later_use.as_str()
        );
        assert_eq!(
            listed(&list, "admin").unwrap()["last_used_at"],
            later_use.as_str()
        );
    }
}
