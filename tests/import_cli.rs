//! `valhalla block import` end to end: the real server binary on a
//! temporary SQLite file, and the real command streaming a file to it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const VALHALLA: &str = env!("CARGO_BIN_EXE_valhalla");

#[path = "process/server.rs"]
mod server;

#[path = "process/tls.rs"]
mod tls;

#[path = "process/trap.rs"]
mod trap;

use server::ServerProcess;

/// The server on a temporary SQLite file of its own.
struct Server {
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let database = format!("sqlite://{}", dir.path().join("valhalla.db").display());
        let process = ServerProcess::start(&database).await;
        Server { process, _dir: dir }
    }

    async fn check(&self, address: &str) -> Value {
        reqwest::Client::new()
            .get(format!(
                "{}/security/policy/blocks/check",
                self.process.base_url
            ))
            .query(&[("ip", address)])
            .bearer_auth(&self.process.token)
            .send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("a JSON answer")
    }
}

/// Runs `valhalla block import` with `arguments` after the file; bounded by
/// the command's own `--timeout-seconds`.
fn import(server: &Server, file: &Path, token: &str, arguments: &[&str]) -> Output {
    import_to(&server.process.base_url, file, token, arguments)
}

/// As [`import`], to the server at `url`.
fn import_to(url: &str, file: &Path, token: &str, arguments: &[&str]) -> Output {
    Command::new(VALHALLA)
        .args(["block", "import"])
        .arg(file)
        .args(["--url", url, "--token", token, "--timeout-seconds", "60"])
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .expect("the import command runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_streams_a_file_and_prints_the_summary() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("blocklist.csv");
    let mut csv = String::from("entity_type,value,reason,duration_seconds\n");
    for n in 0..3000 {
        csv.push_str(&format!(
            "ip,198.18.{}.{},\"scan, {n}\",3600\n",
            n / 256,
            n % 256
        ));
    }
    csv.push_str("ip,127.0.0.1,allowlisted,\ncidr,198.19.0.0/16,range,\nip,nonsense,bad,\n");
    std::fs::write(&file, csv).expect("the file is written");

    let output = import(&server, &file, &server.process.token, &[]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("3001 created, 0 extended, 0 unchanged, 2 rejected"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 3002: 127.0.0.1 overlaps the allowlist"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3004: value:"), "{stderr}");
    assert_eq!(server.check("198.18.11.183").await["blocked"], json!(true));
    assert_eq!(server.check("198.19.200.1").await["blocked"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_fails_on_an_http_error() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("blocklist.ndjson");
    let line = json!({"entity_type": "ip", "value": "198.18.0.1", "reason": "r"});
    std::fs::write(&file, format!("{line}\n")).expect("the file is written");

    let refused = import(&server, &file, "vh_wrong_token_wrong_token_wrong", &[]);
    let as_csv = import(&server, &file, &server.process.token, &["--format", "csv"]);

    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!as_csv.status.success(), "a JSON line is no CSV header");
    let stderr = String::from_utf8_lossy(&as_csv.stderr);
    assert!(stderr.contains("422"), "{stderr}");
    assert_eq!(server.check("198.18.0.1").await["blocked"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_speaks_https_and_trusts_only_the_authorities_it_is_given() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = server.process.base_url.rsplit(':').next().expect("a port");
    let proxy = tls::start_tls_proxy(dir.path(), port.parse().expect("a port number")).await;
    let file = dir.path().join("blocklist.ndjson");
    let line = json!({"entity_type": "ip", "value": "198.18.0.9", "reason": "r"});
    std::fs::write(&file, format!("{line}\n")).expect("the file is written");
    let token = &server.process.token;
    let ca_cert = proxy.ca_cert.to_str().expect("a UTF-8 path");

    let untrusted = import_to(&proxy.base_url, &file, token, &[]);

    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("no TLS connection"), "{stderr}");
    assert!(
        !stderr.contains(token.as_str()),
        "the token leaked: {stderr}"
    );
    assert_eq!(server.check("198.18.0.9").await["blocked"], json!(false));

    let trusted = import_to(&proxy.base_url, &file, token, &["--ca-cert", ca_cert]);

    let stdout = String::from_utf8_lossy(&trusted.stdout);
    assert!(trusted.status.success(), "{stdout}");
    assert!(stdout.contains("1 created"), "{stdout}");
    assert_eq!(server.check("198.18.0.9").await["blocked"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_follows_no_redirect() {
    let trap = trap::start_redirect_trap().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("blocklist.ndjson");
    let line = json!({"entity_type": "ip", "value": "198.18.0.9", "reason": "r"});
    std::fs::write(&file, format!("{line}\n")).expect("the file is written");

    let output = import_to(
        &trap.base_url,
        &file,
        "vh_some_token_of_an_operator_xyz",
        &[],
    );

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("307") && stderr.contains("/stolen"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("vh_some_token"),
        "the token leaked: {stderr}"
    );
    assert_eq!(trap.followed(), 0, "the import followed the redirect");
}
