//! `valhalla ship`: follows a honeypot's log file and sends its records to
//! Valhalla's bulk endpoint.
//!
//! Delivery is at least once: the position in the file is recorded only
//! after the server acknowledged a batch, so a crash resends the lines in
//! flight. The server fingerprints every record and stores a resent one
//! only once, which makes the whole exactly once.
//!
//! A thread reads complete lines (`follow`) into a bounded channel; they
//! are grouped into batches (`batch`), posted with retries (`send`), and
//! each acknowledged batch's end is written to the state file (`state`).
//! `progress` draws the `--once` progress line and summary.

mod batch;
pub mod client;
mod follow;
mod progress;
mod send;
mod state;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use reqwest::StatusCode;
use tokio::sync::watch;

use self::batch::{Batch, BatchLimits, Collected, Collector, Then, MAX_BATCH_BYTES};
use self::follow::{Follower, Mode};
use self::progress::{summary, Progress, Totals};
pub use self::send::{location, ServerUrl};
use self::send::{send_with_retries, BulkClient, Delivery, Report};
use self::state::StateFile;
use crate::auth::Secret;
use crate::honeypots::formats::Format;

/// How often a quiet log file is looked at again.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// In `--once` mode a batch is tried this often before the run fails (about
/// a minute of backoff); following never gives up.
const ONCE_MAX_ATTEMPTS: u32 = 8;

/// At most this many line numbers go into one warning.
const LISTED_LINES: usize = 20;

/// Settings of `valhalla ship`.
#[derive(Debug, Clone, Args)]
pub struct ShipSettings {
    /// Valhalla's base URL, e.g. `https://valhalla.example:8443` or `http://127.0.0.1:8080`.
    #[arg(long, env = "VALHALLA_SHIP_URL", value_parser = ServerUrl::parse)]
    pub url: ServerUrl,

    /// A PEM file of certificate authorities to trust for https, beside Mozilla's built-in roots.
    #[arg(long, env = "VALHALLA_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// The honeypot's key. Prefer the variable: a flag shows in the process list.
    #[arg(long, env = "VALHALLA_SHIP_KEY", hide_env_values = true, value_parser = parse_key)]
    pub key: Secret,

    /// The log's record format.
    #[arg(long, env = "VALHALLA_SHIP_FORMAT", value_parser = format_parser())]
    pub format: Format,

    /// Where the acknowledged position is kept [default: PATH.valhalla-ship.state].
    #[arg(long, env = "VALHALLA_SHIP_STATE_FILE")]
    pub state_file: Option<PathBuf>,

    /// Ship the file up to its current end, print a summary and exit.
    #[arg(long, env = "VALHALLA_SHIP_ONCE",
        value_parser = clap::builder::BoolishValueParser::new())]
    pub once: bool,

    /// Most lines in one request.
    #[arg(long, env = "VALHALLA_SHIP_BATCH_LINES", default_value_t = 5000,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_lines: u32,

    /// Longest a line waits for others before its batch is sent, in milliseconds.
    #[arg(long, env = "VALHALLA_SHIP_FLUSH_MILLIS", default_value_t = 500)]
    pub flush_millis: u64,

    /// The log file to ship; followed across rotation and truncation.
    #[arg(env = "VALHALLA_SHIP_PATH")]
    pub path: PathBuf,
}

fn parse_key(text: &str) -> Result<Secret, String> {
    if text.trim().is_empty() {
        return Err("the key is empty".to_string());
    }
    Ok(Secret::new(text))
}

/// Lists the formats in `--help` and in the error for a wrong one.
fn format_parser() -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["cowrie", "opencanary", "valhalla"])
        .map(|text| Format::parse(&text).expect("every listed format parses"))
}

/// Why shipping stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{0}")]
    Settings(String),
    #[error(
        "the server refused the honeypot key (401): check --key or VALHALLA_SHIP_KEY, \
         and that the honeypot is active"
    )]
    KeyRefused,
    #[error("{0}")]
    Tls(String),
    #[error("the server refused a batch with {status}: {detail}")]
    Refused { status: StatusCode, detail: String },
    #[error("gave up after {attempts} attempts: {reason}")]
    GaveUp { attempts: u32, reason: String },
    #[error("reading {}: {source}", path.display())]
    Log { path: PathBuf, source: io::Error },
    #[error("writing the state file {}: {source}", path.display())]
    State { path: PathBuf, source: io::Error },
}

/// Set once a stop (SIGTERM, Ctrl-C) is asked for.
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Requested when `signal` resolves.
    fn on(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let (sender, receiver) = watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            tracing::info!("stop requested: finishing the batch in flight");
            let _ = sender.send(true);
        });
        Self(receiver)
    }

    /// Never requested.
    #[cfg(test)]
    fn never() -> Self {
        Self(watch::channel(false).1)
    }

    fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is requested.
    async fn requested(&mut self) {
        if self.0.wait_for(|requested| *requested).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Ships `settings.path` until its end (`--once`) or until `shutdown`.
pub async fn run(
    settings: ShipSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ShipError> {
    let mut shipment = Shipment::start(settings, Stop::on(shutdown))?;
    shipment.client.preflight().await?;
    let result = shipment.ship().await;
    shipment.progress.finish();
    result?;
    shipment.report_end();
    Ok(())
}

/// One run of the shipper.
struct Shipment {
    path: PathBuf,
    once: bool,
    client: BulkClient,
    collector: Collector,
    state: StateFile,
    stop: Stop,
    started: Instant,
    totals: Totals,
    progress: Progress,
}

impl Shipment {
    fn start(settings: ShipSettings, stop: Stop) -> Result<Self, ShipError> {
        let client = BulkClient::new(
            &settings.url,
            settings.format,
            &settings.key,
            settings.ca_cert.as_deref(),
        )?;
        let state = match settings.state_file {
            Some(path) => StateFile::new(path),
            None => StateFile::beside(&settings.path),
        };
        let resume = state.load();
        let (mode, end_bytes) = if settings.once {
            let metadata = std::fs::metadata(&settings.path).map_err(|source| ShipError::Log {
                path: settings.path.clone(),
                source,
            })?;
            (Mode::Once, metadata.len())
        } else {
            (Mode::Follow, 0)
        };
        let limits = BatchLimits {
            max_lines: settings.batch_lines as usize,
            max_bytes: MAX_BATCH_BYTES,
            flush_after: Duration::from_millis(settings.flush_millis),
        };

        if settings.url.is_clear_text_off_host() {
            tracing::warn!(
                server = %settings.url,
                "plain http to another host: the honeypot key and the telemetry cross the \
                 network unencrypted; use https"
            );
        }
        tracing::info!(
            file = %settings.path.display(),
            server = %settings.url,
            format = settings.format.as_str(),
            state_file = %state.path().display(),
            resume_offset = resume.map(|position| position.offset),
            "shipping log"
        );
        let feed = follow::spawn(Follower::new(&settings.path, mode, resume), POLL_EVERY);
        Ok(Self {
            path: settings.path,
            once: settings.once,
            client,
            collector: Collector::new(feed, limits),
            state,
            stop,
            started: Instant::now(),
            totals: Totals::default(),
            progress: Progress::new(settings.once, end_bytes),
        })
    }

    /// Batches and delivers until the end of the file (`--once`) or a stop.
    async fn ship(&mut self) -> Result<(), ShipError> {
        loop {
            let collected = self.collector.next_batch(&mut self.stop).await;
            let collected = collected.map_err(|source| self.log_error(source))?;
            self.count_read(&collected);
            let delivered = self.deliver(collected.batch).await?;
            match collected.then {
                Then::Continue if delivered => {}
                Then::Finish { unfinished_bytes } if delivered && unfinished_bytes > 0 => {
                    tracing::warn!(
                        file = %self.path.display(),
                        unfinished_bytes,
                        "the file ends in a line without a newline; a later run ships it once \
                         it is complete"
                    );
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
    }

    fn count_read(&mut self, collected: &Collected) {
        self.totals.lines_read += collected.lines_read;
        if !collected.refused.is_empty() {
            self.totals.rejected += collected.refused.len() as u64;
            self.warn_about_lines(
                collected.refused.iter().copied(),
                "log lines that are JSON arrays are not records; they are not sent",
            );
        }
    }

    /// Sends a batch, in halves if the server finds it too large. False
    /// when a stop came first; what was acknowledged until then is saved.
    async fn deliver(&mut self, batch: Batch) -> Result<bool, ShipError> {
        let max_attempts = self.once.then_some(ONCE_MAX_ATTEMPTS);
        let mut parts = vec![batch];
        while let Some(part) = parts.pop() {
            if part.is_empty() {
                self.acknowledge(&part, Report::default(), Duration::ZERO)?;
                continue;
            }
            let sent_at = Instant::now();
            match send_with_retries(&self.client, part.body(), max_attempts, &mut self.stop).await?
            {
                Delivery::Stored(report) => self.acknowledge(&part, report, sent_at.elapsed())?,
                Delivery::TooLarge if part.len() > 1 => {
                    tracing::info!(
                        lines = part.len(),
                        "batch too large for the server; halving it"
                    );
                    let (first, second) = part.split();
                    parts.push(second);
                    parts.push(first);
                }
                Delivery::TooLarge => {
                    self.totals.rejected += 1;
                    self.warn_about_lines(
                        part.file_line(1).into_iter(),
                        "log line larger than the server accepts; it is skipped",
                    );
                    self.acknowledge(&part, Report::default(), sent_at.elapsed())?;
                }
                Delivery::Stopped => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Counts what the server made of a batch and records its end.
    fn acknowledge(
        &mut self,
        batch: &Batch,
        report: Report,
        took: Duration,
    ) -> Result<(), ShipError> {
        self.totals.accepted += report.accepted;
        self.totals.skipped += report.skipped;
        self.totals.rejected += report.rejected.len() as u64;
        self.totals.duplicates += report.duplicates;
        if !report.rejected.is_empty() {
            let lines = report
                .rejected
                .iter()
                .filter_map(|rejected| batch.file_line(rejected.line));
            self.warn_about_lines(
                lines,
                "the server rejected log lines; they are not sent again",
            );
        }
        if !batch.is_empty() {
            self.log_batch_sent(batch, &report, took);
        }

        if let Some(end) = batch.end() {
            self.state.save(end).map_err(|source| ShipError::State {
                path: self.state.path().to_path_buf(),
                source,
            })?;
            self.progress.update(end.offset, &self.totals);
        }
        Ok(())
    }

    /// A `--once` import shows its progress instead of a line per batch.
    fn log_batch_sent(&self, batch: &Batch, report: &Report, took: Duration) {
        let duration_ms = took.as_millis() as u64;
        let (lines, accepted, duplicates) = (batch.len(), report.accepted, report.duplicates);
        if self.once {
            tracing::debug!(lines, accepted, duplicates, duration_ms, "batch sent");
        } else {
            tracing::info!(lines, accepted, duplicates, duration_ms, "batch sent");
        }
    }

    /// Warns with line numbers only: a line's content may hold passwords.
    fn warn_about_lines(&self, lines: impl Iterator<Item = u64>, message: &str) {
        let numbers: Vec<u64> = lines.collect();
        let mut listed: Vec<String> = (numbers.iter().take(LISTED_LINES))
            .map(u64::to_string)
            .collect();
        if numbers.len() > LISTED_LINES {
            listed.push("…".to_string());
        }
        tracing::warn!(
            file = %self.path.display(),
            count = numbers.len(),
            lines = %listed.join(", "),
            "{message}"
        );
    }

    fn log_error(&self, source: io::Error) -> ShipError {
        ShipError::Log {
            path: self.path.clone(),
            source,
        }
    }

    fn report_end(&self) {
        let elapsed = self.started.elapsed();
        if self.once {
            eprintln!(
                "{}: {}",
                self.path.display(),
                summary(&self.totals, elapsed)
            );
        } else {
            tracing::info!(
                lines_read = self.totals.lines_read,
                accepted = self.totals.accepted,
                skipped = self.totals.skipped,
                rejected = self.totals.rejected,
                duplicates = self.totals.duplicates,
                "shipper stopped"
            );
        }
    }
}
