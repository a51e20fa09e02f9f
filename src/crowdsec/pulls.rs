//! Each bouncer's position in the blocklist's change log: what its next
//! incremental pull is measured against.

use sqlx::{Any, Executor, Row};

use super::Bouncer;
use crate::error::Result;
use crate::storage::Db;
use crate::time::Timestamp;

/// Where a bouncer's last pull left it.
#[derive(Debug, Clone, Copy)]
pub struct PullPosition {
    /// The change number read before that pull's blocks: it was sent every
    /// change up to this one.
    pub last_seq: i64,
    /// When that pull was answered: expiries after it are still to report.
    pub last_pull_at: Timestamp,
}

/// The bouncer's last pull, or `None` before its first.
pub async fn find_position<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    token_id: i64,
) -> Result<Option<PullPosition>> {
    let row = sqlx::query("SELECT last_seq, last_pull_at FROM bouncer_pulls WHERE token_id = $1")
        .bind(token_id)
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(PullPosition {
        last_seq: row.try_get("last_seq")?,
        last_pull_at: crate::storage::timestamp(&row, "last_pull_at")?,
    }))
}

/// Records a pull: the bouncer now holds every change up to `position`.
pub async fn record_pull(db: &Db, bouncer: &Bouncer, position: PullPosition) -> Result<()> {
    sqlx::query(
        "INSERT INTO bouncer_pulls \
             (token_id, token_name, last_seq, last_pull_at, first_pull_at, ip_address, user_agent) \
         VALUES ($1, $2, $3, $4, $4, $5, $6) \
         ON CONFLICT (token_id) DO UPDATE SET \
             token_name = excluded.token_name, last_seq = excluded.last_seq, \
             last_pull_at = excluded.last_pull_at, ip_address = excluded.ip_address, \
             user_agent = excluded.user_agent",
    )
    .bind(bouncer.token_id)
    .bind(&bouncer.name)
    .bind(position.last_seq)
    .bind(position.last_pull_at.millis())
    .bind(bouncer.address.as_deref())
    .bind(bouncer.user_agent.as_deref())
    .execute(db.writer())
    .await?;
    Ok(())
}
