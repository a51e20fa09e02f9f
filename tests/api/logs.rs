//! Tests for logs: the real binary, run as an operator would, with its
//! output captured. No secret may reach the output, and every request gets
//! one line with its method, route template, status and duration.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder};
use serde_json::{json, Value};
use valhalla::auth::Secret;

/// How long the binary may take to become ready, and to stop.
const READY_POLLS: usize = 300;
const STOP_POLLS: usize = 200;
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The binary, serving on a free loopback port, its output going to files.
struct ServerProcess {
    child: Child,
    base_url: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ServerProcess {
    fn spawn(dir: &Path, log_format: &str, admin_token: &str) -> Self {
        let port = free_port();
        let stdout = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_valhalla"))
            .arg("serve")
            .env("VALHALLA_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "VALHALLA_DATABASE_URL",
                format!("sqlite://{}", dir.join("valhalla.db").display()),
            )
            .env("VALHALLA_ADMIN_TOKEN", admin_token)
            .env("VALHALLA_LOG", "debug")
            .env("VALHALLA_LOG_FORMAT", log_format)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("a stdout file"))
            .stderr(File::create(&stderr).expect("a stderr file"))
            .spawn()
            .expect("the binary starts");
        ServerProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            stdout,
            stderr,
        }
    }

    /// Polls `/readyz` until it answers 200, failing if the process exits
    /// or the bound runs out.
    async fn wait_until_ready(&mut self, http: &Client) {
        for _ in 0..READY_POLLS {
            if let Some(status) = self.child.try_wait().expect("the process can be polled") {
                panic!("the server exited with {status}: {}", self.output());
            }
            let ready = http.get(format!("{}/readyz", self.base_url)).send().await;
            if ready.is_ok_and(|response| response.status() == 200) {
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!("the server did not become ready: {}", self.output());
    }

    /// Sends SIGTERM and waits, boundedly, for a clean exit.
    async fn terminate(&mut self) {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(signalled.success(), "kill -TERM failed");
        for _ in 0..STOP_POLLS {
            if let Some(status) = self.child.try_wait().expect("the process can be polled") {
                assert!(status.success(), "exit {status}: {}", self.output());
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!("the server did not stop on SIGTERM: {}", self.output());
    }

    /// Everything the process wrote, stdout then stderr.
    fn output(&self) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        format!("{}{}", read(&self.stdout), read(&self.stderr))
    }
}

impl Drop for ServerProcess {
    /// A failed test must not leave the process behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago: bound, read, released.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// A request as the log should show it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Logged {
    method: String,
    route: String,
    status: u16,
}

/// Sends requests, remembering each with its route template, and every
/// secret that went over the wire.
struct Session {
    http: Client,
    base_url: String,
    sent: Vec<Logged>,
    secrets: Vec<String>,
}

impl Session {
    async fn send(&mut self, route: &str, request: RequestBuilder) -> Value {
        let request = request.build().expect("a request");
        let method = request.method().to_string();
        let response = self.http.execute(request).await.expect("an answer");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        self.sent.push(Logged {
            method,
            route: route.to_string(),
            status,
        });
        body
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
    }

    /// Asserts the status of the last request sent.
    #[track_caller]
    fn expect_last(&self, status: u16) {
        let last = self.sent.last().expect("a request was sent");
        assert_eq!(last.status, status, "{last:?}");
    }

    fn secret(&mut self, value: &Value) -> String {
        let secret = value.as_str().expect("a secret string").to_string();
        self.secrets.push(secret.clone());
        secret
    }
}

/// Creates tokens, registers honeypots, rotates a key and posts events
/// carrying credentials, using and refusing each secret at least once.
async fn exercise_secrets(session: &mut Session, admin: &str) {
    let analyst = session
        .send(
            "/security/tokens",
            session
                .request(Method::POST, "/security/tokens")
                .bearer_auth(admin)
                .json(&json!({"name": "log-analyst", "role": "analyst"})),
        )
        .await;
    let analyst = session.secret(&analyst["token"]);
    let detector = session
        .send(
            "/security/tokens",
            session
                .request(Method::POST, "/security/tokens")
                .bearer_auth(admin)
                .json(&json!({"name": "log-detector", "role": "detector"})),
        )
        .await;
    let detector = session.secret(&detector["token"]);
    for token in [&analyst, &detector] {
        let request = session
            .request(Method::GET, "/security/dashboard")
            .bearer_auth(token);
        session.send("/security/dashboard", request).await;
    }
    let refused = session
        .request(Method::GET, "/security/tokens")
        .bearer_auth(&analyst);
    session.send("/security/tokens", refused).await;
    let unknown = Secret::generate("vh_").expose().to_string();
    session.secrets.push(unknown.clone());
    let refused = session
        .request(Method::GET, "/security/policy/")
        .bearer_auth(&unknown);
    session.send("/security/policy/", refused).await;

    let mut keys = Vec::new();
    for name in ["log-ssh-01", "log-web-01"] {
        let request = session
            .request(Method::POST, "/security/honeypot/instances")
            .bearer_auth(&analyst)
            .json(&json!({"name": name, "honeypot_type": "ssh"}));
        let registered = session.send("/security/honeypot/instances", request).await;
        let key = session.secret(&registered["api_key"]);
        keys.push((registered["id"].as_i64().expect("an id"), key));
    }
    let (rotated_id, old_key) = keys[0].clone();
    let request = session
        .request(
            Method::POST,
            &format!("/security/honeypot/instances/{rotated_id}/rotate-key"),
        )
        .bearer_auth(admin);
    let rotated = session
        .send("/security/honeypot/instances/{id}/rotate-key", request)
        .await;
    let new_key = session.secret(&rotated["api_key"]);

    let events = [(&new_key, "root"), (&keys[1].1, "admin"), (&old_key, "pi")];
    for (index, (key, username)) in events.into_iter().enumerate() {
        let password = format!("pw-{}", Secret::generate("").expose());
        session.secrets.push(password.clone());
        let event = json!({
            "event_type": "auth_attempt",
            "source_ip": format!("203.0.113.{}", index + 10),
            "username": username,
            "password": password,
            "payload": {"success": index == 1},
        });
        let request = session
            .request(Method::POST, "/security/honeypot/events")
            .header("X-HONEYPOT-KEY", key.as_str())
            .json(&event);
        session.send("/security/honeypot/events", request).await;
        session.expect_last(if *key == old_key { 401 } else { 201 });
    }

    let password = format!("pw-{}", Secret::generate("").expose());
    session.secrets.push(password.clone());
    let record = json!({
        "event_type": "auth_attempt", "source_ip": "203.0.113.50",
        "username": "ubuntu", "password": password,
        "occurred_at": "2026-12-04T13:00:00.123Z",
    });
    let ndjson = format!("{record}\n{{\"password\": \"{password}\", \n");
    let request = session
        .request(Method::POST, "/security/honeypot/events/bulk")
        .header("X-HONEYPOT-KEY", new_key.as_str())
        .header("Content-Type", "application/x-ndjson")
        .body(ndjson);
    let report = session
        .send("/security/honeypot/events/bulk", request)
        .await;
    session.expect_last(200);
    assert_eq!(report["accepted"], 1, "{report}");

    let request = session
        .request(Method::GET, "/security/honeypot/events?limit=10")
        .bearer_auth(&detector);
    session.send("/security/honeypot/events", request).await;
}

/// Runs the binary with `log_format`, exercises it, stops it, and returns
/// what it wrote with the session that produced it.
async fn run_logged_session(log_format: &str) -> (String, Session) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let admin = Secret::generate("vh_test_").expose().to_string();
    let http = Client::new();
    let mut server = ServerProcess::spawn(dir.path(), log_format, &admin);
    server.wait_until_ready(&http).await;

    let mut session = Session {
        http,
        base_url: server.base_url.clone(),
        sent: Vec::new(),
        secrets: vec![admin.clone()],
    };
    exercise_secrets(&mut session, &admin).await;
    server.terminate().await;

    assert!(
        session.secrets.len() >= 11,
        "the session used fewer secrets than planned: {:?}",
        session.sent
    );
    (server.output(), session)
}

fn assert_no_secret_in(output: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !output.contains(secret.as_str()),
            "a secret reached the output: {secret}\n{output}"
        );
    }
}

/// Each request sent must have its own line: as many lines for a method,
/// route and status as requests were sent with them.
fn assert_one_line_per_request(logged: &[Logged], sent: &[Logged]) {
    for request in sent {
        let sent_count = sent.iter().filter(|other| *other == request).count();
        let logged_count = logged.iter().filter(|line| *line == request).count();
        assert!(
            logged_count >= sent_count,
            "{request:?} was sent {sent_count} times but logged {logged_count} times: {logged:?}"
        );
    }
}

/// Request lines of the JSON format: one object per line, fields flattened.
fn json_request_lines(output: &str) -> Vec<Logged> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "request")
        .map(|line| {
            assert!(
                line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
                "no duration: {line}"
            );
            Logged {
                method: line["http.method"].as_str().expect("a method").to_string(),
                route: line["http.route"].as_str().expect("a route").to_string(),
                status: line["http.status"].as_u64().expect("a status") as u16,
            }
        })
        .collect()
}

/// Request lines of the text format: `... request http.method=GET ...`.
fn text_request_lines(output: &str) -> Vec<Logged> {
    output
        .lines()
        .filter(|line| line.contains(" request http.method="))
        .map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
                    .to_string()
            };
            let duration: f64 = field("duration_ms").parse().expect("a duration");
            assert!(duration >= 0.0, "{line}");
            Logged {
                method: field("http.method"),
                route: field("http.route"),
                status: field("http.status").parse().expect("a status"),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_text_logs_carry_no_secret_and_one_line_per_request() {
    let (output, session) = run_logged_session("text").await;

    assert_no_secret_in(&output, &session.secrets);
    assert!(
        !output.contains('\u{1b}'),
        "colour codes in a file: {output}"
    );
    assert_one_line_per_request(&text_request_lines(&output), &session.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_json_logs_carry_no_secret_and_one_line_per_request() {
    let (output, session) = run_logged_session("json").await;

    assert_no_secret_in(&output, &session.secrets);
    assert_one_line_per_request(&json_request_lines(&output), &session.sent);
}
