//! `valhalla demo`: the whole path on real data in one command. It starts the
//! service on a temporary SQLite file, registers a honeypot, replays the
//! bundled Cowrie log (recorded from the real honeypot; see
//! `samples/honeypot/PROVENANCE.md`) through the bulk API, waits for the
//! detection engine, prints what happened, and keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::Secret;
use crate::clock::SystemClock;
use crate::config::ServeSettings;
use crate::error::{Error, Result};

/// The real Cowrie log, compiled in so the demo runs from anywhere.
const COWRIE_LOG: &str = include_str!("../samples/honeypot/cowrie/cowrie.json");

/// Runs the demo on `listen` until Ctrl-C or SIGTERM.
pub async fn run(listen: &str, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let folder = std::env::temp_dir().join(format!("valhalla-demo-{}", std::process::id()));
    std::fs::create_dir_all(&folder)?;
    let database_url = format!("sqlite://{}", folder.join("valhalla.db").display());
    let admin_token = Secret::generate("vh_");
    let mut settings = ServeSettings::for_database(&database_url, listen);
    settings.admin_token = Some(admin_token.clone());

    let server = crate::server::start(&settings, Arc::new(SystemClock)).await?;
    let client = DemoClient {
        http: reqwest::Client::new(),
        base_url: format!("http://{}", server.address),
        token: admin_token,
    };
    let replayed = replay(&client).await;
    match replayed {
        Ok(()) => {}
        Err(error) => {
            server.stop().await;
            return Err(error);
        }
    }

    eprintln!(
        "\nValhalla keeps serving at {} (database {database_url}).",
        client.base_url
    );
    eprintln!("Admin token, shown only now: {}", client.token.expose());
    eprintln!(
        "Try: curl -H 'Authorization: Bearer <token>' {}/security/dashboard",
        client.base_url
    );
    eprintln!("Stop with Ctrl-C.");
    shutdown.await;
    server.stop().await;
    Ok(())
}

/// Registers a honeypot, lets Heimdall's block requests run without a
/// person (normal mode asks for approval by default), replays the log and
/// prints the outcome.
async fn replay(client: &DemoClient) -> Result<()> {
    let honeypot = client
        .post_json(
            "/security/honeypot/instances",
            json!({"name": "demo-cowrie", "honeypot_type": "ssh", "location": "demo"}),
        )
        .await?;
    let key = honeypot["api_key"].as_str().unwrap_or_default().to_string();
    client
        .post_json(
            "/security/policy/",
            json!({"auto_approve": {"normal": ["heimdall"]}}),
        )
        .await?;

    let report = client.post_bulk(&key, COWRIE_LOG).await?;
    eprintln!(
        "Replayed the bundled Cowrie log: {} records accepted, {} without attacker activity, {} rejected.",
        report["accepted"], report["skipped"], report["rejected"].as_array().map_or(0, Vec::len)
    );

    let dashboard = client.wait_for_engine().await?;
    print_outcome(client, &dashboard).await
}

async fn print_outcome(client: &DemoClient, dashboard: &Value) -> Result<()> {
    eprintln!(
        "\nEvents by type: {}",
        dashboard["honeypots"]["events_by_type_24h"]
    );
    let incidents = client.get("/security/incidents?limit=20").await?;
    eprintln!("Incidents:");
    for incident in incidents["items"].as_array().into_iter().flatten() {
        eprintln!(
            "  #{} {:<9} {}",
            incident["id"],
            incident["severity"].as_str().unwrap_or("?"),
            incident["summary"].as_str().unwrap_or("")
        );
    }
    let blocks = client.get("/security/policy/blocks?limit=20").await?;
    eprintln!("Active blocks:");
    for block in blocks["items"].as_array().into_iter().flatten() {
        eprintln!(
            "  {} until {} — {}",
            block["value"].as_str().unwrap_or("?"),
            block["expires_at"].as_str().unwrap_or("forever"),
            block["reason"].as_str().unwrap_or("")
        );
    }
    eprintln!("Mode: {}", dashboard["mode"].as_str().unwrap_or("?"));
    Ok(())
}

struct DemoClient {
    http: reqwest::Client,
    base_url: String,
    token: Secret,
}

impl DemoClient {
    async fn get(&self, path: &str) -> Result<Value> {
        let request = self.http.get(format!("{}{path}", self.base_url));
        self.send(request.bearer_auth(self.token.expose())).await
    }

    async fn post_json(&self, path: &str, body: Value) -> Result<Value> {
        let request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(self.token.expose())
            .header("Content-Type", "application/json")
            .body(body.to_string());
        self.send(request).await
    }

    async fn post_bulk(&self, key: &str, body: &'static str) -> Result<Value> {
        let request = self
            .http
            .post(format!(
                "{}/security/honeypot/events/bulk?format=cowrie",
                self.base_url
            ))
            .header("X-HONEYPOT-KEY", key)
            .header("Content-Type", "application/x-ndjson")
            .body(body);
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = request.send().await.map_err(|error| demo_failed(&error))?;
        let status = response.status();
        let text = response.text().await.map_err(|error| demo_failed(&error))?;
        if !status.is_success() {
            return Err(Error::Command(format!(
                "the demo's request failed with {status}: {text}"
            )));
        }
        serde_json::from_str(&text).map_err(|error| demo_failed(&error))
    }

    /// Waits until every event is judged and every approved request ran.
    async fn wait_for_engine(&self) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dashboard = self.get("/security/dashboard").await?;
            let idle = dashboard["honeypots"]["unprocessed"] == 0
                && dashboard["actions"]["by_status"]["approved"] == 0;
            if idle || Instant::now() > deadline {
                return Ok(dashboard);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn demo_failed(error: &dyn std::fmt::Display) -> Error {
    Error::Command(format!(
        "the demo could not talk to its own server: {error}"
    ))
}
