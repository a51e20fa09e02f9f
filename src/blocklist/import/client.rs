//! `valhalla block import FILE`: sends a blocklist file to the import
//! endpoint as it reads it, with a progress line, and prints the summary.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use crate::auth::Secret;
use crate::error::{Error, Result};
use crate::shipper::client as http_client;
use crate::shipper::ServerUrl;

/// Settings of `valhalla block import`.
#[derive(Debug, Clone, Args)]
pub struct ImportSettings {
    /// The file to import: NDJSON (one block a line) or CSV with a header.
    pub file: PathBuf,

    /// Valhalla's base URL, e.g. `https://valhalla.example:8443`.
    #[arg(long, env = "VALHALLA_URL", value_parser = ServerUrl::parse)]
    pub url: ServerUrl,

    /// A PEM file of certificate authorities to trust for https, beside Mozilla's built-in roots.
    #[arg(long, env = "VALHALLA_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// A `policy_owner` or `admin` token.
    #[arg(long, env = "VALHALLA_TOKEN", hide_env_values = true,
        value_parser = crate::config::parse_secret)]
    pub token: Secret,

    /// The file's format; by default `csv` for a `.csv` file, else `ndjson`.
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,

    /// Longest the whole import may take, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    Ndjson,
    Csv,
}

impl FileFormat {
    fn of_path(path: &Path) -> Self {
        let csv = path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"));
        if csv {
            FileFormat::Csv
        } else {
            FileFormat::Ndjson
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            FileFormat::Ndjson => "application/x-ndjson",
            FileFormat::Csv => "text/csv",
        }
    }
}

/// The server's answer, as far as the summary needs it.
#[derive(Debug, Deserialize)]
struct ImportSummary {
    created: u64,
    extended: u64,
    unchanged: u64,
    rejected: Vec<RejectedLine>,
    rejected_total: u64,
}

#[derive(Debug, Deserialize)]
struct RejectedLine {
    line: u64,
    error: String,
}

/// Sends the file and prints what the server made of it: the summary on
/// stdout, the rejected lines on stderr. Fails on any answer but 200.
pub async fn run(settings: ImportSettings) -> Result<()> {
    let format = settings
        .format
        .unwrap_or_else(|| FileFormat::of_path(&settings.file));
    if settings.url.is_clear_text_off_host() {
        eprintln!(
            "warning: plain http to another host: the token crosses the network unencrypted; \
             use https"
        );
    }
    let started = Instant::now();

    let summary = send_file(&settings, format).await?;

    print_summary(&settings.file, &summary, started.elapsed());
    Ok(())
}

async fn send_file(settings: &ImportSettings, format: FileFormat) -> Result<ImportSummary> {
    let cannot_read = |error: std::io::Error| {
        Error::Command(format!("cannot read {}: {error}", settings.file.display()))
    };
    let file = tokio::fs::File::open(&settings.file)
        .await
        .map_err(cannot_read)?;
    let metadata = file.metadata().await.map_err(cannot_read)?;
    if !metadata.is_file() {
        return Err(Error::Command(format!(
            "cannot read {}: not a regular file",
            settings.file.display()
        )));
    }
    let size = metadata.len();
    let progress = Arc::new(Mutex::new(ByteProgress::new(size)));
    let counting = progress.clone();
    let body = ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            lock(&counting).sent(bytes.len() as u64);
        }
    });

    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(settings.timeout_seconds));
    let client =
        http_client::build(builder, settings.ca_cert.as_deref()).map_err(Error::Command)?;
    let response = client
        .post(settings.url.endpoint(crate::http::IMPORT_PATH))
        .bearer_auth(settings.token.expose())
        .header(CONTENT_TYPE, format.media_type())
        .header(CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    lock(&progress).finish();

    // A server that refuses the request (a wrong token, a CSV header it
    // cannot read) answers at once and closes the connection while the
    // file is still being sent; the client then sees only the broken
    // upload, not the answer, so say what that usually means.
    let response = response.map_err(|error| {
        if let Some(message) = http_client::tls_refusal(&error) {
            return Error::Command(message);
        }
        Error::Command(format!(
            "the import failed: {}; if the upload broke off early, the server refused \
             the request (check the token's role, --format and the file's first line) or \
             its limits (--import-max-bytes, --import-timeout-seconds): its log says which",
            http_client::describe(&error.without_url())
        ))
    })?;
    let status = response.status();
    if status.is_redirection() {
        return Err(Error::Command(format!(
            "the server answered {status}, a redirect to {}, not followed because the token \
             would go along: put the final URL in --url",
            crate::shipper::location(&response)
        )));
    }
    let text = response
        .text()
        .await
        .map_err(|error| Error::Command(format!("the answer could not be read: {error}")))?;
    if !status.is_success() {
        return Err(Error::Command(format!(
            "the server answered {status}: {}",
            problem_detail(&text)
        )));
    }
    serde_json::from_str(&text)
        .map_err(|error| Error::Command(format!("the answer is not an import report: {error}")))
}

fn lock(progress: &Mutex<ByteProgress>) -> std::sync::MutexGuard<'_, ByteProgress> {
    progress
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `detail` of a problem+json answer, or the text itself.
fn problem_detail(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(500).collect())
}

fn print_summary(file: &Path, summary: &ImportSummary, elapsed: Duration) {
    println!(
        "{}: {} created, {} extended, {} unchanged, {} rejected in {:.2} s",
        file.display(),
        summary.created,
        summary.extended,
        summary.unchanged,
        summary.rejected_total,
        elapsed.as_secs_f64()
    );
    for rejected in &summary.rejected {
        eprintln!("line {}: {}", rejected.line, rejected.error);
    }
    let unlisted = summary.rejected_total - summary.rejected.len() as u64;
    if unlisted > 0 {
        eprintln!("… and {unlisted} more rejected lines");
    }
}

/// Redrawing more often than this only costs time and flickers.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// A progress line on stderr, by bytes sent; drawn only on a terminal,
/// where `\r` rewrites it in place.
struct ByteProgress {
    enabled: bool,
    started: Instant,
    last_drawn: Option<Instant>,
    total: u64,
    sent: u64,
}

impl ByteProgress {
    fn new(total: u64) -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_drawn: None,
            total,
            sent: 0,
        }
    }

    fn sent(&mut self, bytes: u64) {
        self.sent += bytes;
        let recent = self
            .last_drawn
            .is_some_and(|drawn| drawn.elapsed() < REDRAW_EVERY);
        if !self.enabled || recent {
            return;
        }
        self.last_drawn = Some(Instant::now());
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{}\x1b[K", self.line());
        let _ = stderr.flush();
    }

    /// Clears the line, so the summary starts clean.
    fn finish(&mut self) {
        if self.last_drawn.take().is_some() {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[K");
            let _ = stderr.flush();
        }
    }

    fn line(&self) -> String {
        const WIDTH: u64 = 30;
        let done = (self.sent.min(self.total) * WIDTH)
            .checked_div(self.total)
            .unwrap_or(WIDTH);
        let percent = (self.sent.min(self.total) * 100)
            .checked_div(self.total)
            .unwrap_or(100);
        let megabytes = |bytes: u64| bytes as f64 / 1e6;
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "importing [{}{}] {percent:>3}%  {:.1} of {:.1} MB  {:.1} MB/s",
            "#".repeat(done as usize),
            ".".repeat((WIDTH - done) as usize),
            megabytes(self.sent),
            megabytes(self.total),
            megabytes(self.sent) / seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_extension() {
        assert_eq!(FileFormat::of_path(Path::new("list.CSV")), FileFormat::Csv);
        assert_eq!(
            FileFormat::of_path(Path::new("list.ndjson")),
            FileFormat::Ndjson
        );
        assert_eq!(FileFormat::of_path(Path::new("list")), FileFormat::Ndjson);
    }

    #[test]
    fn the_progress_line_shows_the_share_sent() {
        let mut progress = ByteProgress::new(4_000_000);
        progress.enabled = false;
        progress.sent(1_000_000);

        let line = progress.line();

        assert!(
            line.starts_with("importing [#######.......................]  25%  1.0 of 4.0 MB"),
            "{line}"
        );
    }
}
