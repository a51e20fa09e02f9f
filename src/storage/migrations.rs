//! Versioned schema migrations, one folder per backend (`migrations/sqlite`,
//! `migrations/postgres`), compiled into the binary and applied in order.

use sqlx::{Executor, Row};

use super::{Backend, Db};
use crate::error::Result;

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
];

/// Any number larger than zero that other applications are unlikely to use
/// for `pg_advisory_lock`: it serialises replicas migrating at once.
const MIGRATION_LOCK_KEY: i64 = 0x5641_4c48_414c_4c41;

pub(super) async fn run(db: &Db) -> Result<()> {
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

    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
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
