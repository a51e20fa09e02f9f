//! The harness: a real server on a free loopback port, a fresh database per
//! test (a temporary SQLite file, or a PostgreSQL database created and
//! dropped), a controllable clock, and a small HTTP client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{AnyConnection, Connection, Executor};
use valhalla::auth::Secret;
use valhalla::clock::ManualClock;
use valhalla::config::ServeSettings;
use valhalla::server::RunningServer;
use valhalla::time::Timestamp;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("VALHALLA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A database that exists for one test.
enum TestDatabase {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresDatabase),
    /// Another app's: a replica's database belongs to the app it copies.
    Shared,
}

/// Drops its database when the test ends, passed or failed.
struct PostgresDatabase {
    name: String,
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside the test's runtime, where blocking on another
        // future is not allowed; a thread with its own runtime can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut connection = AnyConnection::connect(&postgres_admin_url()).await?;
                connection
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await?;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

static DATABASE_COUNTER: AtomicU64 = AtomicU64::new(0);

async fn create_database(backend: Backend) -> (TestDatabase, String) {
    sqlx::any::install_default_drivers();
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let url = format!("sqlite://{}", dir.path().join("valhalla.db").display());
            (TestDatabase::Sqlite(dir), url)
        }
        Backend::Postgres => {
            let name = format!(
                "valhalla_test_{}_{}_{}",
                std::process::id(),
                DATABASE_COUNTER.fetch_add(1, Ordering::SeqCst),
                &Secret::generate("").expose()[..8]
            );
            let admin_url = postgres_admin_url();
            let mut connection = AnyConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|error| panic!("PostgreSQL at {admin_url} is needed: {error}"));
            connection
                .execute(format!("CREATE DATABASE \"{name}\"").as_str())
                .await
                .expect("CREATE DATABASE");
            connection.close().await.ok();
            let (base, _) = admin_url
                .rsplit_once('/')
                .expect("a database URL with a path");
            let url = format!("{base}/{name}");
            (TestDatabase::Postgres(PostgresDatabase { name }), url)
        }
    }
}

/// An answer, with its body parsed as JSON when it is JSON.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status}, got {}: {}",
            self.status,
            self.text
        );
        self
    }

    /// Asserts an RFC 9457 problem with this status.
    #[track_caller]
    pub fn expect_problem(self, status: u16) -> Self {
        let reply = self.expect(status);
        let content_type = reply
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            content_type,
            Some("application/problem+json"),
            "{}",
            reply.text
        );
        assert_eq!(reply.body["status"], json!(status), "{}", reply.text);
        assert!(
            reply.body["type"].is_string() && reply.body["title"].is_string(),
            "{}",
            reply.text
        );
        assert!(reply.body["detail"].is_string(), "{}", reply.text);
        reply
    }

    pub fn id(&self) -> i64 {
        self.body["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no id in {}", self.text))
    }

    /// The `items` of a list answer.
    pub fn items(&self) -> Vec<Value> {
        self.body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items in {}", self.text))
            .clone()
    }
}

/// A running server with its own database and clock.
pub struct TestApp {
    pub backend: Backend,
    pub base_url: String,
    pub admin_token: String,
    pub clock: ManualClock,
    pub database_url: String,
    http: reqwest::Client,
    server: Option<RunningServer>,
    _database: TestDatabase,
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        let (database, database_url) = create_database(backend).await;
        let admin_token = Secret::generate("vh_test_");
        let clock = ManualClock::starting_at(now_rounded());
        let server = serve(&database_url, &admin_token, &clock).await;
        TestApp {
            backend,
            base_url: format!("http://{}", server.address),
            admin_token: admin_token.expose().to_string(),
            clock,
            database_url,
            http: reqwest::Client::new(),
            server: Some(server),
            _database: database,
        }
    }

    /// Stops the server gracefully; the database goes when `self` drops.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Stops the server and starts a new one on the same database and clock,
    /// as a restarted process would; the detection engine stops at once,
    /// whatever it was judging.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        let admin_token = Secret::new(self.admin_token.clone());
        let server = serve(&self.database_url, &admin_token, &self.clock).await;
        self.base_url = format!("http://{}", server.address);
        self.server = Some(server);
    }

    /// Returns once the detection engine has judged every stored event and
    /// executed every request the policy approved, as the dashboard reports
    /// it; fails after ten seconds. The engine works beside the requests, so
    /// this polls, briefly. A request a person approved but did not execute
    /// keeps it waiting, so execute those first.
    pub async fn wait_for_engine(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dashboard = self.admin_get("/security/dashboard").await.expect(200);
            let unprocessed = &dashboard.body["honeypots"]["unprocessed"];
            let approved = &dashboard.body["actions"]["by_status"]["approved"];
            if *unprocessed == json!(0) && *approved == json!(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the engine did not catch up in 10 s: {unprocessed} events unprocessed, \
                 {approved} requests approved but not executed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A second server on the same database and clock, as a replica
    /// beside this one would run. Stop it before this app ends.
    pub async fn replica(&self) -> TestApp {
        let admin_token = Secret::new(self.admin_token.clone());
        let server = serve(&self.database_url, &admin_token, &self.clock).await;
        TestApp {
            backend: self.backend,
            base_url: format!("http://{}", server.address),
            admin_token: self.admin_token.clone(),
            clock: self.clock.clone(),
            database_url: self.database_url.clone(),
            http: reqwest::Client::new(),
            server: Some(server),
            _database: TestDatabase::Shared,
        }
    }

    pub fn now(&self) -> Timestamp {
        use valhalla::clock::Clock;
        self.clock.now()
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        into_reply(request.send().await.expect("the server answers")).await
    }

    /// Sends raw bytes with the given content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base_url, path))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        }
        into_reply(request.send().await.expect("the server answers")).await
    }

    /// Sends a request as a CrowdSec bouncer does: the key in `X-Api-Key`.
    pub async fn bouncer_request(&self, method: Method, path: &str, key: Option<&str>) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base_url, path))
            .header("User-Agent", "valhalla-test/1.0");
        if let Some(key) = key {
            request = request.header("X-Api-Key", key);
        }
        into_reply(request.send().await.expect("the server answers")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(token), Some(&body))
            .await
    }

    /// As the bootstrap admin.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.get(path, &self.admin_token.clone()).await
    }

    /// As the bootstrap admin.
    pub async fn admin_post(&self, path: &str, body: Value) -> Reply {
        self.post(path, &self.admin_token.clone(), body).await
    }

    /// Creates a token with `role` and returns its secret.
    pub async fn token(&self, name: &str, role: &str) -> String {
        let reply = self
            .admin_post("/security/tokens", json!({"name": name, "role": role}))
            .await
            .expect(201);
        reply.body["token"].as_str().expect("a token").to_string()
    }

    /// Blocks an entity as the admin; `extra` may add duration or expiry.
    pub async fn block(&self, entity_type: &str, value: &str, extra: Value) -> Reply {
        let mut body = json!({"entity_type": entity_type, "value": value, "reason": "test"});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        self.admin_post("/security/policy/blocks", body).await
    }

    /// Checks an address as the admin.
    pub async fn check_ip(&self, address: &str) -> Reply {
        let path = format!("/security/policy/blocks/check?ip={}", encode(address));
        self.admin_get(&path).await.expect(200)
    }

    /// Registers a honeypot and returns `(id, key)`.
    pub async fn honeypot(&self, name: &str, honeypot_type: &str) -> (i64, String) {
        let reply = self
            .admin_post(
                "/security/honeypot/instances",
                json!({"name": name, "honeypot_type": honeypot_type}),
            )
            .await
            .expect(201);
        (
            reply.id(),
            reply.body["api_key"].as_str().expect("a key").to_string(),
        )
    }

    /// Posts one event with a honeypot key.
    pub async fn post_event(&self, key: &str, event: Value) -> Reply {
        let request = self
            .http
            .post(format!("{}/security/honeypot/events", self.base_url))
            .header("X-HONEYPOT-KEY", key)
            .json(&event);
        into_reply(request.send().await.expect("the server answers")).await
    }

    /// Posts one event with a honeypot key and an `Idempotency-Key` (bytes,
    /// so that tests can send what is not text).
    pub async fn post_named_event(&self, key: &str, name: &[u8], event: Value) -> Reply {
        let request = self
            .http
            .post(format!("{}/security/honeypot/events", self.base_url))
            .header("X-HONEYPOT-KEY", key)
            .header("Idempotency-Key", HeaderValue::from_bytes(name).unwrap())
            .json(&event);
        into_reply(request.send().await.expect("the server answers")).await
    }

    /// Posts a bulk body with a honeypot key; `format` goes in the query.
    pub async fn post_bulk(&self, key: &str, format: &str, body: impl Into<Vec<u8>>) -> Reply {
        let request = self
            .http
            .post(format!(
                "{}/security/honeypot/events/bulk?format={format}",
                self.base_url
            ))
            .header("X-HONEYPOT-KEY", key)
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body.into());
        into_reply(request.send().await.expect("the server answers")).await
    }

    /// Posts a blocklist file to the import endpoint.
    pub async fn import(&self, token: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        self.send_raw(
            Method::POST,
            "/security/policy/blocks/import",
            Some(token),
            Some(content_type),
            body.into(),
        )
        .await
    }

    /// Updates the policy as the admin.
    pub async fn update_policy(&self, changes: Value) -> Reply {
        self.admin_post("/security/policy/", changes).await
    }
}

/// Starts a server on `database_url` with the test's limits.
async fn serve(database_url: &str, admin_token: &Secret, clock: &ManualClock) -> RunningServer {
    let mut settings = ServeSettings::for_database(database_url, "127.0.0.1:0");
    settings.admin_token = Some(admin_token.clone());
    settings.max_body_bytes = 64 * 1024;
    settings.bulk_max_bytes = 256 * 1024;
    settings.import_max_bytes = 8 * 1024 * 1024;
    valhalla::server::start(&settings, Arc::new(clock.clone()))
        .await
        .expect("the server starts")
}

async fn into_reply(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The current instant, to whole seconds, so expiries are easy to state.
fn now_rounded() -> Timestamp {
    let millis = chrono::Utc::now().timestamp_millis();
    Timestamp::from_millis(millis - millis % 1000).expect("now is in range")
}

/// Parses an instant from an answer.
#[track_caller]
pub fn instant(value: &Value) -> Timestamp {
    Timestamp::parse(
        value
            .as_str()
            .unwrap_or_else(|| panic!("not a timestamp: {value}")),
    )
    .expect("an RFC 3339 instant")
}

/// Runs each test on SQLite and on PostgreSQL: `name::sqlite`, `name::postgres`.
#[macro_export]
macro_rules! backend_tests {
    ($(async fn $name:ident($app:ident: TestApp) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($app: $crate::support::TestApp) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::support::TestApp::start($crate::support::Backend::Sqlite).await;
                    run(app).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let app = $crate::support::TestApp::start($crate::support::Backend::Postgres).await;
                    run(app).await;
                }
            }
        )*
    };
}
