//! A server that answers every request with a redirect to a second
//! listener, which only counts who arrives: a client that arrives there
//! followed the redirect, carrying its headers (and secrets) along.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct RedirectTrap {
    /// Plain http: the redirect's danger does not depend on TLS.
    pub base_url: String,
    arrived: Arc<AtomicUsize>,
}

impl RedirectTrap {
    /// Connections that reached the redirect's target.
    pub fn followed(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

/// Both listeners live as long as the test's runtime.
pub async fn start_redirect_trap() -> RedirectTrap {
    let redirecting = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let target = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let base_url = format!("http://{}", redirecting.local_addr().expect("an address"));
    let location = format!("http://{}/stolen", target.local_addr().expect("an address"));
    let arrived = Arc::new(AtomicUsize::new(0));

    let counter = arrived.clone();
    tokio::spawn(async move {
        while let Ok((_connection, _)) = target.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    tokio::spawn(async move {
        while let Ok((connection, _)) = redirecting.accept().await {
            tokio::spawn(redirect(connection, location.clone()));
        }
    });
    RedirectTrap { base_url, arrived }
}

/// Reads one request (headers, then `Content-Length` bytes of body, at
/// most 16 MiB) and answers 307 to `location`.
async fn redirect(mut connection: TcpStream, location: String) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    let body_start = loop {
        let Ok(read) = connection.read(&mut buffer).await else {
            return;
        };
        if read == 0 || request.len() > 16 << 20 {
            return;
        }
        request.extend_from_slice(&buffer[..read]);
        if let Some(end) = request.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let headers = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
    let length: usize = headers
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
        .min(16 << 20);
    let mut body_read = request.len() - body_start;
    while body_read < length {
        match connection.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => body_read += read,
        }
    }
    let answer = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let _ = connection.write_all(answer.as_bytes()).await;
    let _ = connection.shutdown().await;
}
