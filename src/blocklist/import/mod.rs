//! `POST /security/policy/blocks/import`: blocks by the million, for
//! operators moving from another blocklist.
//!
//! The body is read as a stream and written a batch at a time, so the
//! server holds one batch, never the file. Each batch commits on its own:
//! an import cut short (the client gone, the size limit passed, the
//! database away) keeps the batches before it, and sending the file again
//! is safe, since every line that is already blocked at least as long
//! changes nothing.

mod batch;
pub mod client;
mod lines;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use self::batch::{import_batch, Importer};
use self::lines::{ImportFormat, ImportLine, LineParser, Parsed, Record, RecordSplitter};
use crate::actions::Source;
use crate::auth::{Capability, Principal};
use crate::error::{Error, Result};
use crate::http::{media_type, RejectedLine};
use crate::server::AppState;
use crate::storage::Backend;
use crate::time::Timestamp;

/// Lines a transaction takes, by backend. On SQLite each commit writes
/// every index page the batch touched, and new blocks land on random pages
/// of the index on `(entity_type, value)`, so the pages written per line
/// fall as batches grow: at a million lines (BENCHMARKS.md) batches of
/// 100,000 took 10-13 s against 13-16 s for 20,000, for about 200 MiB more
/// peak memory and the writer held about a second a batch. PostgreSQL
/// gained nothing from larger batches, and there a batch holds the change
/// sequence's row, which every replica's block writes wait for.
fn batch_lines(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 100_000,
        Backend::Postgres => 20_000,
    }
}

/// How much of a chunk is split before the batch is looked at again.
const SLICE_BYTES: usize = 64 * 1024;

/// The rejected lines an answer lists; `rejected_total` counts them all.
/// A file of a million bad lines would otherwise make an answer bigger
/// than the file.
pub const MAX_REPORTED_REJECTIONS: usize = 1_000;

/// The import route, with its own body limit.
pub fn router(max_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import_blocks))
        .layer(Extension(ImportLimit(max_bytes)))
}

/// The largest body the import takes, in bytes. Checked while streaming:
/// axum's `DefaultBodyLimit` only binds extractors that buffer.
#[derive(Debug, Clone, Copy)]
struct ImportLimit(usize);

/// What an import did. Every non-blank line (but a CSV header) is counted
/// exactly once: created + extended + unchanged + rejected_total.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ImportReport {
    /// Lines that created a block.
    pub created: usize,
    /// Lines that moved an active block's expiry later (or made it
    /// permanent), including a later line of the same file.
    pub extended: usize,
    /// Lines whose entity was already blocked at least as long.
    pub unchanged: usize,
    /// The first rejected lines, by line number (at most 1,000).
    pub rejected: Vec<RejectedLine>,
    /// Every rejected line, listed or not.
    pub rejected_total: usize,
}

impl ImportReport {
    fn reject(&mut self, mut lines: Vec<RejectedLine>) {
        lines.sort_by_key(|rejected| rejected.line);
        self.rejected_total += lines.len();
        let room = MAX_REPORTED_REJECTIONS.saturating_sub(self.rejected.len());
        self.rejected.extend(lines.into_iter().take(room));
    }
}

/// Imports blocks from NDJSON (`application/x-ndjson`, one object a line
/// with the fields of `POST /security/policy/blocks`) or CSV (`text/csv`,
/// header `entity_type,value,reason,duration_seconds`, RFC 4180 quoting,
/// an empty duration is permanent). Each line follows the rules of a
/// single block; a bad line is reported with its number and never stops
/// the rest.
#[utoipa::path(post, path = "/security/policy/blocks/import", tag = "blocklist",
    request_body(description = "One block a line (NDJSON), or a CSV file with a header",
        content(
            (String = "application/x-ndjson",
                example = json!("{\"entity_type\":\"ip\",\"value\":\"203.0.113.7\",\
\"reason\":\"ssh brute force\",\"duration_seconds\":3600}\n")),
            (String = "text/csv",
                example = json!("entity_type,value,reason,duration_seconds\n\
cidr,198.51.100.0/24,scanner,\n")))),
    responses(
        (status = 200, body = ImportReport, description = "every line counted or rejected"),
        (status = 400, description = "the body could not be read"),
        (status = 413, description = "the body exceeds the import limit; batches before it stay"),
        (status = 415, description = "the body is neither `application/x-ndjson` nor `text/csv`"),
        (status = 422, description = "a CSV header that names unknown or missing columns")),
    security(("bearer" = [])))]
async fn import_blocks(
    State(state): State<AppState>,
    principal: Principal,
    Extension(limit): Extension<ImportLimit>,
    request: Request,
) -> Result<Json<ImportReport>> {
    principal.require(Capability::ImportBlocks)?;
    let format = import_format(request.headers())?;
    refuse_declared_size(request.headers(), limit)?;

    let importer = Importer {
        actor: principal.name.clone(),
        source: principal.role.action_source().unwrap_or(Source::Human),
    };
    let mut import = Import::start(&state, importer, format);
    let mut body = request.into_body().into_data_stream();
    let mut received = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|_| Error::BadRequest("the request body could not be read".to_string()))?;
        received += chunk.len();
        if received > limit.0 {
            return Err(Error::PayloadTooLarge);
        }
        import.take(&chunk).await?;
    }
    let report = import.finish().await?;

    tracing::info!(
        created = report.created,
        extended = report.extended,
        unchanged = report.unchanged,
        rejected = report.rejected_total,
        body_bytes = received,
        "blocks imported"
    );
    Ok(Json(report))
}

fn import_format(headers: &HeaderMap) -> Result<ImportFormat> {
    match media_type(headers).as_deref() {
        Some("application/x-ndjson" | "application/jsonl") => Ok(ImportFormat::Ndjson),
        Some("text/csv") => Ok(ImportFormat::Csv),
        _ => Err(Error::UnsupportedMediaType(
            "send NDJSON as `application/x-ndjson` or CSV as `text/csv`".to_string(),
        )),
    }
}

/// A body that announces its size past the limit is refused before a line
/// is imported; one without a length is counted as it arrives.
fn refuse_declared_size(headers: &HeaderMap, limit: ImportLimit) -> Result<()> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit.0 as u64 => Err(Error::PayloadTooLarge),
        _ => Ok(()),
    }
}

/// An import in progress: the unfinished record and the batch being
/// parsed here, while a task of its own writes the batch before it, so
/// that parsing and the database work side by side.
struct Import<'a> {
    state: &'a AppState,
    splitter: RecordSplitter,
    batch: Batch,
    /// Full batches, to the writer; one may wait while another is written.
    full: mpsc::Sender<ParsedBatch>,
    writer: tokio::task::JoinHandle<Result<ImportReport>>,
    /// Lines a batch takes on this database.
    batch_lines: usize,
}

/// The lines parsed since the last batch was handed over.
struct Batch {
    parser: LineParser,
    lines: Vec<ImportLine>,
    /// Lines that did not parse.
    rejected: Vec<RejectedLine>,
    /// A CSV header that cannot be read ends the import.
    failure: Option<Error>,
}

impl Batch {
    fn take(&mut self, record: Record<'_>, now: Timestamp) {
        match self.parser.parse(record, now) {
            Ok(Parsed::Block(line)) => self.lines.push(line),
            Ok(Parsed::Rejected(rejected)) => self.rejected.push(rejected),
            Ok(Parsed::Header) => {}
            Err(error) => {
                self.failure.get_or_insert(error);
            }
        }
    }
}

/// A batch as the writer receives it: its lines, and those that did not parse.
type ParsedBatch = (Vec<ImportLine>, Vec<RejectedLine>);

impl<'a> Import<'a> {
    fn start(state: &'a AppState, importer: Importer, format: ImportFormat) -> Self {
        let (full, batches) = mpsc::channel(1);
        let writer = tokio::spawn(write_batches(state.clone(), importer, batches));
        let batch_lines = batch_lines(state.db.backend());
        Self {
            state,
            splitter: RecordSplitter::new(format),
            batch: Batch {
                parser: LineParser::new(format),
                lines: Vec::with_capacity(batch_lines),
                rejected: Vec::new(),
                failure: None,
            },
            full,
            writer,
            batch_lines,
        }
    }

    /// Parses the records a chunk completes, handing each batch over once
    /// full. The chunk is taken a slice at a time, so that a batch never
    /// grows far past its size however large the chunks the network
    /// delivers.
    async fn take(&mut self, chunk: &[u8]) -> Result<()> {
        for slice in chunk.chunks(SLICE_BYTES) {
            let now = self.state.clock.now();
            let batch = &mut self.batch;
            self.splitter
                .push(slice, &mut |record| batch.take(record, now));
            if let Some(error) = batch.failure.take() {
                return Err(error);
            }

            if batch.lines.len() >= self.batch_lines {
                self.hand_over().await?;
            }
        }
        Ok(())
    }

    /// Hands over what is left and waits for the writer's totals.
    async fn finish(mut self) -> Result<ImportReport> {
        let now = self.state.clock.now();
        let batch = &mut self.batch;
        self.splitter.finish(&mut |record| batch.take(record, now));
        if let Some(error) = batch.failure.take() {
            return Err(error);
        }

        self.hand_over().await?;
        drop(self.full);
        writer_result(self.writer.await)
    }

    /// Sends the batch to the writer; waits while the one before it is
    /// still being written. A writer that stopped has failed: its error
    /// is the answer.
    async fn hand_over(&mut self) -> Result<()> {
        let fresh = Vec::with_capacity(self.batch_lines);
        let lines = std::mem::replace(&mut self.batch.lines, fresh);
        let rejected = std::mem::take(&mut self.batch.rejected);
        if self.full.send((lines, rejected)).await.is_ok() {
            return Ok(());
        }
        let stopped = (&mut self.writer).await;
        writer_result(stopped).and(Err(Error::Internal(
            "the import writer stopped early".to_string(),
        )))
    }
}

fn writer_result(
    joined: std::result::Result<Result<ImportReport>, tokio::task::JoinError>,
) -> Result<ImportReport> {
    joined.map_err(|error| Error::Internal(format!("the import writer failed: {error}")))?
}

/// Writes batches in order until the sender is done, each in its own
/// transaction, showing each batch's blocks to checks once committed.
async fn write_batches(
    state: AppState,
    importer: Importer,
    mut batches: mpsc::Receiver<ParsedBatch>,
) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    while let Some((lines, mut rejected)) = batches.recv().await {
        if !lines.is_empty() {
            let now = state.clock.now();
            let outcome = import_batch(&state.db, &state.blocklist, now, &importer, lines).await?;
            report.created += outcome.created;
            report.extended += outcome.extended;
            report.unchanged += outcome.unchanged;
            rejected.extend(outcome.rejected);
        }
        report.reject(rejected);
    }
    Ok(report)
}
