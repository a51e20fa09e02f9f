//! The request deadline of the real server binary: a client that stalls
//! mid-body is answered 408 when its time is up, and the answer is counted
//! on `GET /metrics` like any other.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[path = "process/server.rs"]
mod server;

use server::ServerProcess;

/// Sends a block request's head and the first bytes of a body it says is
/// longer, then waits; returns the answer and how long it took.
fn stall_mid_body(base_url: &str, token: &str) -> (String, Duration) {
    let address = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("the server listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let head = format!(
        "POST /security/policy/blocks HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"entity_type\": \"ip\""
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).expect("the head is sent");

    let mut answer = [0u8; 4096];
    let read = stream
        .read(&mut answer)
        .expect("an answer before the read timeout");
    (
        String::from_utf8_lossy(&answer[..read]).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_at_the_deadline_and_counted() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let database = format!("sqlite://{}", dir.path().join("valhalla.db").display());
    let settings = [("VALHALLA_REQUEST_TIMEOUT_SECONDS", "1")];
    let server = ServerProcess::start_with(&database, &settings).await;

    let (base_url, token) = (server.base_url.clone(), server.token.clone());
    let (answer, waited) = tokio::task::spawn_blocking(move || stall_mid_body(&base_url, &token))
        .await
        .expect("the exchange ends");

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.base_url))
        .bearer_auth(&server.token)
        .send()
        .await
        .expect("the server answers")
        .text()
        .await
        .expect("a text answer");
    let series = "valhalla_http_requests_total{route=\"/security/policy/blocks\",\
                  method=\"POST\",status=\"408\"} 1";
    assert!(metrics.lines().any(|line| line == series), "{metrics}");
}
