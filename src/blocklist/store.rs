//! Creating, extending, deactivating and finding blocks.

use sqlx::{Any, Executor, Row};

use super::changes::{self, ChangeKind, LoggedChange};
use super::entity::{range_key, Entity, Network};
use super::model::{Block, BlockOutcome, NewBlock, BLOCK_COLUMNS};
use super::shared::BlockChanges;
use crate::audit::{self, Change};
use crate::error::{Error, Result};
use crate::policy::load_policy;
use crate::storage::Tx;
use crate::time::Timestamp;

/// The conflict target of a new block: the unique index `blocks_entity_live`
/// (migration 0008), whose last key is 0 for a live block and NULL for an
/// ended one, so only two live blocks of one entity collide.
pub const LIVE_ENTITY: &str = "(entity_type, value, (CASE WHEN deactivated_at IS NULL THEN 0 END))";

/// Turns `duration_seconds` or `expires_at` (at most one) into an expiry.
pub fn resolve_expiry(
    now: Timestamp,
    duration_seconds: Option<i64>,
    expires_at: Option<Timestamp>,
) -> Result<Option<Timestamp>> {
    match (duration_seconds, expires_at) {
        (Some(_), Some(_)) => Err(Error::invalid_field(
            "expires_at",
            "give either duration_seconds or expires_at, not both",
        )),
        (Some(seconds), None) if seconds <= 0 => Err(Error::invalid_field(
            "duration_seconds",
            "must be a positive number of seconds",
        )),
        (Some(seconds), None) => now
            .plus_seconds(seconds)
            .map(Some)
            .ok_or_else(|| Error::invalid_field("duration_seconds", "ends after year 9999")),
        (None, Some(at)) if at <= now => {
            Err(Error::invalid_field("expires_at", "is not in the future"))
        }
        (None, at) => Ok(at),
    }
}

/// Blocks an entity, or extends its active block to the later expiry
/// (permanent wins). Refused with 409 when the entity overlaps the
/// allowlist, whoever asks.
pub async fn block_entity(tx: &mut Tx, now: Timestamp, new: NewBlock) -> Result<BlockOutcome> {
    // The sequence before the allowlist: a growing allowlist takes the
    // sequence too (see `deactivate_allowlisted`), so either this reads
    // the grown allowlist, or that change sees this block and ends it.
    let seq = changes::next_seq(tx).await?;

    refuse_allowlisted(tx, &new.entity).await?;

    if let Some(existing) = find_live_block(&mut **tx, &new.entity, now).await? {
        if existing.is_active {
            return extend_block(tx, now, seq, existing, new.expires_at, &new.created_by).await;
        }
        retire_expired_block(tx, existing.id, existing.expires_at).await?;
    }

    match insert_block(tx, now, seq, &new).await? {
        Some(block) => Ok(BlockOutcome::Created(block)),
        None => {
            // Another transaction created it between our look and our insert.
            let existing = find_live_block(&mut **tx, &new.entity, now)
                .await?
                .ok_or_else(|| Error::Conflict("the block changed meanwhile; retry".to_string()))?;
            extend_block(tx, now, seq, existing, new.expires_at, &new.created_by).await
        }
    }
}

async fn refuse_allowlisted(tx: &mut Tx, entity: &Entity) -> Result<()> {
    let Some(network) = entity.network() else {
        return Ok(());
    };
    let policy = load_policy(&mut **tx).await?;
    match policy
        .settings
        .allowlist
        .iter()
        .find(|allowed| allowed.overlaps(&network))
    {
        Some(allowed) => Err(Error::Conflict(format!(
            "{} overlaps the allowlist entry {allowed}; allowlisted addresses are never blocked",
            entity.value()
        ))),
        None => Ok(()),
    }
}

/// The block of `entity` that has not been deactivated, expired or not.
pub async fn find_live_block<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    entity: &Entity,
    now: Timestamp,
) -> Result<Option<Block>> {
    let sql = format!(
        "SELECT {BLOCK_COLUMNS} FROM blocks \
         WHERE entity_type = $1 AND value = $2 AND deactivated_at IS NULL"
    );
    let row = sqlx::query(&sql)
        .bind(entity.entity_type().as_str())
        .bind(entity.value())
        .fetch_optional(executor)
        .await?;
    row.map(|row| Block::from_row(&row, now)).transpose()
}

/// `ON CONFLICT … DO NOTHING` against the one-live-block-per-entity index
/// makes a concurrent duplicate return no row instead of failing the
/// transaction.
async fn insert_block(
    tx: &mut Tx,
    now: Timestamp,
    seq: i64,
    new: &NewBlock,
) -> Result<Option<Block>> {
    let network = new.entity.network();
    let range = network.map(|network| network.range());
    let sql = format!(
        "INSERT INTO blocks (entity_type, value, family, range_start, range_end, reason, source, \
             created_by, action_request_id, created_at, expires_at, created_seq, changed_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
         ON CONFLICT {LIVE_ENTITY} DO NOTHING \
         RETURNING {BLOCK_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(new.entity.entity_type().as_str())
        .bind(new.entity.value())
        .bind(network.map(|network| network.family()))
        .bind(range.map(|(start, _)| range_key(start)))
        .bind(range.map(|(_, end)| range_key(end)))
        .bind(&new.reason)
        .bind(new.source.as_str())
        .bind(&new.created_by)
        .bind(new.action_request_id)
        .bind(now.millis())
        .bind(new.expires_at.map(Timestamp::millis))
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };

    let block = Block::from_row(&row, now)?;
    let logged = LoggedChange {
        seq,
        at: now,
        actor: &new.created_by,
        kind: ChangeKind::Created,
        block_id: Some(block.id),
        blocks: 1,
    };
    changes::log_change(tx, logged).await?;
    let change = Change {
        actor: &new.created_by,
        kind: "block.created",
        subject_type: "block",
        subject_id: Some(block.id.to_string()),
        old_value: None,
        new_value: Some(serde_json::to_value(&block).expect("block serialises")),
    };
    audit::record(tx, now, change).await?;
    tracing::info!(
        block.id = block.id,
        block.entity_type = block.entity_type.as_str(),
        "block created"
    );
    Ok(Some(block))
}

/// Moves an active block's expiry to the later of the two; permanent wins.
async fn extend_block(
    tx: &mut Tx,
    now: Timestamp,
    seq: i64,
    existing: Block,
    requested: Option<Timestamp>,
    actor: &str,
) -> Result<BlockOutcome> {
    let later = match (existing.expires_at, requested) {
        (None, _) | (_, None) => None,
        (Some(current), Some(requested)) => Some(current.max(requested)),
    };
    if later == existing.expires_at {
        return Ok(BlockOutcome::Existing(existing));
    }

    // Conditional, so the expiry only ever moves later: of two concurrent
    // extensions the longer one wins, whichever commits last.
    let sql = format!(
        "UPDATE blocks SET expires_at = $1, changed_seq = $3 \
         WHERE id = $2 AND expires_at IS NOT NULL AND ($1 IS NULL OR expires_at < $1) \
         RETURNING {BLOCK_COLUMNS}"
    );
    let updated = sqlx::query(&sql)
        .bind(later.map(Timestamp::millis))
        .bind(existing.id)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = updated else {
        // Another transaction moved it at least as far meanwhile.
        let current = find_block(&mut **tx, existing.id, now).await?;
        return Ok(BlockOutcome::Existing(current));
    };
    let extended = Block::from_row(&row, now)?;
    let logged = LoggedChange {
        seq,
        at: now,
        actor,
        kind: ChangeKind::Extended,
        block_id: Some(existing.id),
        blocks: 1,
    };
    changes::log_change(tx, logged).await?;
    let change = Change {
        actor,
        kind: "block.extended",
        subject_type: "block",
        subject_id: Some(existing.id.to_string()),
        old_value: Some(serde_json::json!({"expires_at": existing.expires_at})),
        new_value: Some(serde_json::json!({"expires_at": later})),
    };
    audit::record(tx, now, change).await?;
    tracing::info!(block.id = existing.id, "block extended");
    Ok(BlockOutcome::Existing(extended))
}

/// Closes an expired block at its expiry instant, so that a new block of the
/// same entity can be created. Of the sweep and a new block of the entity
/// racing to close it, only the one whose update changed the row records it.
/// The update also requires the expiry that was read: a block extended
/// meanwhile (by a replica whose clock runs a little behind) is no longer
/// expired and stays. Takes a change number of its own: it may share a
/// transaction with the block that replaces it, or with other expiries.
pub(super) async fn retire_expired_block(
    tx: &mut Tx,
    id: i64,
    expires_at: Option<Timestamp>,
) -> Result<()> {
    let Some(expired_at) = expires_at else {
        return Ok(());
    };
    let seq = changes::next_seq(tx).await?;
    let retired = sqlx::query(
        "UPDATE blocks SET deactivated_at = $1, deactivated_by = 'system', \
             deactivation_reason = 'expired', changed_seq = $3 \
         WHERE id = $2 AND deactivated_at IS NULL AND expires_at = $1",
    )
    .bind(expired_at.millis())
    .bind(id)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    if retired.rows_affected() == 0 {
        return Ok(());
    }
    let logged = LoggedChange {
        seq,
        at: expired_at,
        actor: "system",
        kind: ChangeKind::Expired,
        block_id: Some(id),
        blocks: 1,
    };
    changes::log_change(tx, logged).await?;
    let change = Change {
        actor: "system",
        kind: "block.expired",
        subject_type: "block",
        subject_id: Some(id.to_string()),
        old_value: None,
        new_value: Some(serde_json::json!({"expires_at": expired_at})),
    };
    audit::record(tx, expired_at, change).await
}

/// Deactivates a block. A block that is already inactive (deactivated or
/// expired) is returned unchanged.
pub async fn deactivate_block(
    tx: &mut Tx,
    now: Timestamp,
    id: i64,
    actor: &str,
    reason: &str,
) -> Result<Block> {
    let seq = changes::next_seq(tx).await?;

    let sql = format!(
        "UPDATE blocks SET deactivated_at = $1, deactivated_by = $2, deactivation_reason = $3, \
             changed_seq = $5 \
         WHERE id = $4 AND deactivated_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
         RETURNING {BLOCK_COLUMNS}"
    );
    let updated = sqlx::query(&sql)
        .bind(now.millis())
        .bind(actor)
        .bind(reason)
        .bind(id)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = updated else {
        return find_block(&mut **tx, id, now).await;
    };

    let block = Block::from_row(&row, now)?;
    let logged = LoggedChange {
        seq,
        at: now,
        actor,
        kind: ChangeKind::Deactivated,
        block_id: Some(id),
        blocks: 1,
    };
    changes::log_change(tx, logged).await?;
    let change = Change {
        actor,
        kind: "block.deactivated",
        subject_type: "block",
        subject_id: Some(id.to_string()),
        old_value: Some(serde_json::json!({"is_active": true})),
        new_value: Some(serde_json::json!({"is_active": false, "reason": reason})),
    };
    audit::record(tx, now, change).await?;
    tracing::info!(block.id = id, "block deactivated");
    Ok(block)
}

/// One block by id, or 404.
pub async fn find_block<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    id: i64,
    now: Timestamp,
) -> Result<Block> {
    let sql = format!("SELECT {BLOCK_COLUMNS} FROM blocks WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no block with id {id}")))?;
    Block::from_row(&row, now)
}

/// Deactivates every active block that overlaps one of `networks`, with
/// reason `allowlisted`: called when the allowlist grows.
pub async fn deactivate_allowlisted(
    tx: &mut Tx,
    networks: &[Network],
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    if networks.is_empty() {
        return Ok(());
    }

    // Waits for any block being created to commit, so that the query
    // below sees it; one created later reads this allowlist and is refused.
    changes::next_seq(tx).await?;

    for network in networks {
        let (start, end) = network.range();
        let ids: Vec<i64> = sqlx::query(
            "SELECT id FROM blocks \
             WHERE deactivated_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
               AND family = $2 AND range_start <= $3 AND range_end >= $4",
        )
        .bind(now.millis())
        .bind(network.family())
        .bind(range_key(end))
        .bind(range_key(start))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| row.try_get::<i64, _>("id"))
        .collect::<Result<_, _>>()?;
        for id in ids {
            deactivate_block(tx, now, id, actor, "allowlisted").await?;
        }
    }
    Ok(())
}

/// The active blocks among `ids`, newest first: the full records of what
/// the index matched. A block ended since the index was read is left out.
/// No ids, no query.
pub async fn active_blocks_by_id<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    ids: &[i64],
    now: Timestamp,
) -> Result<Vec<Block>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT {BLOCK_COLUMNS} FROM blocks WHERE id IN ({}) ORDER BY id DESC",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    let rows = query.fetch_all(executor).await?;
    let blocks: Vec<Block> = rows
        .iter()
        .map(|row| Block::from_row(row, now))
        .collect::<Result<_>>()?;
    Ok(blocks.into_iter().filter(|block| block.is_active).collect())
}

/// Closes every block whose expiry has passed, at its expiry instant, and
/// records each in the audit log. Check and lists already ignore expired
/// blocks; this makes the ending visible in the trail. Returns the closed
/// blocks, for the index to forget.
pub async fn expire_due_blocks(db: &crate::storage::Db, now: Timestamp) -> Result<BlockChanges> {
    let sql = format!(
        "SELECT {BLOCK_COLUMNS} FROM blocks \
         WHERE deactivated_at IS NULL AND expires_at <= $1 ORDER BY expires_at LIMIT 500"
    );
    let rows = sqlx::query(&sql)
        .bind(now.millis())
        .fetch_all(db.reader())
        .await?;
    let mut ended = BlockChanges::new();
    if rows.is_empty() {
        return Ok(ended);
    }

    // Read first, then write: a quiet sweep takes no change number. Each
    // retirement is conditional, so a block ended meanwhile is skipped.
    let mut tx = db.begin().await?;
    for row in &rows {
        let block = Block::from_row(row, now)?;
        retire_expired_block(&mut tx, block.id, block.expires_at).await?;
        ended.record(&block);
    }
    tx.commit().await?;
    tracing::info!(blocks = rows.len(), "expired blocks closed");
    Ok(ended)
}
