//! Writing one batch of imported lines in one transaction, set-based.
//!
//! `block_entity` costs several statements a block; a million of them take
//! minutes. Here a batch of a few thousand lines costs a handful: one read
//! of the live blocks of the batch's entities, one insert of the new ones,
//! one update of the extended ones. The rows travel as one JSON array bound
//! as a single parameter and unpacked by the database
//! (`storage::json_array_rows`): sqlx's cost grows with every bound
//! parameter, and a thousand-row `VALUES` list would bind
//! seven thousand. The rules are those of a single block: allowlist
//! overlap refused, an active block extended to the later expiry
//! (permanent wins), an expired but not yet swept block retired and
//! replaced.

use std::collections::HashMap;

use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::lines::ImportLine;
use crate::actions::Source;
use crate::audit::{self, Change};
use crate::blocklist::changes::{self, ChangeKind, LoggedChange};
use crate::blocklist::entity::{range_key, Entity, EntityType, Network};
use crate::blocklist::shared::{BlockChanges, SharedIndex};
use crate::blocklist::store::retire_expired_block;
use crate::blocklist::LIVE_ENTITY;
use crate::error::{Error, Result};
use crate::http::RejectedLine;
use crate::policy::load_policy;
use crate::storage::{self, Backend, Db, Tx};
use crate::time::Timestamp;

/// Who imports, and as what source the blocks are recorded.
pub struct Importer {
    pub actor: String,
    pub source: Source,
}

/// What one batch did, line by line.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub created: usize,
    pub extended: usize,
    /// Lines whose entity was already blocked at least as long.
    pub unchanged: usize,
    pub rejected: Vec<RejectedLine>,
    /// For the index, applied by `import_batch` once committed.
    pub changes: BlockChanges,
}

/// The lines of one entity within a batch, in file order.
struct EntityLines {
    entity: Entity,
    value: String,
    reason: String,
    lines: Vec<(usize, Option<Timestamp>)>,
}

/// A live (not deactivated) block of one of the batch's entities.
struct LiveBlock {
    id: i64,
    expires_at: Option<Timestamp>,
}

/// What the batch will write.
#[derive(Default)]
struct Plan {
    inserts: Vec<PlannedInsert>,
    /// Active blocks to move to a later expiry: id, entity, new expiry.
    extensions: Vec<(i64, Entity, Option<Timestamp>)>,
    /// Expired blocks still live: id, entity and expiry.
    retirements: Vec<(i64, Entity, Option<Timestamp>)>,
    /// Rows inserted or extended so far.
    written: usize,
    /// Expired blocks retired.
    retired: usize,
    /// The last change number the batch took (retirements take their own).
    last_seq: i64,
    outcome: BatchOutcome,
}

struct PlannedInsert {
    entity: Entity,
    value: String,
    reason: String,
    expires_at: Option<Timestamp>,
    lines: Vec<usize>,
    /// Of `lines`, how many counted as extended and unchanged.
    extended: usize,
    unchanged: usize,
}

/// Imports one batch in one transaction, shows its blocks to checks once
/// committed, and returns what it did. A batch that changes nothing is
/// rolled back, so it takes no change number.
///
/// The database is first asked only about the entities the in-memory index
/// holds, and the rest are inserted as new blocks: for a list of fresh
/// entities that saves a lookup of every line. An entity blocked by a change
/// the index has not seen yet (another replica's, or an expired block the
/// sweep has not ended) then clashes on the one-live-block-per-entity index;
/// the batch's writes are undone to a savepoint and made again after asking
/// the database about every entity.
pub async fn import_batch(
    db: &Db,
    index: &SharedIndex,
    now: Timestamp,
    importer: &Importer,
    lines: Vec<ImportLine>,
) -> Result<BatchOutcome> {
    let first_line = lines.first().map(|line| line.line);
    let last_line = lines.last().map(|line| line.line);
    let mut tx = db.begin().await?;
    // First, as every writer does (see `changes`): from here on no other
    // block change can commit until this batch has.
    let seq = changes::next_seq(&mut tx).await?;

    let (lines, rejected) = refuse_allowlisted(&mut tx, lines).await?;
    let mut entities = group_by_entity(lines);
    // In key order: the lookup of live blocks and both indexes on
    // (entity_type, value) then take the batch's keys leaf page after leaf
    // page instead of at random (a quarter less time for a million lines).
    entities.sort_unstable_by(|a, b| {
        let a_key = (a.entity.entity_type().as_str(), a.value.as_str());
        a_key.cmp(&(b.entity.entity_type().as_str(), b.value.as_str()))
    });
    let keys: Vec<&Entity> = entities.iter().map(|entity| &entity.entity).collect();
    let held = index.holding(&keys);
    let batch = Batch {
        backend: db.backend(),
        now,
        seq,
        importer,
        entities: &entities,
    };

    sqlx::query("SAVEPOINT import_batch")
        .execute(&mut *tx)
        .await?;
    let mut plan = match batch.write(&mut tx, Some(&held)).await {
        Err(Error::Database(error)) if storage::is_unique_violation(&error) => {
            sqlx::query("ROLLBACK TO SAVEPOINT import_batch")
                .execute(&mut *tx)
                .await?;
            batch.write(&mut tx, None).await?
        }
        plan => plan?,
    };
    plan.outcome.rejected.splice(0..0, rejected);
    if plan.written == 0 && plan.retired == 0 {
        tx.rollback().await?;
        return Ok(plan.outcome);
    }

    let lines = (first_line, last_line);
    record_batch(&mut tx, now, seq, &importer.actor, &plan, lines).await?;
    let local_commit = index.local_commit().await;
    tx.commit().await?;
    plan.outcome.changes.record_seqs(seq, plan.last_seq);
    index.apply(std::mem::take(&mut plan.outcome.changes));
    drop(local_commit);

    Ok(plan.outcome)
}

/// One batch's entities, to be written under change number `seq`.
struct Batch<'a> {
    backend: Backend,
    now: Timestamp,
    seq: i64,
    importer: &'a Importer,
    entities: &'a [EntityLines],
}

impl Batch<'_> {
    /// Plans and writes the batch. With `held` (whether the index holds
    /// each entity), only held entities are looked up and new blocks are
    /// inserted plainly, so a live block the lookup missed fails the
    /// statement on the unique index; without it, every entity is looked up
    /// and an entity blocked meanwhile by a writer that skips the change
    /// sequence is left out instead.
    async fn write(&self, tx: &mut Tx, held: Option<&[bool]>) -> Result<Plan> {
        let asked = self
            .entities
            .iter()
            .enumerate()
            .filter(|(position, _)| held.is_none_or(|held| held[*position]))
            .map(|(_, entity)| entity);
        let live = find_live_blocks(tx, self.backend, asked).await?;
        let mut plan = plan_batch(self.entities, &live, self.now);
        plan.last_seq = self.seq;
        if plan.inserts.is_empty() && plan.extensions.is_empty() && plan.retirements.is_empty() {
            return Ok(plan);
        }

        for (id, entity, expires_at) in std::mem::take(&mut plan.retirements) {
            retire_expired_block(tx, id, expires_at).await?;
            plan.retired += 1;
            plan.outcome
                .changes
                .record_entity(id, entity, expires_at, false);
        }
        // Each retirement took the next number after `seq`.
        plan.last_seq = changes::last_seq(&mut **tx).await?;
        let skip_live = held.is_none();
        insert_blocks(tx, self, skip_live, &mut plan).await?;
        extend_blocks(tx, self.backend, self.seq, &mut plan).await?;
        Ok(plan)
    }
}

/// Lines whose address or network overlaps the allowlist are rejected, as
/// a single block would be refused.
async fn refuse_allowlisted(
    tx: &mut Tx,
    lines: Vec<ImportLine>,
) -> Result<(Vec<ImportLine>, Vec<RejectedLine>)> {
    let allowlist: Vec<Network> = load_policy(&mut **tx).await?.settings.allowlist;
    let mut rejected = Vec::new();
    let kept = lines
        .into_iter()
        .filter(|line| {
            let network = line.entity.network();
            let allowed = network
                .and_then(|network| allowlist.iter().find(|allowed| allowed.overlaps(&network)));
            if let Some(allowed) = allowed {
                rejected.push(RejectedLine {
                    line: line.line,
                    error: format!(
                        "{} overlaps the allowlist entry {allowed}; allowlisted addresses are \
                         never blocked",
                        line.entity.value()
                    ),
                });
            }
            allowed.is_none()
        })
        .collect();
    Ok((kept, rejected))
}

/// Duplicates within the batch become one entity with all its lines.
fn group_by_entity(lines: Vec<ImportLine>) -> Vec<EntityLines> {
    let mut positions: HashMap<(EntityType, String), usize> = HashMap::new();
    let mut entities: Vec<EntityLines> = Vec::new();
    for line in lines {
        let value = line.entity.value();
        let key = (line.entity.entity_type(), value);
        match positions.get(&key) {
            Some(position) => entities[*position].lines.push((line.line, line.expires_at)),
            None => {
                positions.insert(key.clone(), entities.len());
                entities.push(EntityLines {
                    entity: line.entity,
                    value: key.1,
                    reason: line.reason,
                    lines: vec![(line.line, line.expires_at)],
                });
            }
        }
    }
    entities
}

/// The live blocks of the batch's entities, by entity type and value.
async fn find_live_blocks<'a>(
    tx: &mut Tx,
    backend: Backend,
    entities: impl Iterator<Item = &'a EntityLines>,
) -> Result<HashMap<(EntityType, String), LiveBlock>> {
    let keys: Vec<(&str, &str)> = entities
        .map(|entity| (entity.entity.entity_type().as_str(), entity.value.as_str()))
        .collect();
    let sql = format!(
        "SELECT blocks.id, blocks.entity_type, blocks.value, blocks.expires_at \
         FROM {} JOIN blocks \
           ON blocks.entity_type = batch.item ->> 0 AND blocks.value = batch.item ->> 1 \
         WHERE blocks.deactivated_at IS NULL",
        storage::json_array_rows(backend)
    );
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(&sql)
        .bind(serde_json::to_string(&keys).expect("strings serialise"))
        .fetch_all(&mut **tx)
        .await?;

    let mut live = HashMap::with_capacity(rows.len());
    for row in &rows {
        let entity_type: String = row.try_get("entity_type")?;
        let Some(entity_type) = EntityType::parse(&entity_type) else {
            continue;
        };
        let block = LiveBlock {
            id: row.try_get("id")?,
            expires_at: crate::storage::timestamp_opt(row, "expires_at")?,
        };
        live.insert((entity_type, row.try_get("value")?), block);
    }
    Ok(live)
}

/// Whether a block lasting until `current` is lengthened by `requested`;
/// `None` is permanent.
fn lengthens(current: Option<Timestamp>, requested: Option<Timestamp>) -> bool {
    match (current, requested) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(current), Some(requested)) => requested > current,
    }
}

/// Decides, line by line in file order, what each does: the first line of
/// an entity without an active block creates it; a later line (or any line
/// of an entity already blocked) extends it if it lasts longer, else
/// changes nothing.
fn plan_batch(
    entities: &[EntityLines],
    live: &HashMap<(EntityType, String), LiveBlock>,
    now: Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    for entity in entities {
        let key = (entity.entity.entity_type(), entity.value.clone());
        let existing = live.get(&key);
        let active = existing.filter(|block| block.expires_at.is_none_or(|at| at > now));
        if let (Some(expired), None) = (existing, active) {
            let entity = entity.entity.clone();
            plan.retirements
                .push((expired.id, entity, expired.expires_at));
        }

        let mut lines = entity.lines.iter();
        let mut expires_at = match active {
            Some(block) => block.expires_at,
            None => lines.next().expect("an entity has a line").1,
        };
        let (mut extended, mut unchanged) = (0, 0);
        for (_, requested) in lines {
            if lengthens(expires_at, *requested) {
                expires_at = *requested;
                extended += 1;
            } else {
                unchanged += 1;
            }
        }
        plan.outcome.extended += extended;
        plan.outcome.unchanged += unchanged;

        match active {
            Some(block) if block.expires_at != expires_at => {
                let entity = entity.entity.clone();
                plan.extensions.push((block.id, entity, expires_at));
            }
            Some(_) => {}
            None => {
                plan.outcome.created += 1;
                plan.inserts.push(PlannedInsert {
                    entity: entity.entity.clone(),
                    value: key.1,
                    reason: entity.reason.clone(),
                    expires_at,
                    lines: entity.lines.iter().map(|(line, _)| *line).collect(),
                    extended,
                    unchanged,
                });
            }
        }
    }
    plan
}

/// One statement for every new block; with `skip_live`, `ON CONFLICT …
/// DO NOTHING` leaves out an entity that has a live block (see
/// [`Batch::write`]) and its lines are rejected, to be imported again,
/// rather than failing the batch. Without it the insert is plain: on
/// PostgreSQL the clause alone made it take half as long again. The new ids
/// are then read back as one JSON text rather than as a `RETURNING` row per
/// block: sqlx hands each row over separately (a trip between the
/// database's thread and the server's, then the conversion to its `Any`
/// row), which for a million blocks cost seconds.
async fn insert_blocks(
    tx: &mut Tx,
    batch: &Batch<'_>,
    skip_live: bool,
    plan: &mut Plan,
) -> Result<()> {
    if plan.inserts.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = plan.inserts.iter().map(insert_row).collect();
    let conflict = if skip_live {
        format!("ON CONFLICT {LIVE_ENTITY} DO NOTHING")
    } else {
        String::new()
    };
    let sql = format!(
        "INSERT INTO blocks (entity_type, value, family, range_start, range_end, reason, \
             expires_at, source, created_by, created_at, created_seq, changed_seq) \
         SELECT batch.item ->> 0, batch.item ->> 1, CAST(batch.item ->> 2 AS BIGINT), \
             batch.item ->> 3, batch.item ->> 4, batch.item ->> 5, \
             CAST(batch.item ->> 6 AS BIGINT), $2, $3, $4, $5, $5 \
         FROM {} \
         WHERE true \
         {conflict}",
        storage::json_array_rows(batch.backend)
    );
    // On PostgreSQL the statement's own rows are aggregated by the same
    // statement (a data-modifying `WITH`), so no second query has to find
    // them in the table.
    let sql = match batch.backend {
        Backend::Sqlite => sql,
        Backend::Postgres => format!(
            "WITH inserted AS ({sql} RETURNING id, entity_type, value) \
             SELECT coalesce(json_agg(json_build_array(id, entity_type, value)), '[]')::text \
                 AS rows FROM inserted"
        ),
    };
    let query = sqlx::query(&sql)
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(batch.importer.source.as_str())
        .bind(&batch.importer.actor)
        .bind(batch.now.millis())
        .bind(batch.seq);
    let created = match batch.backend {
        Backend::Sqlite => {
            query.execute(&mut **tx).await?;
            created_by_seq(tx, batch.seq).await?
        }
        Backend::Postgres => query.fetch_one(&mut **tx).await?,
    };

    let inserted: Vec<(i64, String, String)> = storage::parse_json_rows(&created)?;
    plan.written += inserted.len();
    let ids: HashMap<(&str, &str), i64> = inserted
        .iter()
        .map(|(id, entity_type, value)| ((entity_type.as_str(), value.as_str()), *id))
        .collect();
    for insert in std::mem::take(&mut plan.inserts) {
        let key = (insert.entity.entity_type().as_str(), insert.value.as_str());
        match ids.get(&key) {
            Some(id) => {
                let outcome = &mut plan.outcome;
                outcome
                    .changes
                    .record_entity(*id, insert.entity, insert.expires_at, true);
            }
            None => {
                let outcome = &mut plan.outcome;
                outcome.created -= 1;
                outcome.extended -= insert.extended;
                outcome.unchanged -= insert.unchanged;
                outcome
                    .rejected
                    .extend(insert.lines.into_iter().map(|line| {
                        RejectedLine {
                            line,
                            error: "this entity was blocked by another change meanwhile; \
                                import the line again"
                                .to_string(),
                        }
                    }));
            }
        }
    }
    Ok(())
}

/// On SQLite, whose `INSERT` cannot sit in a `WITH`: the blocks this batch
/// inserted, as a JSON array of `[id, entity_type, value]`, found as those
/// its change number created. Extensions, which also carry that number,
/// come later in the batch; retirements carry later numbers.
async fn created_by_seq(tx: &mut Tx, seq: i64) -> Result<AnyRow> {
    let sql = storage::rows_as_json(
        Backend::Sqlite,
        "id, entity_type, value",
        "SELECT id, entity_type, value FROM blocks WHERE changed_seq = $1 AND created_seq = $1",
    );
    Ok(sqlx::query(&sql).bind(seq).fetch_one(&mut **tx).await?)
}

/// `[entity_type, value, family, range_start, range_end, reason, expires_at]`.
fn insert_row(insert: &PlannedInsert) -> serde_json::Value {
    let network = insert.entity.network();
    let range = network.map(|network| network.range());
    json!([
        insert.entity.entity_type().as_str(),
        insert.value,
        network.map(|network| network.family()),
        range.map(|(start, _)| range_key(start)),
        range.map(|(_, end)| range_key(end)),
        insert.reason,
        insert.expires_at.map(Timestamp::millis),
    ])
}

/// One statement for every extension. Conditional, as for a single block,
/// so an expiry only ever moves later.
async fn extend_blocks(tx: &mut Tx, backend: Backend, seq: i64, plan: &mut Plan) -> Result<()> {
    if plan.extensions.is_empty() {
        return Ok(());
    }
    let rows: Vec<(i64, Option<i64>)> = plan
        .extensions
        .iter()
        .map(|(id, _, expires_at)| (*id, expires_at.map(Timestamp::millis)))
        .collect();
    let sql = format!(
        "UPDATE blocks SET expires_at = CAST(batch.item ->> 1 AS BIGINT), changed_seq = $2 \
         FROM {} \
         WHERE blocks.id = CAST(batch.item ->> 0 AS BIGINT) AND blocks.expires_at IS NOT NULL \
           AND (batch.item ->> 1 IS NULL \
                OR blocks.expires_at < CAST(batch.item ->> 1 AS BIGINT))",
        storage::json_array_rows(backend)
    );
    let extended = sqlx::query(&sql)
        .bind(serde_json::to_string(&rows).expect("numbers serialise"))
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    plan.written += extended.rows_affected() as usize;

    for (id, entity, expires_at) in std::mem::take(&mut plan.extensions) {
        plan.outcome
            .changes
            .record_entity(id, entity, expires_at, true);
    }
    Ok(())
}

/// One change-log entry and one audit entry for the whole batch. An audit
/// entry per block would double the rows an import writes and bury every
/// other entry of the trail under a million; each block still names its
/// importer (`created_by`) and its batch (`created_seq`, the `seq` here).
async fn record_batch(
    tx: &mut Tx,
    now: Timestamp,
    seq: i64,
    actor: &str,
    plan: &Plan,
    (first_line, last_line): (Option<usize>, Option<usize>),
) -> Result<()> {
    let outcome = &plan.outcome;
    let logged = LoggedChange {
        seq,
        at: now,
        actor,
        kind: ChangeKind::Imported,
        block_id: None,
        blocks: plan.written as i64,
    };
    changes::log_change(tx, logged).await?;
    let change = Change {
        actor,
        kind: ChangeKind::Imported.as_str(),
        subject_type: "block",
        subject_id: None,
        old_value: None,
        new_value: Some(json!({
            "seq": seq,
            "created": outcome.created,
            "extended": outcome.extended,
            "unchanged": outcome.unchanged,
            "rejected": outcome.rejected.len(),
            "first_line": first_line,
            "last_line": last_line,
        })),
    };
    audit::record(tx, now, change).await
}
