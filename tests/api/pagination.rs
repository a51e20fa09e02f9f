//! Tests for pagination: following `next_cursor` through blocks, action
//! requests, events and the audit log returns every row exactly once,
//! newest first, even while rows are being added.

use serde_json::json;

use crate::support::{encode, TestApp};

const BLOCKS: &str = "/security/policy/blocks";
const ACTIONS: &str = "/security/actions/";
const EVENTS: &str = "/security/honeypot/events";
const AUDIT: &str = "/security/audit";

/// More pages than any test here needs: a cursor that never ends fails.
const MAX_PAGES: usize = 200;

/// One page: its ids and its `next_cursor`.
async fn fetch_page(
    app: &TestApp,
    path: &str,
    limit: usize,
    cursor: Option<&str>,
) -> (Vec<i64>, Option<String>) {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut url = format!("{path}{separator}limit={limit}");
    if let Some(cursor) = cursor {
        url.push_str(&format!("&cursor={}", encode(cursor)));
    }
    let reply = app.admin_get(&url).await.expect(200);
    let ids: Vec<i64> = reply
        .items()
        .iter()
        .map(|item| item["id"].as_i64().expect("an id"))
        .collect();
    let next = match &reply.body["next_cursor"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(cursor) => Some(cursor.clone()),
        other => panic!("next_cursor is neither null nor a string: {other}"),
    };
    if next.is_some() {
        assert_eq!(ids.len(), limit, "only the last page may be short: {url}");
    }
    assert!(ids.len() <= limit, "{url}: {} rows", ids.len());
    (ids, next)
}

/// Every id of a list, following cursors until `next_cursor` is null.
async fn page_through(app: &TestApp, path: &str, limit: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let (page, next) = fetch_page(app, path, limit, cursor.as_deref()).await;
        ids.extend(page);
        match next {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
    panic!("{path}: no last page after {MAX_PAGES} pages");
}

/// The whole list in one answer, as the reference a paged read must match.
async fn everything(app: &TestApp, path: &str) -> Vec<i64> {
    let (ids, next) = fetch_page(app, path, 1000, None).await;
    assert_eq!(next, None, "{path} fits one page of 1000");
    assert!(
        ids.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {ids:?}"
    );
    ids
}

/// Pages through `path` at several sizes; each read must equal `expected`.
async fn assert_paging_returns(app: &TestApp, path: &str, expected: &[i64]) {
    let sizes = [1, 3, 4, 5, expected.len().max(1), expected.len() + 1, 1000];
    for limit in sizes {
        let paged = page_through(app, path, limit).await;
        assert_eq!(paged, expected, "{path} with limit {limit}");
    }
}

async fn create_blocks(app: &TestApp, first: usize, count: usize) {
    for n in first..first + count {
        app.block("ip", &format!("198.51.100.{n}"), json!({}))
            .await
            .expect(201);
        app.clock.advance_seconds(1);
    }
}

async fn create_action_requests(app: &TestApp, first: usize, count: usize) {
    for n in first..first + count {
        let body = json!({
            "action_type": "block_entity",
            "payload": {"entity_type": "ip", "value": format!("203.0.113.{n}"),
                        "duration_seconds": 3600},
            "reason": format!("request {n}")
        });
        app.admin_post(ACTIONS, body).await.expect(201);
        app.clock.advance_seconds(1);
    }
}

async fn post_events(app: &TestApp, key: &str, source_ip: &str, count: usize) {
    for _ in 0..count {
        let event = json!({"event_type": "connection", "source_ip": source_ip});
        app.post_event(key, event).await.expect(201);
        app.clock.advance_seconds(1);
    }
}

backend_tests! {
    async fn paging_through_blocks_returns_every_block_once_newest_first(app: TestApp) {
        create_blocks(&app, 1, 20).await;

        let expected = everything(&app, BLOCKS).await;
        assert_eq!(expected.len(), 20);
        assert_paging_returns(&app, BLOCKS, &expected).await;

        let list = app
            .admin_get(&format!("{BLOCKS}?limit=1000"))
            .await
            .expect(200);
        let created: Vec<String> = list
            .items()
            .iter()
            .map(|block| block["created_at"].as_str().unwrap().to_string())
            .collect();
        assert!(
            created.windows(2).all(|pair| pair[0] > pair[1]),
            "{created:?}"
        );
        assert_eq!(list.items()[0]["value"], "198.51.100.20");
    }

    async fn paging_through_action_requests_returns_each_once_newest_first(app: TestApp) {
        create_action_requests(&app, 1, 12).await;

        let expected = everything(&app, ACTIONS).await;
        assert_eq!(expected.len(), 12);
        assert_paging_returns(&app, ACTIONS, &expected).await;

        let pending = format!("{ACTIONS}?status=pending");
        let expected_pending = everything(&app, &pending).await;
        assert_eq!(expected_pending, expected);
        assert_paging_returns(&app, &pending, &expected_pending).await;
    }

    async fn paging_through_events_returns_each_once_newest_first(app: TestApp) {
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        post_events(&app, &key, "203.0.113.1", 9).await;
        post_events(&app, &key, "2001:db8::2", 8).await;

        let expected = everything(&app, EVENTS).await;
        assert_eq!(expected.len(), 17);
        assert_paging_returns(&app, EVENTS, &expected).await;

        let filtered = format!("{EVENTS}?source_ip={}", encode("2001:db8::2"));
        let expected_filtered = everything(&app, &filtered).await;
        assert_eq!(expected_filtered, expected[..8]);
        assert_paging_returns(&app, &filtered, &expected_filtered).await;
    }

    async fn paging_through_the_audit_log_returns_each_entry_once_newest_first(app: TestApp) {
        create_blocks(&app, 1, 5).await;
        app.token("grafana", "viewer").await;
        app.honeypot("fra-ssh-01", "ssh").await;
        create_action_requests(&app, 1, 3).await;

        let expected = everything(&app, AUDIT).await;
        assert!(expected.len() >= 7, "each change is audited: {expected:?}");
        assert_paging_returns(&app, AUDIT, &expected).await;
    }

    async fn paging_while_blocks_are_added_neither_repeats_nor_skips_one(app: TestApp) {
        create_blocks(&app, 1, 10).await;
        let existing = everything(&app, BLOCKS).await;

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut added = 0;
        for _ in 0..MAX_PAGES {
            let (page, next) = fetch_page(&app, BLOCKS, 3, cursor.as_deref()).await;
            seen.extend(page);
            create_blocks(&app, 100 + added, 2).await;
            added += 2;
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, existing);
        assert_eq!(everything(&app, BLOCKS).await.len(), existing.len() + added);
    }

    async fn paging_while_action_requests_are_added_neither_repeats_nor_skips_one(app: TestApp) {
        create_action_requests(&app, 1, 10).await;
        let existing = everything(&app, ACTIONS).await;

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut added = 0;
        for _ in 0..MAX_PAGES {
            let (page, next) = fetch_page(&app, ACTIONS, 4, cursor.as_deref()).await;
            seen.extend(page);
            create_action_requests(&app, 100 + added, 3).await;
            added += 3;
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, existing);
        assert_eq!(
            everything(&app, ACTIONS).await.len(),
            existing.len() + added
        );
    }

    async fn paging_while_events_arrive_neither_repeats_nor_skips_one(app: TestApp) {
        let (_, key) = app.honeypot("fra-ssh-01", "ssh").await;
        post_events(&app, &key, "203.0.113.1", 11).await;
        let existing = everything(&app, EVENTS).await;

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut added = 0;
        for _ in 0..MAX_PAGES {
            let (page, next) = fetch_page(&app, EVENTS, 2, cursor.as_deref()).await;
            seen.extend(page);
            post_events(&app, &key, "203.0.113.1", 3).await;
            added += 3;
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, existing);
        assert_eq!(everything(&app, EVENTS).await.len(), existing.len() + added);
    }

    async fn paging_while_changes_are_audited_neither_repeats_nor_skips_an_entry(app: TestApp) {
        create_blocks(&app, 1, 8).await;
        let existing = everything(&app, AUDIT).await;

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut added = 0;
        for _ in 0..MAX_PAGES {
            let (page, next) = fetch_page(&app, AUDIT, 3, cursor.as_deref()).await;
            seen.extend(page);
            create_blocks(&app, 100 + added, 2).await;
            added += 2;
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, existing);
        assert!(everything(&app, AUDIT).await.len() >= existing.len() + added);
    }
}
