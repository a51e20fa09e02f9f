//! The blocklist's change log: a number for every change, in commit order.
//!
//! Feeds and replicas need to ask "what changed since I last looked?" and
//! get every change exactly once. A plain auto-increment id cannot answer
//! that on PostgreSQL: numbers are handed out when rows are inserted, not
//! when transactions commit, so a reader can see number 8 before a slower
//! transaction commits number 7, and then skip 7 for ever. Here every
//! changing transaction takes its number by updating the single row of
//! `blocklist_sequence`; that row stays locked until the transaction ends,
//! so numbers are taken in commit order and a reader that has seen N has
//! seen everything up to N. On SQLite there is only one writer anyway.
//!
//! Store functions call [`next_seq`] before they touch any block row, so
//! that every writer takes the sequence lock first and then row locks:
//! one order for all, hence no deadlock between them.

use sqlx::{Any, Executor, Row};

use crate::error::Result;
use crate::storage::Tx;
use crate::time::Timestamp;

/// What a change did, as the log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Extended,
    Deactivated,
    Expired,
    /// Many blocks at once, from one batch of a bulk import.
    Imported,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "block.created",
            ChangeKind::Extended => "block.extended",
            ChangeKind::Deactivated => "block.deactivated",
            ChangeKind::Expired => "block.expired",
            ChangeKind::Imported => "blocks.imported",
        }
    }
}

/// Takes the next change number, holding the sequence until `tx` ends.
/// Called before any block row is touched (see the module comment).
pub async fn next_seq(tx: &mut Tx) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE blocklist_sequence SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq",
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get("last_seq")?)
}

/// One entry of the change log.
pub struct LoggedChange<'a> {
    pub seq: i64,
    pub at: Timestamp,
    pub actor: &'a str,
    pub kind: ChangeKind,
    /// The block changed, or `None` for a batch.
    pub block_id: Option<i64>,
    /// How many blocks the change touched.
    pub blocks: i64,
}

/// Writes one entry of the change log, in the change's own transaction.
pub async fn log_change(tx: &mut Tx, change: LoggedChange<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO blocklist_changes (seq, changed_at, actor, kind, block_id, blocks) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(change.seq)
    .bind(change.at.millis())
    .bind(change.actor)
    .bind(change.kind.as_str())
    .bind(change.block_id)
    .bind(change.blocks)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The number of the last committed change: everything up to it is
/// visible to whoever reads after this.
pub async fn last_seq<'e, E: Executor<'e, Database = Any>>(executor: E) -> Result<i64> {
    let row = sqlx::query("SELECT last_seq FROM blocklist_sequence WHERE id = 1")
        .fetch_one(executor)
        .await?;
    Ok(row.try_get("last_seq")?)
}
