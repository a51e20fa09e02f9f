//! The index as the server holds it: shared between handlers, fed by the
//! transactions of this process as they commit, and by the change log for
//! what other processes (replicas sharing PostgreSQL, a second server on
//! the same SQLite file) commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sqlx::Row;
use tokio::sync::mpsc;

use super::changes;
use super::entity::{Entity, EntityType, Network};
use super::index::BlocklistIndex;
use super::model::Block;
use super::store;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::storage::Db;
use crate::time::Timestamp;

/// What a transaction did to the active blocklist, to apply to the index
/// once (and only if) it commits. Store functions report into it; the
/// caller that commits applies it. Any new path that writes blocks (an
/// import, say) must do the same, or checks will not see its blocks until
/// the next start.
#[derive(Debug, Default)]
pub struct BlockChanges {
    /// Blocks as they stand after the transaction: active ones are upserted,
    /// inactive ones removed.
    blocks: Vec<Block>,
    /// Allowlist entries: any indexed `ip` or `cidr` block overlapping them
    /// is gone.
    allowlisted: Vec<Network>,
    /// Blocks known by their parsed entity rather than a full record: what
    /// an import writes, where a million `Block` records would only be
    /// built to be parsed again.
    entries: Vec<IndexedBlock>,
    /// The change numbers the transaction took, first and last, when it
    /// reports every change made under them (see [`SharedIndex::apply`]).
    seqs: Option<(i64, i64)>,
}

/// One block as the index holds it.
#[derive(Debug)]
struct IndexedBlock {
    id: i64,
    entity: Entity,
    expires_at: Option<Timestamp>,
    is_active: bool,
}

impl BlockChanges {
    pub fn new() -> Self {
        Self::default()
    }

    /// The change to one block.
    pub fn of(block: &Block) -> Self {
        let mut changes = Self::new();
        changes.record(block);
        changes
    }

    /// A block created, extended, deactivated or expired.
    pub fn record(&mut self, block: &Block) {
        self.blocks.push(block.clone());
    }

    /// A block known by its entity: active ones are upserted, inactive ones
    /// removed.
    pub fn record_entity(
        &mut self,
        id: i64,
        entity: Entity,
        expires_at: Option<Timestamp>,
        is_active: bool,
    ) {
        self.entries.push(IndexedBlock {
            id,
            entity,
            expires_at,
            is_active,
        });
    }

    /// These are all the changes made under the change numbers `first` to
    /// `last`: once applied, the follower need not read them back.
    pub fn record_seqs(&mut self, first: i64, last: i64) {
        self.seqs = Some((first, last));
    }

    /// The allowlist now holds `networks`.
    pub fn record_allowlist(&mut self, networks: &[Network]) {
        self.allowlisted.extend_from_slice(networks);
    }

    /// Adds another transaction's changes after these.
    pub fn extend(&mut self, other: BlockChanges) {
        self.blocks.extend(other.blocks);
        self.allowlisted.extend(other.allowlisted);
        self.entries.extend(other.entries);
    }
}

/// Blocks whose full records a check recently returned. A proxy asking
/// about every request it serves asks about the same blocked addresses
/// again and again; without this, each of those checks would read the
/// database. Every change applied to the index evicts the changed blocks
/// and moves `generation` on, so a record read before a change is never
/// cached after it.
#[derive(Default)]
struct RecordCache {
    blocks: HashMap<i64, Block>,
    generation: u64,
}

/// Records cached at most (some tens of megabytes); past it the cache
/// starts afresh.
const RECORD_CACHE_CAPACITY: usize = 100_000;

/// How often a replica looks for changes others committed: well inside
/// the one second within which every replica must enforce a change.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// A block as the follower reads it: enough to update the index.
struct FollowedBlock {
    seq: i64,
    id: i64,
    entity: Entity,
    expires_at: Option<Timestamp>,
    is_active: bool,
}

/// The next page of blocks whose last change lies after `after` (a change
/// number and a block id, since one import batch shares a number) and no
/// later than `upto`.
async fn changed_page(
    db: &Db,
    now: Timestamp,
    after: (i64, i64),
    upto: i64,
) -> Result<Vec<FollowedBlock>> {
    let rows = sqlx::query(
        "SELECT changed_seq, id, entity_type, value, expires_at, deactivated_at FROM blocks \
         WHERE (changed_seq > $1 OR (changed_seq = $1 AND id > $2)) AND changed_seq <= $3 \
         ORDER BY changed_seq, id LIMIT $4",
    )
    .bind(after.0)
    .bind(after.1)
    .bind(upto)
    .bind(LOAD_PAGE)
    .fetch_all(db.reader())
    .await?;

    let mut page = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        let entity_type: String = row.try_get("entity_type")?;
        let value: String = row.try_get("value")?;
        let entity =
            EntityType::parse(&entity_type).and_then(|kind| Entity::parse(kind, &value).ok());
        let Some(entity) = entity else {
            tracing::error!(block.id = id, "unreadable block not indexed");
            continue;
        };
        let expires_at = crate::storage::timestamp_opt(row, "expires_at")?;
        let deactivated_at = crate::storage::timestamp_opt(row, "deactivated_at")?;
        page.push(FollowedBlock {
            seq: row.try_get("changed_seq")?,
            id,
            entity,
            expires_at,
            is_active: deactivated_at.is_none() && expires_at.is_none_or(|at| at > now),
        });
    }
    Ok(page)
}

/// Blocks loaded a page at a time, so that start-up never holds a million
/// rows at once beside the index.
const LOAD_PAGE: i64 = 10_000;

/// Reads every active block, a page at a time in id order, and sends the
/// pages to `pages`; stops early when the receiver has gone.
///
/// Each page comes back as one text, a line per block: the database
/// drivers cost about a microsecond per row and column decoded, which at a
/// million blocks was most of start-up; joining a page in SQL costs the
/// database a fraction of that, and splitting it here little more. The
/// value comes last on its line, so it may hold spaces; it never holds a
/// line break, since every entity refuses control characters.
async fn read_pages(db: Db, now: Timestamp, pages: mpsc::Sender<String>) -> Result<()> {
    let mut after_id = 0;
    loop {
        let row = sqlx::query(
            "SELECT MAX(id) AS last_id, \
                    string_agg(id || ' ' || entity_type || ' ' || COALESCE(expires_at, 0) \
                               || ' ' || value, $4) AS lines \
             FROM (SELECT id, entity_type, value, expires_at FROM blocks \
                   WHERE id > $1 AND deactivated_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > $2) \
                   ORDER BY id LIMIT $3) AS page",
        )
        .bind(after_id)
        .bind(now.millis())
        .bind(LOAD_PAGE)
        .bind("\n")
        .fetch_one(db.reader())
        .await?;

        let Some(last_id) = row.try_get::<Option<i64>, _>("last_id")? else {
            return Ok(());
        };
        after_id = last_id;
        let lines: String = row.try_get("lines")?;
        if pages.send(lines).await.is_err() {
            return Ok(());
        }
    }
}

/// Parses a page of `id entity_type expires_at value` lines into the
/// index; an expiry of 0 means permanent.
fn index_page(index: &mut BlocklistIndex, lines: &str) {
    for line in lines.split('\n') {
        match parse_line(line) {
            Some((id, entity, expires_at)) => index.upsert(id, &entity, expires_at),
            None => tracing::error!(line, "unreadable block not indexed"),
        }
    }
}

fn parse_line(line: &str) -> Option<(i64, Entity, Option<Timestamp>)> {
    let mut fields = line.splitn(4, ' ');
    let id = fields.next()?.parse().ok()?;
    let kind = EntityType::parse(fields.next()?)?;
    let expires_at = match fields.next()?.parse::<i64>().ok()? {
        0 => None,
        millis => Some(Timestamp::from_millis(millis)?),
    };
    let entity = Entity::parse(kind, fields.next()?).ok()?;
    Some((id, entity, expires_at))
}

/// The index as the server shares it: one `RwLock`, because a check holds
/// the read lock for a few hash probes and a change holds the write lock
/// for one entry, so neither waits long; `std` is enough. The exception is
/// growing the allowlist, which scans every address entry under the write
/// lock (tens of milliseconds at a million): rare enough to accept.
#[derive(Clone, Default)]
pub struct SharedIndex {
    index: Arc<RwLock<BlocklistIndex>>,
    records: Arc<Mutex<RecordCache>>,
    /// The change log number up to which the index holds every change.
    seen_seq: Arc<AtomicI64>,
    /// Held by a writer of this process from its commit until the index
    /// holds what it committed, and by the follower while it reads how far
    /// the log goes. The follower then never finds a commit of this process
    /// not yet applied, so it does not read it back: for an import, that
    /// was every batch's rows a second time, a million through the driver.
    local_commit: Arc<tokio::sync::Mutex<()>>,
}

impl SharedIndex {
    /// Loads every block that is neither deactivated nor expired.
    pub async fn load(db: &Db, now: Timestamp) -> Result<Self> {
        // The number first: a change committed while the pages load is
        // then applied again by the follower, which is harmless, instead
        // of being missed.
        let seen_seq = changes::last_seq(db.reader()).await?;

        // Reading rows and building the index take about as long as each
        // other, so one task reads while this one builds: start-up with a
        // million blocks is then bound by the slower of the two.
        let (pages, mut arriving) = mpsc::channel(2);
        let reader = tokio::spawn(read_pages(db.clone(), now, pages));
        let mut index = BlocklistIndex::new();
        while let Some(page) = arriving.recv().await {
            index_page(&mut index, &page);
        }
        reader
            .await
            .map_err(|error| Error::Internal(format!("the blocklist reader failed: {error}")))??;

        tracing::info!(blocks = index.len(), "blocklist index loaded");
        Ok(Self {
            index: Arc::new(RwLock::new(index)),
            records: Arc::default(),
            seen_seq: Arc::new(AtomicI64::new(seen_seq)),
            local_commit: Arc::default(),
        })
    }

    /// Follows the change log until the task is aborted, applying what
    /// other processes commit. Errors (the database away for a moment) are
    /// logged and the next round tries again from the same number.
    pub fn follow(&self, db: Db, clock: Arc<dyn Clock>) -> tokio::task::JoinHandle<()> {
        let shared = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FOLLOW_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = shared.catch_up(&db, clock.now()).await {
                    tracing::warn!(%error, "cannot read the blocklist change log");
                }
            }
        })
    }

    /// Applies every block changed after the last number seen, up to the
    /// newest committed number. Returns how many blocks were applied.
    pub async fn catch_up(&self, db: &Db, now: Timestamp) -> Result<usize> {
        let (upto, from) = {
            let _local_commit = self.local_commit.lock().await;
            let upto = changes::last_seq(db.reader()).await?;
            (upto, self.seen_seq.load(Ordering::Acquire))
        };
        if upto <= from {
            return Ok(0);
        }

        let mut applied = 0;
        let mut after = (from, i64::MAX);
        loop {
            let page = changed_page(db, now, after, upto).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = (last.seq, last.id);
            applied += page.len();
            self.apply_followed(&page);
        }

        self.seen_seq.fetch_max(upto, Ordering::AcqRel);
        Ok(applied)
    }

    fn apply_followed(&self, page: &[FollowedBlock]) {
        self.forget_records(page.iter().map(|block| block.id));
        let mut index = self.write();
        for block in page {
            if block.is_active {
                index.upsert(block.id, &block.entity, block.expires_at);
            } else {
                index.remove(block.id, &block.entity);
            }
        }
    }

    /// For each entity, whether the index holds an entry for it (see
    /// [`BlocklistIndex::holds`]). The read lock is taken afresh every few
    /// thousand entities, so that a change waiting for the write lock (and
    /// the checks queued behind it) waits microseconds, not a whole batch.
    pub fn holding(&self, entities: &[&Entity]) -> Vec<bool> {
        let mut held = Vec::with_capacity(entities.len());
        for chunk in entities.chunks(4096) {
            let index = self.read();
            held.extend(chunk.iter().map(|entity| index.holds(entity)));
        }
        held
    }

    /// Ids of the blocks matching `entity` at `now`.
    pub fn matching(&self, entity: &Entity, now: Timestamp) -> Vec<i64> {
        self.read().matching(entity, now)
    }

    /// The active blocks matching `entity` at `now`, newest first: ids from
    /// the index, records from the record cache or else the database.
    pub async fn matching_blocks(
        &self,
        db: &Db,
        entity: &Entity,
        now: Timestamp,
    ) -> Result<Vec<Block>> {
        let ids = self.matching(entity, now);
        if ids.is_empty() {
            return Ok(Vec::new());
        }

        let (mut found, missing, generation) = self.cached_records(&ids);
        if !missing.is_empty() {
            let loaded = store::active_blocks_by_id(db.reader(), &missing, now).await?;
            self.remember_records(generation, &loaded);
            found.extend(loaded);
        }

        for block in &mut found {
            block.is_active =
                block.deactivated_at.is_none() && block.expires_at.is_none_or(|at| at > now);
        }
        found.retain(|block| block.is_active);
        found.sort_by_key(|block| std::cmp::Reverse(block.id));
        Ok(found)
    }

    /// The cached records among `ids`, the ids not cached, and the cache's
    /// generation to hand back to `remember_records`.
    fn cached_records(&self, ids: &[i64]) -> (Vec<Block>, Vec<i64>, u64) {
        let records = self.records();
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match records.blocks.get(id) {
                Some(block) => found.push(block.clone()),
                None => missing.push(*id),
            }
        }
        (found, missing, records.generation)
    }

    /// Caches records read from the database, unless a change was applied
    /// since the read began: the records might predate it.
    fn remember_records(&self, generation: u64, loaded: &[Block]) {
        let mut records = self.records();
        if records.generation != generation {
            return;
        }
        if records.blocks.len() + loaded.len() > RECORD_CACHE_CAPACITY {
            records.blocks.clear();
        }
        for block in loaded {
            records.blocks.insert(block.id, block.clone());
        }
    }

    fn forget_records(&self, ids: impl Iterator<Item = i64>) {
        let mut records = self.records();
        records.generation += 1;
        for id in ids {
            records.blocks.remove(&id);
        }
    }

    /// To be held from a commit until its changes are applied (see
    /// `local_commit`), where a commit is large enough to matter.
    pub async fn local_commit(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.local_commit.clone().lock_owned().await
    }

    /// Applies a committed transaction's changes.
    pub fn apply(&self, changes: BlockChanges) {
        self.forget_records(changes.blocks.iter().map(|block| block.id));
        if !changes.allowlisted.is_empty() {
            self.records().blocks.clear();
        }
        let mut index = self.write();
        for block in &changes.blocks {
            let Ok(entity) = Entity::parse(block.entity_type, &block.value) else {
                continue;
            };
            if block.is_active {
                index.upsert(block.id, &entity, block.expires_at);
            } else {
                index.remove(block.id, &entity);
            }
        }
        for block in &changes.entries {
            if block.is_active {
                index.upsert(block.id, &block.entity, block.expires_at);
            } else {
                index.remove(block.id, &block.entity);
            }
        }
        for network in &changes.allowlisted {
            index.remove_overlapping(network);
        }
        drop(index);

        // When the index already held every change before these numbers,
        // it now holds every change up to the last of them, and the
        // follower skips them instead of reading back (for an import) a
        // million rows this process has just written. Otherwise another
        // commit lies between, and the follower reads all of it as usual.
        if let Some((first, last)) = changes.seqs {
            let _ = self.seen_seq.compare_exchange(
                first - 1,
                last,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while holding the lock leaves a consistent map (every change
    // is one insert or remove), so a poisoned lock is still read.
    // Each critical section leaves the map consistent, so a poisoned lock
    // still guards a usable cache.
    fn records(&self) -> std::sync::MutexGuard<'_, RecordCache> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BlocklistIndex> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BlocklistIndex> {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
