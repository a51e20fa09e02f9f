//! Writing a feed while it is sent: a million decisions go out in chunks
//! as the rows arrive, never as one document in memory.

use axum::body::{Body, Bytes};
use futures_util::TryStreamExt;
use sqlx::any::AnyArguments;
use sqlx::{Any, AnyPool};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::decision::{Decision, DecisionFilter, DecisionRow};
use crate::blocklist::Network;
use crate::error::{Error, Result};

/// How much is gathered before a chunk goes out.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks written ahead of the client: bounds the memory a slow client costs.
const CHUNKS_AHEAD: usize = 4;

type Chunk = std::result::Result<Bytes, std::io::Error>;

/// Where a feed is written: to the client chunk by chunk, or only counted
/// (a HEAD that answers the length of the body it would have sent).
pub struct FeedWriter {
    buffer: Vec<u8>,
    sender: Option<mpsc::Sender<Chunk>>,
    length: u64,
}

impl FeedWriter {
    /// A writer whose chunks become the returned response body.
    pub fn to_client() -> (Self, Body) {
        let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
        let writer = FeedWriter {
            buffer: Vec::with_capacity(CHUNK_BYTES + 1024),
            sender: Some(sender),
            length: 0,
        };
        (writer, Body::from_stream(ReceiverStream::new(receiver)))
    }

    /// A writer that only counts.
    pub fn counting() -> Self {
        FeedWriter {
            buffer: Vec::new(),
            sender: None,
            length: 0,
        }
    }

    /// The number of bytes written so far.
    pub fn length(&self) -> u64 {
        self.length + self.buffer.len() as u64
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    fn push_decision(&mut self, decision: &Decision) -> Result<()> {
        serde_json::to_writer(&mut self.buffer, decision)
            .map_err(|error| Error::Internal(format!("a decision did not serialise: {error}")))
    }

    /// Sends the gathered bytes once there are enough of them. Fails when
    /// the client has gone, so the writing stops.
    pub async fn send_when_full(&mut self) -> Result<()> {
        if self.buffer.len() < CHUNK_BYTES {
            return Ok(());
        }
        self.send().await
    }

    /// Sends whatever is gathered.
    pub async fn send(&mut self) -> Result<()> {
        self.length += self.buffer.len() as u64;
        let Some(sender) = &self.sender else {
            self.buffer.clear();
            return Ok(());
        };
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES + 1024),
        ));
        sender
            .send(Ok(chunk))
            .await
            .map_err(|_| Error::Unavailable("the client went away".to_string()))
    }

    /// Ends the body with an error, so the client sees a broken transfer
    /// rather than a short document that parses.
    pub async fn abort(&mut self) {
        if let Some(sender) = self.sender.take() {
            let broken = std::io::Error::other("the feed could not be completed");
            let _ = sender.send(Err(broken)).await;
        }
    }
}

/// A JSON array of decisions that is the four bytes `null` when empty, as
/// CrowdSec writes it.
#[derive(Default)]
pub struct DecisionList {
    written: u64,
}

impl DecisionList {
    pub fn add(&mut self, out: &mut FeedWriter, decision: &Decision) -> Result<()> {
        out.push(if self.written == 0 { b"[" } else { b"," });
        out.push_decision(decision)?;
        self.written += 1;
        Ok(())
    }

    pub fn end(self, out: &mut FeedWriter) {
        out.push(if self.written == 0 { b"null" } else { b"]" });
    }
}

/// What a query's rows go through before they become decisions.
pub struct Selection<'a> {
    pub filter: &'a DecisionFilter,
    pub allowlist: &'a [Network],
}

impl Selection<'_> {
    fn admits(&self, row: &DecisionRow) -> bool {
        self.filter.admits(row)
            && (self.allowlist.is_empty()
                || row.network().is_some_and(|network| {
                    !self
                        .allowlist
                        .iter()
                        .any(|allowed| allowed.overlaps(&network))
                }))
    }
}

/// Runs a query of decision rows and adds each admitted one to `list`,
/// row by row, its decision made by `decide`.
pub async fn write_rows<'q>(
    pool: &AnyPool,
    query: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    selection: &Selection<'_>,
    list: &mut DecisionList,
    out: &mut FeedWriter,
    decide: impl Fn(DecisionRow) -> Decision,
) -> Result<()> {
    let mut rows = query.fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let Some(row) = DecisionRow::from_row(&row)? else {
            continue;
        };
        if !selection.admits(&row) {
            continue;
        }
        list.add(out, &decide(row))?;
        out.send_when_full().await?;
    }
    Ok(())
}

/// Decisions fetched per statement by [`write_active_pages`].
const PAGE_ROWS: i64 = 4096;

/// One block as a page row: id, entity type, value, reason, source, expiry.
type PageRow = (i64, String, String, String, String, Option<i64>);

/// Adds every active block's decision to `list`, a page of blocks per
/// statement: the database writes each page as one JSON text, which is
/// read in one piece. Row by row, sqlx hands over each row separately,
/// which costs several times what SQLite needs to read it; a startup
/// stream of a million decisions is where that shows.
///
/// Only blocks created at or before change `created_upto` are sent: a
/// startup pull records that change number as its position, and a block
/// created after it, while the pages are read, is sent by the next pull.
/// Sent now, it would be one the bouncer holds but that the next pull does
/// not count as held, so its deactivation would never reach the bouncer.
pub async fn write_active_pages(
    db: &crate::storage::Db,
    now: crate::time::Timestamp,
    created_upto: i64,
    selection: &Selection<'_>,
    list: &mut DecisionList,
    out: &mut FeedWriter,
) -> Result<()> {
    let sql = crate::storage::rows_as_json(db.backend(), ACTIVE_PAGE_COLUMNS, ACTIVE_PAGE);
    let mut after = 0_i64;
    loop {
        let row = sqlx::query(&sql)
            .bind(now.millis())
            .bind(after)
            .bind(PAGE_ROWS)
            .bind(created_upto)
            .fetch_one(db.reader())
            .await?;
        let mut blocks: Vec<PageRow> = crate::storage::parse_json_rows(&row)?;
        blocks.sort_unstable_by_key(|block| block.0);
        let Some(last) = blocks.last().map(|block| block.0) else {
            return Ok(());
        };

        for (id, entity_type, value, reason, source, expires_at) in blocks {
            let Some(block) =
                DecisionRow::from_parts(id, &entity_type, value, reason, source, expires_at)
            else {
                continue;
            };
            if selection.admits(&block) {
                list.add(out, &block.into_decision(now))?;
            }
        }
        out.send_when_full().await?;
        after = last;
    }
}

const ACTIVE_PAGE_COLUMNS: &str = "id, entity_type, value, reason, source, expires_at";

/// The active blocks with an id after `$2`, at most `$3` of them, at `$1`,
/// created at or before change `$4`.
const ACTIVE_PAGE: &str = "SELECT id, entity_type, value, reason, source, expires_at FROM blocks \
    WHERE deactivated_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
      AND id > $2 AND created_seq <= $4 \
    ORDER BY id LIMIT $3";
