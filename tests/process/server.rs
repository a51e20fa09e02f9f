//! The real `valhalla serve` as a child process on a free loopback port:
//! for the process tests and the benchmarks, which drive or measure the
//! binary people run rather than the library inside it. Included by path
//! (`#[path = "…/tests/process/server.rs"] mod server;`) from each target
//! that needs it, since tests and benchmarks are separate crates.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running server, killed by its own pid when dropped, passed or failed.
pub struct ServerProcess {
    child: Child,
    pub base_url: String,
    /// The admin token it was started with.
    pub token: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts the server on `database_url` with a fresh admin token and
    /// returns once it answers `/readyz`; panics after 30 s.
    #[allow(dead_code)] // not every target that includes this file uses both
    pub async fn start(database_url: &str) -> ServerProcess {
        Self::start_with(database_url, &[]).await
    }

    /// As [`Self::start`], with more environment variables (settings).
    pub async fn start_with(database_url: &str, settings: &[(&str, &str)]) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret).expect("the operating system provides randomness");
        let token = format!("vh_test_{}", hex::encode(secret));
        let child = Command::new(env!("CARGO_BIN_EXE_valhalla"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("VALHALLA_DATABASE_URL", database_url)
            .env("VALHALLA_ADMIN_TOKEN", &token)
            .env("VALHALLA_LOG", "warn")
            .envs(settings.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server binary starts");
        let server = ServerProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            token,
        };

        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            let ready = http.get(format!("{}/readyz", self.base_url)).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready within {READY_WITHIN:?}");
    }

    /// `VmHWM`, the server's peak resident memory so far, in MiB.
    #[allow(dead_code)] // the benchmarks report it; the tests do not
    pub fn peak_memory_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}
