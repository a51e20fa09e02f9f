//! Blocklist import speed, beside a baseline measured in the same run.
//!
//! For each backend it starts the real server binary on an empty database
//! and streams one file to `POST /security/policy/blocks/import`, then
//! measures a baseline: the same rows (parsed and canonicalised beforehand,
//! outside the clock) inserted into a freshly migrated database, with the
//! same indexes, by a plain batched `INSERT` through the same driver (sqlx's
//! Any driver), 32 rows a statement and 5,000 a transaction: what a loader
//! that trusts its input and skips every rule would cost.
//!
//! The file comes from `bench/blocklist_lines.py` (path in
//! `VALHALLA_BENCH_IMPORT_FILE`); run with `bench/import.sh`, which writes
//! the table into BENCHMARKS.md.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{AnyConnection, Connection, Executor};
use valhalla::blocklist::entity::range_key;
use valhalla::blocklist::{Entity, EntityType};

const BASELINE_ROWS_PER_STATEMENT: usize = 32;
const BASELINE_ROWS_PER_TRANSACTION: usize = 5_000;

#[path = "../tests/process/server.rs"]
mod server;

use server::ServerProcess as Server;

/// Streams the file to the import endpoint; returns the seconds taken and
/// the report.
async fn measure_import(server: &Server, file: &str) -> (f64, Value) {
    let handle = tokio::fs::File::open(file).await.expect("the import file");
    let size = handle.metadata().await.unwrap().len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        handle,
        256 * 1024,
    ));
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/security/policy/blocks/import", server.base_url))
        .bearer_auth(&server.token)
        .header("Content-Type", "application/x-ndjson")
        .header("Content-Length", size)
        .timeout(Duration::from_secs(600))
        .body(body)
        .send()
        .await
        .expect("the import answers");
    let status = response.status();
    let report: Value = response.json().await.expect("a JSON answer");
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.is_success(), "the import failed: {status} {report}");
    (seconds, report)
}

/// A row as the baseline inserts it, parsed before the clock starts.
struct BaselineRow {
    entity_type: &'static str,
    value: String,
    family: Option<i64>,
    range_start: Option<String>,
    range_end: Option<String>,
    reason: String,
    expires_at: Option<i64>,
}

/// The file's rows, canonical and without duplicates (a plain INSERT
/// would trip the one-live-block index on the first repeat).
fn baseline_rows(file: &str, now_millis: i64) -> Vec<BaselineRow> {
    let text = std::fs::read_to_string(file).expect("the import file");
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for line in text.lines() {
        let Ok(fields) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(kind) = fields["entity_type"].as_str().and_then(EntityType::parse) else {
            continue;
        };
        let Ok(entity) = Entity::parse(kind, fields["value"].as_str().unwrap_or_default()) else {
            continue;
        };
        if !seen.insert((kind, entity.value())) {
            continue;
        }
        let network = entity.network();
        let range = network.map(|network| network.range());
        rows.push(BaselineRow {
            entity_type: kind.as_str(),
            value: entity.value(),
            family: network.map(|network| network.family()),
            range_start: range.map(|(start, _)| range_key(start)),
            range_end: range.map(|(_, end)| range_key(end)),
            reason: fields["reason"].as_str().unwrap_or("bench").to_string(),
            expires_at: fields["duration_seconds"]
                .as_i64()
                .map(|seconds| now_millis + seconds * 1000),
        });
    }
    rows
}

/// Rows per second of the plain batched INSERT into a migrated database.
async fn measure_baseline(database_url: &str, rows: &[BaselineRow], now_millis: i64) -> f64 {
    let db = valhalla::storage::Db::connect(database_url)
        .await
        .expect("the baseline database");
    db.migrate().await.expect("migrations");
    let started = Instant::now();
    for transaction_rows in rows.chunks(BASELINE_ROWS_PER_TRANSACTION) {
        let mut tx = db.begin().await.unwrap();
        for statement_rows in transaction_rows.chunks(BASELINE_ROWS_PER_STATEMENT) {
            let placeholders: Vec<String> = (0..statement_rows.len())
                .map(|row| {
                    let n = row * 9;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, 'human', 'bench', ${}, ${}, ${}, 1, 1)",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5,
                        n + 6,
                        n + 7,
                        n + 8,
                        n + 9
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO blocks (entity_type, value, family, range_start, range_end, reason, \
                     source, created_by, action_request_id, created_at, expires_at, created_seq, \
                     changed_seq) VALUES {}",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for row in statement_rows {
                query = query
                    .bind(row.entity_type)
                    .bind(&row.value)
                    .bind(row.family)
                    .bind(row.range_start.as_deref())
                    .bind(row.range_end.as_deref())
                    .bind(&row.reason)
                    .bind(None::<i64>)
                    .bind(now_millis)
                    .bind(row.expires_at);
            }
            query.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    db.close().await;
    rows.len() as f64 / seconds
}

struct Figures {
    backend: &'static str,
    lines: u64,
    seconds: f64,
    created: u64,
    baseline_rows_per_second: f64,
    peak_memory_mib: f64,
}

/// Two database URLs (server, baseline) for a backend, and what to drop after.
async fn databases(backend: &str, dir: &tempfile::TempDir) -> Option<(String, String)> {
    match backend {
        "sqlite" => Some((
            format!("sqlite://{}", dir.path().join("server.db").display()),
            format!("sqlite://{}", dir.path().join("baseline.db").display()),
        )),
        _ => {
            let admin = std::env::var("VALHALLA_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
            sqlx::any::install_default_drivers();
            let mut connection = AnyConnection::connect(&admin).await.ok()?;
            let (base, _) = admin.rsplit_once('/')?;
            let mut urls = Vec::new();
            // Named after this process, so runs that share the server (other
            // worktrees, other benches) never drop each other's databases.
            let pid = std::process::id();
            for name in [
                format!("bench_import_server_{pid}"),
                format!("bench_import_baseline_{pid}"),
            ] {
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                connection.execute(sql.as_str()).await.ok()?;
                connection
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .ok()?;
                urls.push(format!("{base}/{name}"));
            }
            connection.close().await.ok();
            Some((urls[0].clone(), urls[1].clone()))
        }
    }
}

/// Drops the two databases `databases` made on PostgreSQL.
async fn drop_postgres_databases() {
    let admin = std::env::var("VALHALLA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let Ok(mut connection) = AnyConnection::connect(&admin).await else {
        return;
    };
    let pid = std::process::id();
    for name in ["bench_import_server", "bench_import_baseline"] {
        let sql = format!("DROP DATABASE IF EXISTS {name}_{pid} WITH (FORCE)");
        if let Err(error) = connection.execute(sql.as_str()).await {
            eprintln!("could not drop {name}_{pid}: {error}");
        }
    }
    connection.close().await.ok();
}

async fn measure_backend(backend: &'static str, file: &str) -> Option<Figures> {
    let dir = tempfile::tempdir().unwrap();
    let (server_url, baseline_url) = databases(backend, &dir).await?;

    let server = Server::start(&server_url).await;
    let (seconds, report) = measure_import(&server, file).await;
    let peak_memory_mib = server.peak_memory_mib();
    drop(server);

    let now_millis = chrono::Utc::now().timestamp_millis();
    let rows = baseline_rows(file, now_millis);
    let baseline_rows_per_second = measure_baseline(&baseline_url, &rows, now_millis).await;

    if backend == "postgres" {
        drop_postgres_databases().await;
    }

    let count = |field: &str| report[field].as_u64().unwrap_or(0);
    Some(Figures {
        backend,
        lines: count("created") + count("extended") + count("unchanged") + count("rejected_total"),
        seconds,
        created: count("created"),
        baseline_rows_per_second,
        peak_memory_mib,
    })
}

#[tokio::main]
async fn main() {
    let file = std::env::var("VALHALLA_BENCH_IMPORT_FILE")
        .expect("VALHALLA_BENCH_IMPORT_FILE: a file from bench/blocklist_lines.py");
    let megabytes = std::fs::metadata(&file).expect("the import file").len() as f64 / 1e6;
    println!(
        "| backend | lines | import (s) | import (lines/s) | blocks created | \
         plain batched INSERT, same rows (rows/s) | import / baseline | server peak RSS (MiB) \
         | file (MB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for backend in ["sqlite", "postgres"] {
        let Some(figures) = measure_backend(backend, &file).await else {
            eprintln!("{backend}: not reachable, skipped");
            continue;
        };
        let rate = figures.lines as f64 / figures.seconds;
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {:.0} | {:.2} | {:.1} | {:.1} |",
            figures.backend,
            figures.lines,
            figures.seconds,
            rate,
            figures.created,
            figures.baseline_rows_per_second,
            figures.created as f64 / figures.seconds / figures.baseline_rows_per_second,
            figures.peak_memory_mib,
            megabytes
        );
    }
}
