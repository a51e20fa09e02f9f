//! Versioned schema migrations, one folder per backend (`migrations/sqlite`,
//! `migrations/postgres`), compiled into the binary and applied in order.

use sqlx::{Executor, Row};

use super::{Backend, Db};
use crate::error::{Error, Result};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sqlite: include_str!("../../migrations/sqlite/0001_initial.sql"),
        postgres: include_str!("../../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "event_fingerprints",
        sqlite: include_str!("../../migrations/sqlite/0002_event_fingerprints.sql"),
        postgres: include_str!("../../migrations/postgres/0002_event_fingerprints.sql"),
    },
    Migration {
        version: 3,
        name: "detection",
        sqlite: include_str!("../../migrations/sqlite/0003_detection.sql"),
        postgres: include_str!("../../migrations/postgres/0003_detection.sql"),
    },
    Migration {
        version: 4,
        name: "blocklist_changes",
        sqlite: include_str!("../../migrations/sqlite/0004_blocklist_changes.sql"),
        postgres: include_str!("../../migrations/postgres/0004_blocklist_changes.sql"),
    },
    Migration {
        version: 5,
        name: "bouncer_pulls",
        sqlite: include_str!("../../migrations/sqlite/0005_bouncer_pulls.sql"),
        postgres: include_str!("../../migrations/postgres/0005_bouncer_pulls.sql"),
    },
    Migration {
        version: 6,
        name: "blocks_without_range_index",
        sqlite: include_str!("../../migrations/sqlite/0006_blocks_without_range_index.sql"),
        postgres: include_str!("../../migrations/postgres/0006_blocks_without_range_index.sql"),
    },
    Migration {
        version: 7,
        name: "events_by_position",
        sqlite: include_str!("../../migrations/sqlite/0007_events_by_position.sql"),
        postgres: include_str!("../../migrations/postgres/0007_events_by_position.sql"),
    },
    Migration {
        version: 8,
        name: "blocks_entity_index",
        sqlite: include_str!("../../migrations/sqlite/0008_blocks_entity_index.sql"),
        postgres: include_str!("../../migrations/postgres/0008_blocks_entity_index.sql"),
    },
];

/// Any number larger than zero that other applications are unlikely to use
/// for `pg_advisory_lock`: it serialises replicas migrating at once.
const MIGRATION_LOCK_KEY: i64 = 0x5641_4c48_414c_4c41;

pub(super) async fn run(db: &Db) -> Result<()> {
    apply(db, MIGRATIONS).await
}

/// Applies those of `migrations` not applied yet, in one transaction.
async fn apply(db: &Db, migrations: &[Migration]) -> Result<()> {
    let mut tx = db.begin().await?;
    if db.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
    }

    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
            version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.get::<i64, _>(0))
        .collect();

    refuse_newer_schema(&applied)?;

    for migration in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        let sql = match db.backend() {
            Backend::Sqlite => migration.sqlite,
            Backend::Postgres => migration.postgres,
        };
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&mut *tx)
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }

    tx.commit().await?;
    Ok(())
}

/// An older release must not write to a database that a newer one has
/// migrated: it would write rows the way the old schema wanted (event ids
/// from the table's own counter, for one), which the newer servers sharing
/// the database do not expect.
fn refuse_newer_schema(applied: &[i64]) -> Result<()> {
    let known = |version: &i64| MIGRATIONS.iter().any(|m| m.version == *version);
    match applied.iter().filter(|version| !known(version)).max() {
        Some(newest) => Err(Error::Command(format!(
            "the database is at schema version {newest}, written by a newer release of \
             Valhalla; this one knows versions up to {}: run the newer release",
            MIGRATIONS.last().map_or(0, |m| m.version)
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(db: &Db, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(db.reader())
            .await
            .unwrap()
    }

    /// A database as migration 6 left it, in `dir`, with one honeypot and
    /// events `(id, processed_at)`; then migrated to the end.
    async fn migrated_from_version_6(dir: &tempfile::TempDir, events: &[(i64, Option<i64>)]) -> Db {
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        let db = Db::connect(&url).await.unwrap();
        let before = MIGRATIONS.iter().position(|m| m.version == 7).unwrap();
        apply(&db, &MIGRATIONS[..before]).await.unwrap();
        sqlx::query(
            "INSERT INTO honeypot_instances (id, name, honeypot_type, key_hash, created_at) \
             VALUES (1, 'old', 'ssh', 'digest', 0)",
        )
        .execute(db.writer())
        .await
        .unwrap();
        for (id, processed_at) in events {
            sqlx::query(
                "INSERT INTO honeypot_events (id, honeypot_id, event_type, source_ip, \
                     occurred_at, received_at, threat_level, threat_tags, processed_at) \
                 VALUES ($1, 1, 'scan', '203.0.113.1', 0, 0, 'low', '[]', $2)",
            )
            .bind(id)
            .bind(processed_at)
            .execute(db.writer())
            .await
            .unwrap();
        }
        run(&db).await.unwrap();
        db
    }

    /// An event row before migration 7: `(id, processed_at)`.
    type Event = (i64, Option<i64>);

    /// A database whose engine marked events one by one resumes, after the
    /// move to judging by position, just before its oldest unmarked event,
    /// and the event writer's ids continue after the last stored one: with
    /// some unjudged, all judged, and no events at all.
    #[tokio::test]
    async fn judging_by_position_resumes_at_the_oldest_unjudged_event() {
        // Events `(id, processed_at)`, then the expected position and last id.
        let cases: [(&[Event], i64, i64); 3] = [
            (&[(1, Some(5)), (2, Some(5)), (3, None), (4, None)], 2, 4),
            (&[(7, Some(5))], 7, 7),
            (&[], 0, 0),
        ];
        for (events, judged_through, last_id) in cases {
            let dir = tempfile::tempdir().unwrap();

            let db = migrated_from_version_6(&dir, events).await;

            let judged = count(&db, "SELECT judged_through FROM engine_state").await;
            assert_eq!(judged, judged_through, "{events:?}");
            let last = count(&db, "SELECT last_id FROM event_sequence").await;
            assert_eq!(last, last_id, "{events:?}");
        }
    }

    /// The tests' PostgreSQL server, as the API tests find it.
    fn postgres_admin_url() -> String {
        std::env::var("VALHALLA_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
    }

    /// A scratch database on `backend`, with what to drop afterwards on
    /// PostgreSQL (a database of a random name on the tests' server).
    async fn scratch_database(
        backend: Backend,
        dir: &tempfile::TempDir,
    ) -> (String, Option<String>) {
        if backend == Backend::Sqlite {
            return (
                format!("sqlite://{}", dir.path().join("scratch.db").display()),
                None,
            );
        }
        let admin = postgres_admin_url();
        let name = format!(
            "valhalla_migration_{}",
            &crate::auth::Secret::generate("").expose()[..12].to_lowercase()
        );
        let admin_db = Db::connect(&admin).await.expect("PostgreSQL for the tests");
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(admin_db.writer())
            .await
            .unwrap();
        admin_db.close().await;
        let (base, _) = admin.rsplit_once('/').unwrap();
        (format!("{base}/{name}"), Some(name))
    }

    async fn drop_database(name: &str) {
        let admin_db = Db::connect(&postgres_admin_url()).await.unwrap();
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(admin_db.writer())
            .await
            .unwrap();
        admin_db.close().await;
    }

    /// `(id, value, expires_at, deactivated_at)`: 1 live, 2 ended by hand
    /// and 3 live again for the same address, 4 expired but not swept, 5
    /// swept at its expiry.
    const BLOCKS_BEFORE_8: &[(i64, &str, Option<i64>, Option<i64>)] = &[
        (1, "192.0.2.1", None, None),
        (2, "192.0.2.2", Some(9_000), Some(5_000)),
        (3, "192.0.2.2", None, None),
        (4, "192.0.2.4", Some(1_000), None),
        (5, "192.0.2.5", Some(2_000), Some(2_000)),
    ];

    async fn insert_block(db: &Db, id: i64, value: &str) -> sqlx::Result<u64> {
        let sql = format!(
            "INSERT INTO blocks (id, entity_type, value, reason, source, created_by, \
                 created_at) \
             VALUES ($1, 'ip', $2, 'test', 'manual', 'test', 0) \
             ON CONFLICT {} DO NOTHING",
            crate::blocklist::LIVE_ENTITY
        );
        let done = sqlx::query(&sql)
            .bind(id)
            .bind(value)
            .execute(db.writer())
            .await?;
        Ok(done.rows_affected())
    }

    /// Blocks written before migration 8 keep their rows, and its one index
    /// by entity still allows one live block per entity and any number of
    /// ended ones.
    async fn entity_index_keeps_one_live_block_per_entity(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let (url, scratch) = scratch_database(backend, &dir).await;
        // A failed check still drops the database.
        let checked = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            check_entity_index(url),
        ))
        .await;
        if let Some(name) = scratch {
            drop_database(&name).await;
        }
        if let Err(failed) = checked {
            std::panic::resume_unwind(failed);
        }
    }

    async fn check_entity_index(url: String) {
        let db = Db::connect(&url).await.unwrap();
        let before = MIGRATIONS.iter().position(|m| m.version == 8).unwrap();
        apply(&db, &MIGRATIONS[..before]).await.unwrap();
        for (id, value, expires_at, deactivated_at) in BLOCKS_BEFORE_8 {
            sqlx::query(
                "INSERT INTO blocks (id, entity_type, value, reason, source, created_by, \
                     created_at, expires_at, deactivated_at) \
                 VALUES ($1, 'ip', $2, 'test', 'manual', 'test', 0, $3, $4)",
            )
            .bind(id)
            .bind(value)
            .bind(expires_at)
            .bind(deactivated_at)
            .execute(db.writer())
            .await
            .unwrap();
        }

        run(&db).await.unwrap();

        assert_eq!(count(&db, "SELECT COUNT(*) FROM blocks").await, 5);
        // Live, whether expired or not: a second one is refused.
        for (id, value) in [(10, "192.0.2.1"), (11, "192.0.2.2"), (12, "192.0.2.4")] {
            assert_eq!(insert_block(&db, id, value).await.unwrap(), 0, "{value}");
        }
        // Only ended blocks: a new live one is taken, and ending it leaves
        // two ended blocks of one entity side by side.
        assert_eq!(insert_block(&db, 6, "192.0.2.5").await.unwrap(), 1);
        sqlx::query("UPDATE blocks SET deactivated_at = 3000 WHERE id = 6")
            .execute(db.writer())
            .await
            .unwrap();
        assert_eq!(insert_block(&db, 7, "192.0.2.5").await.unwrap(), 1);
        // Without a conflict target, the index itself refuses a second
        // live block.
        let plain = sqlx::query(
            "INSERT INTO blocks (id, entity_type, value, reason, source, created_by, \
                 created_at) \
             VALUES (13, 'ip', '192.0.2.5', 'test', 'manual', 'test', 0)",
        )
        .execute(db.writer())
        .await
        .unwrap_err();
        assert!(super::super::is_unique_violation(&plain), "{plain}");

        db.close().await;
    }

    #[tokio::test]
    async fn entity_index_keeps_one_live_block_per_entity_on_sqlite() {
        entity_index_keeps_one_live_block_per_entity(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn entity_index_keeps_one_live_block_per_entity_on_postgres() {
        entity_index_keeps_one_live_block_per_entity(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn a_database_migrated_by_a_newer_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("newer.db").display());
        let db = Db::connect(&url).await.unwrap();
        run(&db).await.unwrap();
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, 'later', 0)",
        )
        .execute(db.writer())
        .await
        .unwrap();

        let refused = run(&db).await.unwrap_err().to_string();

        assert!(refused.contains("schema version 9999"), "{refused}");
    }
}
