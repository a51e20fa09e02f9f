//! The database: one body of SQL over SQLite (embedded default) and PostgreSQL.
//!
//! Queries go through sqlx's `Any` driver, so the domain modules write each
//! statement once. They keep to the SQL both engines share: `$1` parameters,
//! `RETURNING`, `ON CONFLICT`, integers, text and doubles. Instants are
//! integer milliseconds since the epoch and documents are JSON text, which
//! both engines store, compare and index the same way.

mod migrations;
pub mod query;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyQueryResult};
use sqlx::{Any, AnyPool, Executor, Transaction};

use crate::error::{Error, Result};

pub use query::Filter;

/// A transaction on whichever backend is configured.
pub type Tx = Transaction<'static, Any>;

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(Error::Internal(
                "the database URL must start with sqlite: or postgres:".to_string(),
            ))
        }
    }
}

/// Connection pools for reading and for writing.
///
/// SQLite allows one writer at a time; a writer pool of one connection turns
/// contention into an orderly queue inside the process instead of
/// `database is locked` errors. On PostgreSQL both pools are the same.
#[derive(Debug, Clone)]
pub struct Db {
    reader: AnyPool,
    writer: AnyPool,
    backend: Backend,
}

/// Every PostgreSQL session: a transaction left open and idle is ended by
/// the server. Writers take one-row locks (the event and blocklist
/// sequences) that every replica's writers wait for; a replica frozen in the
/// middle of a transaction (a paused VM, a stopped process, a partition)
/// would otherwise stall them all until its connection is found dead. None
/// of Valhalla's transactions waits on anything but the database, and 10 s
/// stays well under the 30 s a request may take, so that a request queued
/// behind a frozen replica still gets its answer.
const POSTGRES_SESSION: &str = "SET idle_in_transaction_session_timeout = '10s'";

impl Db {
    /// Connects, creating a SQLite file if it does not exist yet.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let db = match backend {
            Backend::Sqlite => {
                let url = sqlite_url_creating_file(url);
                let writer = sqlite_pool(1, WRITER_CACHE_KIB).connect(&url).await?;
                let reader = sqlite_pool(4, READER_CACHE_KIB).connect(&url).await?;
                Db {
                    reader,
                    writer,
                    backend,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            connection.execute(POSTGRES_SESSION).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?;
                Db {
                    reader: pool.clone(),
                    writer: pool,
                    backend,
                }
            }
        };
        Ok(db)
    }

    /// Brings the schema up to date with this build's migrations.
    pub async fn migrate(&self) -> Result<()> {
        migrations::run(self).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for statements that only read.
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// The pool for single statements that write outside a transaction.
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Starts a transaction that may write.
    ///
    /// On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a
    /// transaction that reads first and writes later cannot wait for
    /// another process's write (a second server on the same file, the
    /// `token` command) and fails with `database is locked` instead, while
    /// `BEGIN IMMEDIATE` waits its turn under the busy timeout.
    pub async fn begin(&self) -> Result<Tx> {
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        };
        Ok(tx)
    }

    /// Answers whether the database responds, for readiness checks.
    pub async fn ping(&self) -> bool {
        let probe = tokio::time::timeout(Duration::from_secs(2), self.reader.execute("SELECT 1"));
        matches!(probe.await, Ok(Ok(_)))
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Page cache of the one writing connection, in KiB. SQLite's default
/// (2 MiB) holds a sliver of the blocks table's indexes at a million rows,
/// so every random index insert of an import read its page back from the
/// file; 64 MiB keeps their hot part in memory.
const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Page cache of each reading connection, in KiB: SQLite's default.
const READER_CACHE_KIB: u32 = 2 * 1024;

fn sqlite_pool(connections: u32, cache_kib: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |connection, _| {
            Box::pin(async move {
                // WAL lets readers work beside the writer; FULL syncs the WAL
                // at every commit, so an answered write survives a power cut
                // (group commit keeps that affordable); the busy timeout
                // covers other processes (e.g. `valhalla token create`).
                let pragmas = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
                     PRAGMA cache_size = -{cache_kib};"
                );
                connection.execute(pragmas.as_str()).await?;
                Ok(())
            })
        })
}

/// sqlx opens SQLite files read-write but does not create them unless asked.
fn sqlite_url_creating_file(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The rows of a JSON array bound as `$1`, as a table with one column,
/// `item` (each element), for `INSERT … SELECT … FROM` this. Many rows then
/// cost one bound parameter: sqlx's cost per statement grows faster than
/// its count of parameters. The only SQL here that differs by backend.
pub fn json_array_rows(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "(SELECT value AS item FROM json_each($1)) AS batch",
        Backend::Postgres => "jsonb_array_elements(CAST($1 AS jsonb)) AS batch(item)",
    }
}

/// A query answering with one row whose column `rows` holds every row of
/// `select` as one JSON text: an array of arrays of `columns`, in no
/// particular order. Reading many rows through sqlx's SQLite driver costs a
/// hand-over between threads per row; one text costs one, and parsing it is
/// cheap.
pub fn rows_as_json(backend: Backend, columns: &str, select: &str) -> String {
    match backend {
        Backend::Sqlite => {
            format!("SELECT json_group_array(json_array({columns})) AS rows FROM ({select})")
        }
        Backend::Postgres => format!(
            "SELECT coalesce(json_agg(json_build_array({columns})), '[]')::text AS rows \
             FROM ({select}) AS selected"
        ),
    }
}

/// Reads the answer of a [`rows_as_json`] query.
pub fn parse_json_rows<T: serde::de::DeserializeOwned>(row: &sqlx::any::AnyRow) -> Result<Vec<T>> {
    use sqlx::Row;

    let text: String = row.try_get("rows")?;
    serde_json::from_str(&text)
        .map_err(|error| Error::Internal(format!("unreadable rows from the database: {error}")))
}

/// True when a statement failed on a unique constraint, on either engine.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Database(database_error)
            if database_error.kind() == sqlx::error::ErrorKind::UniqueViolation
    )
}

/// Maps a unique-constraint failure to 409 with `detail`; other errors pass.
pub fn conflict_on_duplicate(error: sqlx::Error, detail: impl FnOnce() -> String) -> Error {
    if is_unique_violation(&error) {
        Error::Conflict(detail())
    } else {
        Error::Database(error)
    }
}

/// Fails with 404 unless a write touched a row.
pub fn expect_row(result: AnyQueryResult, what: impl FnOnce() -> String) -> Result<()> {
    if result.rows_affected() == 0 {
        Err(Error::NotFound(what()))
    } else {
        Ok(())
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(url: &str) -> Result<Self> {
        Backend::from_url(url)
    }
}

/// Reads a required instant column.
pub fn timestamp(row: &sqlx::any::AnyRow, column: &str) -> Result<crate::time::Timestamp> {
    use sqlx::Row;
    let millis: i64 = row.try_get(column)?;
    crate::time::Timestamp::from_millis(millis)
        .ok_or_else(|| Error::Internal(format!("column {column} holds an out-of-range instant")))
}

/// Reads a nullable instant column.
pub fn timestamp_opt(
    row: &sqlx::any::AnyRow,
    column: &str,
) -> Result<Option<crate::time::Timestamp>> {
    use sqlx::Row;
    let millis: Option<i64> = row.try_get(column)?;
    millis
        .map(|millis| {
            crate::time::Timestamp::from_millis(millis).ok_or_else(|| {
                Error::Internal(format!("column {column} holds an out-of-range instant"))
            })
        })
        .transpose()
}

/// Reads a nullable JSON text column.
pub fn json_opt<T: serde::de::DeserializeOwned>(
    row: &sqlx::any::AnyRow,
    column: &str,
) -> Result<Option<T>> {
    use sqlx::Row;
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|error| Error::Internal(format!("column {column} holds bad JSON: {error}")))
    })
    .transpose()
}

/// Reads a required JSON text column.
pub fn json<T: serde::de::DeserializeOwned>(row: &sqlx::any::AnyRow, column: &str) -> Result<T> {
    json_opt(row, column)?
        .ok_or_else(|| Error::Internal(format!("column {column} is unexpectedly null")))
}
