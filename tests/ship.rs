//! `valhalla ship` end to end: the real server and the real shipper run as
//! child processes; both are killed and restarted mid-stream, the log is
//! rotated and truncated, and every line must be stored exactly once.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const VALHALLA: &str = env!("CARGO_BIN_EXE_valhalla");

#[path = "process/tls.rs"]
mod tls;

#[path = "process/trap.rs"]
mod trap;
const COWRIE_LOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/samples/honeypot/cowrie/cowrie.json"
);

/// How long any one thing may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);

/// A child process this test started. Dropping it kills it (by its own
/// pid), so a failing test leaves nothing running.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, log: PathBuf) -> Self {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("a log file for the child");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {command:?}: {error}"));
        Self { child, log }
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL to our child");
        self.child.wait().expect("the child is reaped");
    }

    /// SIGTERM, then waits (bounded) for the exit.
    fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM could not be sent");
        self.wait_for_exit()
    }

    fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit in time:\n{}",
                self.output()
            );
            std::thread::sleep(POLL);
        }
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago, for a server that must keep its
/// address across restarts.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// The real `valhalla serve` on a temporary SQLite file.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    admin_token: String,
    process: Option<Process>,
    starts: usize,
    /// Settings beyond the database, address and token.
    settings: Vec<(&'static str, &'static str)>,
    http: reqwest::Client,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    async fn start_with(settings: Vec<(&'static str, &'static str)>) -> Self {
        let mut server = Server {
            dir: tempfile::tempdir().expect("a temporary directory"),
            port: free_port(),
            admin_token: random_hex(),
            process: None,
            starts: 0,
            settings,
            http: reqwest::Client::new(),
        };
        server.spawn().await;
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let database = self.dir.path().join("valhalla.db");
        let log = self.dir.path().join(format!("server-{}.log", self.starts));
        let mut command = Command::new(VALHALLA);
        command
            .arg("serve")
            .env_clear()
            .env("VALHALLA_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "VALHALLA_DATABASE_URL",
                format!("sqlite://{}", database.display()),
            )
            .env("VALHALLA_ADMIN_TOKEN", &self.admin_token)
            .envs(self.settings.iter().copied());
        self.process = Some(Process::spawn(&mut command, log));
        self.wait_until_ready().await;
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let ready = self.http.get(format!("{}/readyz", self.url())).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            let process = self.process.as_mut().expect("a server process");
            assert!(
                !process.has_exited(),
                "the server exited:\n{}",
                process.output()
            );
            assert!(Instant::now() < deadline, "the server never got ready");
            tokio::time::sleep(POLL).await;
        }
    }

    fn kill(&mut self) {
        self.process.take().expect("a running server").kill();
    }

    async fn admin(&self, request: reqwest::RequestBuilder) -> Value {
        let response = request
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        let body = response.text().await.expect("a body");
        assert!(status.is_success(), "{status}: {body}");
        serde_json::from_str(&body).expect("a JSON answer")
    }

    /// Registers a Cowrie honeypot; returns its id and key.
    async fn register_honeypot(&self, name: &str) -> (i64, String) {
        let path = format!("{}/security/honeypot/instances", self.url());
        let body = json!({"name": name, "honeypot_type": "ssh"});
        let reply = self.admin(self.http.post(path).json(&body)).await;
        let key = reply["api_key"].as_str().expect("a key").to_string();
        (reply["id"].as_i64().expect("an id"), key)
    }

    /// Events stored for the honeypot, as the registry counts them.
    async fn event_count(&self, honeypot_id: i64) -> i64 {
        let path = format!("{}/security/honeypot/instances?limit=1000", self.url());
        let page = self.admin(self.http.get(path)).await;
        let items = page["items"].as_array().expect("items");
        let honeypot = items.iter().find(|item| item["id"] == honeypot_id);
        honeypot.expect("the honeypot")["event_count"]
            .as_i64()
            .expect("a count")
    }

    /// Waits until at least `expected` events are stored.
    async fn wait_for_count(&self, honeypot_id: i64, expected: i64, shipper: &Process) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let count = self.event_count(honeypot_id).await;
            if count >= expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} of {expected} events stored in time; shipper log:\n{}",
                shipper.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The username of every stored event of the honeypot, all pages.
    async fn usernames(&self, honeypot_id: i64) -> Vec<String> {
        let mut usernames = Vec::new();
        let mut cursor = String::new();
        loop {
            let path = format!(
                "{}/security/honeypot/events?honeypot_id={honeypot_id}&limit=1000{cursor}",
                self.url()
            );
            let page = self.admin(self.http.get(path)).await;
            for event in page["items"].as_array().expect("items") {
                usernames.push(event["username"].as_str().expect("a username").to_string());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return usernames,
            }
        }
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("randomness");
    hex::encode(bytes)
}

/// Starts `valhalla ship`; the key goes by environment, as advised.
fn start_shipper(url: &str, key: &str, log: &Path, options: &[&str], name: &str) -> Process {
    let mut command = Command::new(VALHALLA);
    command
        .arg("ship")
        .args(["--url", url, "--format", "cowrie"])
        .args(options)
        .arg(log)
        .env_clear()
        .env("VALHALLA_SHIP_KEY", key)
        .env("VALHALLA_LOG", "info");
    let output = log.with_file_name(format!("{name}.log"));
    Process::spawn(&mut command, output)
}

/// A Cowrie log that the test writes: failed logins, each with its own
/// username (`user000042`), source and microsecond timestamp.
struct CowrieLog {
    path: PathBuf,
    written: usize,
}

impl CowrieLog {
    fn record(number: usize) -> String {
        let base = 1_796_396_400_000_000_i64; // 2026-12-04T15:00:00Z
        let at = chrono::DateTime::from_timestamp_micros(base + number as i64 * 1_003)
            .expect("in range")
            .format("%Y-%m-%dT%H:%M:%S%.6fZ");
        format!(
            concat!(
                r#"{{"session":"{number:012x}","protocol":"ssh","src_ip":"198.51.100.{source}","#,
                r#""src_port":{port},"dst_ip":"192.0.2.1","dst_port":2222,"#,
                r#""username":"user{number:06}","password":"pw{number}","#,
                r#""eventid":"cowrie.login.failed","sensor":"ship-test","#,
                r#""uuid":"06feecdc-eff3-11f1-a815-6ed379913169","timestamp":"{at}","#,
                r#""message":"login attempt [user{number:06}/pw{number}] failed"}}"#,
            ),
            number = number,
            source = 1 + number % 250,
            port = 30_000 + number % 30_000,
            at = at,
        )
    }

    /// Appends `count` records in a few writes, one of which ends in the
    /// middle of a line, as a busy writer's would.
    fn append(&mut self, count: usize) {
        let text: String = (self.written..self.written + count)
            .map(|number| Self::record(number) + "\n")
            .collect();
        self.written += count;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .expect("the log opens");
        let middle = text.len() / 2 + 7;
        for part in [&text[..middle], &text[middle..]] {
            file.write_all(part.as_bytes()).expect("the log is written");
            file.flush().expect("flushed");
        }
    }

    /// `logrotate` without `copytruncate`: the file is renamed away and the
    /// next record starts a new file under the same name.
    fn rotate(&self) {
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".1");
        std::fs::rename(&self.path, rotated).expect("the log is renamed");
    }

    /// `copytruncate`: the same file, emptied in place.
    fn truncate(&self) {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
            .expect("the log is truncated");
    }

    fn expected_usernames(&self) -> Vec<String> {
        (0..self.written).map(|n| format!("user{n:06}")).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_is_stored_exactly_once_through_kills_rotation_and_truncation() {
    let mut server = Server::start().await;
    let (honeypot, key) = server.register_honeypot("cowrie-ship").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut log = CowrieLog {
        path: dir.path().join("cowrie.json"),
        written: 0,
    };
    let (url, path) = (server.url(), log.path.clone());
    let options = ["--batch-lines", "50", "--flush-millis", "100"];
    let start = |name: &str| start_shipper(&url, &key, &path, &options, name);

    // The log does not exist yet: the shipper waits for it.
    let shipper = start("shipper-1");
    log.append(100);
    server.wait_for_count(honeypot, 100, &shipper).await;

    log.append(2000);
    server.wait_for_count(honeypot, 101, &shipper).await;
    shipper.kill();
    log.append(300);
    let shipper = start("shipper-2");
    server.wait_for_count(honeypot, 2400, &shipper).await;

    log.append(2000);
    server.wait_for_count(honeypot, 2401, &shipper).await;
    server.kill();
    log.append(300);
    server.spawn().await;
    server.wait_for_count(honeypot, 4700, &shipper).await;

    // Lines the old file got just before its rename are still shipped.
    log.append(200);
    log.rotate();
    log.append(500);
    server.wait_for_count(honeypot, 5400, &shipper).await;

    // Fewer bytes than the shipper had read, so the shrink is visible.
    log.truncate();
    log.append(100);
    log.append(200);
    server.wait_for_count(honeypot, 5700, &shipper).await;

    // Stopped across a rotation: the old file's unshipped end is found by
    // its identity beside the log, and shipped before the new file.
    log.append(300);
    shipper.kill();
    log.rotate();
    log.append(100);
    let shipper = start("shipper-3");
    server.wait_for_count(honeypot, 6100, &shipper).await;

    let status = shipper.terminate();
    assert!(
        status.success(),
        "SIGTERM ends the shipper cleanly: {status}"
    );
    let mut stored = server.usernames(honeypot).await;
    stored.sort();
    let expected = log.expected_usernames();
    assert_eq!(
        stored.len(),
        expected.len(),
        "every line stored once, none twice"
    );
    assert_eq!(stored, expected);
}

/// Runs `valhalla ship --once` to completion and returns its stderr.
fn ship_once(server: &Server, key: &str, log: &Path, state: &Path) -> (ExitStatus, String) {
    ship_once_to(&server.url(), &[], key, log, state)
}

/// As [`ship_once`], to `url` with more `options`.
fn ship_once_to(
    url: &str,
    options: &[&str],
    key: &str,
    log: &Path,
    state: &Path,
) -> (ExitStatus, String) {
    let output = Command::new(VALHALLA)
        .args(["ship", "--once", "--url", url, "--format", "cowrie"])
        .args(options)
        .arg("--state-file")
        .arg(state)
        .arg(log)
        .env_clear()
        .env("VALHALLA_SHIP_KEY", key)
        .stdin(Stdio::null())
        .output()
        .expect("the shipper runs");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status, stderr)
}

/// The number before `label` in the summary line, e.g. `74 accepted`.
fn summary_count(stderr: &str, label: &str) -> u64 {
    let summary = stderr
        .lines()
        .find(|line| line.contains(" lines read, "))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let words: Vec<&str> = summary
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|word| !word.is_empty())
        .collect();
    let label: Vec<&str> = label.split(' ').collect();
    (1..words.len())
        .find(|&at| words[at..].starts_with(&label))
        .and_then(|at| words[at - 1].parse().ok())
        .unwrap_or_else(|| panic!("no count of {label:?} in {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_imports_the_real_cowrie_log_and_a_second_run_sends_nothing_new() {
    let server = Server::start().await;
    let (honeypot, key) = server.register_honeypot("cowrie-01").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The shared data may be read-only: the state goes elsewhere.
    let state = dir.path().join("cowrie.state");
    let log = Path::new(COWRIE_LOG);
    let lines = std::fs::read_to_string(log)
        .expect("the sample log")
        .lines()
        .count() as u64;

    let (status, first) = ship_once(&server, &key, log, &state);

    assert!(status.success(), "{first}");
    assert_eq!(summary_count(&first, "lines read"), lines, "{first}");
    // The attack steps of the sample, as the bulk ingest tests count them.
    assert_eq!(summary_count(&first, "accepted"), 74, "{first}");
    assert_eq!(summary_count(&first, "skipped"), lines - 74, "{first}");
    assert_eq!(summary_count(&first, "rejected"), 0, "{first}");
    assert_eq!(summary_count(&first, "duplicates"), 0, "{first}");
    assert_eq!(server.event_count(honeypot).await, 74);

    let (status, second) = ship_once(&server, &key, log, &state);

    assert!(status.success(), "{second}");
    assert_eq!(summary_count(&second, "lines read"), 0, "{second}");
    assert_eq!(summary_count(&second, "accepted"), 0, "{second}");
    assert_eq!(server.event_count(honeypot).await, 74);

    std::fs::remove_file(&state).expect("the state file exists");
    let (status, third) = ship_once(&server, &key, log, &state);

    assert!(status.success(), "{third}");
    assert_eq!(
        summary_count(&third, "duplicates"),
        74,
        "without its state the shipper resends, and the server keeps one copy: {third}"
    );
    assert_eq!(server.event_count(honeypot).await, 74);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_over_https_trusting_a_private_authority_and_never_to_an_untrusted_server() {
    let server = Server::start().await;
    let (honeypot, key) = server.register_honeypot("cowrie-01").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let proxy = tls::start_tls_proxy(dir.path(), server.port).await;
    let ca_cert = proxy.ca_cert.to_str().expect("a UTF-8 path");
    let log = Path::new(COWRIE_LOG);

    let (status, untrusted) = ship_once_to(&proxy.base_url, &[], &key, log, &dir.path().join("a"));

    assert!(!status.success(), "{untrusted}");
    assert!(untrusted.contains("no TLS connection"), "{untrusted}");
    assert!(untrusted.contains("--ca-cert"), "{untrusted}");
    assert!(!untrusted.contains(&key), "the key leaked: {untrusted}");
    assert_eq!(server.event_count(honeypot).await, 0);

    let (status, trusted) = ship_once_to(
        &proxy.base_url,
        &["--ca-cert", ca_cert],
        &key,
        log,
        &dir.path().join("b"),
    );

    assert!(status.success(), "{trusted}");
    assert_eq!(summary_count(&trusted, "accepted"), 74, "{trusted}");
    assert_eq!(server.event_count(honeypot).await, 74);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stops_at_start_on_a_certificate_it_will_never_trust() {
    let server = Server::start().await;
    let (_, key) = server.register_honeypot("cowrie-01").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let proxy = tls::start_tls_proxy(dir.path(), server.port).await;
    // A quiet honeypot: nothing to send, so only a check at start can tell.
    let log = dir.path().join("cowrie.json");
    std::fs::write(&log, "").expect("an empty log");

    let mut shipper = start_shipper(&proxy.base_url, &key, &log, &[], "shipper");

    let status = shipper.wait_for_exit();
    assert!(!status.success());
    let output = shipper.output();
    assert!(output.contains("no TLS connection"), "{output}");
    assert!(output.contains("--ca-cert"), "{output}");
    assert!(!output.contains(&key), "the key leaked: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_so_the_key_goes_nowhere_else() {
    let trap = trap::start_redirect_trap().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = format!("vh_hp_{}", random_hex());

    let (status, stderr) = ship_once_to(
        &trap.base_url,
        &[],
        &key,
        Path::new(COWRIE_LOG),
        &dir.path().join("state"),
    );

    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("307"), "{stderr}");
    assert!(stderr.contains("/stolen"), "{stderr}");
    assert!(!stderr.contains(&key), "the key leaked: {stderr}");
    assert_eq!(trap.followed(), 0, "the shipper followed the redirect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_servers_body_limit_is_sent_in_halves() {
    let server = Server::start_with(vec![("VALHALLA_BULK_MAX_BYTES", "8192")]).await;
    let (honeypot, key) = server.register_honeypot("cowrie-01").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = Path::new(COWRIE_LOG);
    assert!(std::fs::metadata(log).expect("the sample log").len() > 8 * 8192);

    let (status, stderr) = ship_once(&server, &key, log, &dir.path().join("state"));

    assert!(status.success(), "{stderr}");
    assert_eq!(summary_count(&stderr, "accepted"), 74, "{stderr}");
    assert_eq!(summary_count(&stderr, "rejected"), 0, "{stderr}");
    assert_eq!(server.event_count(honeypot).await, 74);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_stops_the_shipper_with_an_error_that_does_not_show_the_key() {
    let server = Server::start().await;
    server.register_honeypot("cowrie-01").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let wrong_key = format!("vh_hp_{}", random_hex());

    let (status, stderr) = ship_once(
        &server,
        &wrong_key,
        Path::new(COWRIE_LOG),
        &dir.path().join("s"),
    );

    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains(&wrong_key), "the key leaked: {stderr}");
    assert!(!dir.path().join("s").exists(), "nothing was acknowledged");
}
