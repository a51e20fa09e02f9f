//! `GET /metrics`: the dashboard's numbers in Prometheus's text exposition
//! format, for the alerts a security team wants: the mode went up, requests
//! wait for a person, the engine falls behind the events, blocks pile up.
//!
//! Each scrape reads the same snapshot as the dashboard, so it costs what
//! one dashboard call costs and its numbers agree with each other. Like
//! the dashboard it needs a token that may read the security state (a
//! `viewer` token is enough), which Prometheus sends with its scrape
//! config's `authorization: {credentials: ...}`. These are gauges: the
//! counts are of state in the database, which every replica reads alike.
//! After them come the counts of requests this process answered (see
//! `http::RequestMetrics`), which differ by replica.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::{snapshot, Dashboard};
use crate::auth::{Capability, Principal};
use crate::error::Result;
use crate::http::escape_label;
use crate::policy::Mode;
use crate::server::AppState;

/// Version 0.0.4 of the text format, which every Prometheus reads.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The security state as Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "dashboard",
    responses((status = 200, content_type = "text/plain",
        description = "Prometheus text exposition format, version 0.0.4", body = String)),
    security(("bearer" = [])))]
pub(super) async fn get_metrics(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response> {
    principal.require(Capability::ReadSecurityState)?;

    let dashboard = snapshot(&state).await?;

    let mut text = render(&dashboard);
    state.requests.render(&mut text);
    Ok(([(CONTENT_TYPE, TEXT_FORMAT)], text).into_response())
}

fn render(dashboard: &Dashboard) -> String {
    let mut text = String::new();
    let modes = [Mode::Normal, Mode::Elevated, Mode::Lockdown]
        .map(|mode| (mode.as_str().to_string(), i64::from(mode == dashboard.mode)));
    family(
        &mut text,
        "valhalla_mode",
        "1 for the deployment's current security mode, 0 for the others.",
        "mode",
        &BTreeMap::from(modes),
    );
    single(
        &mut text,
        "valhalla_policy_version",
        "Version of the policy; it grows with every change.",
        dashboard.policy.version,
    );
    family(
        &mut text,
        "valhalla_incidents_unresolved",
        "Incidents open or acknowledged, by severity.",
        "severity",
        &dashboard.incidents.by_severity,
    );
    family(
        &mut text,
        "valhalla_blocks_active",
        "Blocks in force (not deactivated, not expired), by entity type.",
        "entity_type",
        &dashboard.blocklist.by_type,
    );
    single(
        &mut text,
        "valhalla_blocks_expiring_24h",
        "Blocks in force that expire within the next 24 hours.",
        dashboard.blocklist.expiring_24h,
    );
    let honeypots = &dashboard.honeypots;
    let states = [
        ("active".to_string(), honeypots.instances_active),
        (
            "inactive".to_string(),
            honeypots.instances_total - honeypots.instances_active,
        ),
    ];
    family(
        &mut text,
        "valhalla_honeypots",
        "Registered honeypot instances, by state.",
        "state",
        &BTreeMap::from(states),
    );
    family(
        &mut text,
        "valhalla_events_24h",
        "Honeypot events that occurred within the last 24 hours, by event type.",
        "event_type",
        &honeypots.events_by_type_24h,
    );
    single(
        &mut text,
        "valhalla_events_unjudged",
        "Stored honeypot events the detection engine has not judged yet.",
        honeypots.unprocessed,
    );
    family(
        &mut text,
        "valhalla_action_requests",
        "Action requests, by status.",
        "status",
        &dashboard.actions.by_status,
    );
    text
}

fn header(text: &mut String, name: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} gauge");
}

fn single(text: &mut String, name: &str, help: &str, value: i64) {
    header(text, name, help);
    let _ = writeln!(text, "{name} {value}");
}

fn family(text: &mut String, name: &str, help: &str, label: &str, values: &BTreeMap<String, i64>) {
    header(text, name, help);
    // Label values come from the service's own enums; escaped all the
    // same, as the format asks, should one ever hold a quote.
    for (key, value) in values {
        let _ = writeln!(text, "{name}{{{label}=\"{}\"}} {value}", escape_label(key));
    }
}
