//! Ingest throughput, each figure beside a baseline measured in the same run.
//!
//! For each backend it starts the real server binary, then measures:
//! - bulk ingest of Cowrie records through `POST /security/honeypot/events/bulk`,
//!   against a plain batched INSERT of the same rows through the same driver
//!   (sqlx's Any driver, same engine, same durability settings), once into a
//!   bare table and once into `honeypot_events` with all its indexes;
//! - single-event POSTs from 64 concurrent clients;
//! - detection: events judged per second by the engine, from the start of
//!   the bulk run until no event is left unprocessed (so at most the ingest
//!   rate), and by the engine alone, in-process, on the same events as a
//!   backlog once the server has stopped;
//! - the server's peak resident memory (VmHWM) over the run.
//!
//! Run with `bench/ingest.sh`, which writes the table into BENCHMARKS.md.
//! Sizes: `VALHALLA_BENCH_EVENTS` (bulk, default 200000) and
//! `VALHALLA_BENCH_POSTS` (single, default 40000).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, Connection, Executor};
use tokio::sync::Notify;
use valhalla::blocklist::SharedIndex;
use valhalla::clock::{Clock, SystemClock};
use valhalla::detection::Engine;
use valhalla::policy::SharedPolicy;
use valhalla::storage::Db;

const BATCH_LINES: usize = 10_000;
const CONCURRENT_CLIENTS: usize = 64;

#[path = "../tests/process/server.rs"]
mod server;

use server::ServerProcess as Server;

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap();
    u128::from_le_bytes(bytes)
}

/// `count` distinct Cowrie login records, shaped like the real log's.
fn cowrie_lines(count: usize, salt: u64) -> Vec<String> {
    (0..count)
        .map(|n| {
            let micros = salt * 1_000_000_000 + n as u64;
            json!({
                "eventid": "cowrie.login.failed",
                "username": format!("user{}", n % 500),
                "password": "123456",
                "message": "login attempt failed",
                "sensor": "bench",
                "session": format!("{:012x}", n),
                "src_ip": format!("198.51.{}.{}", (n / 250) % 250, n % 250 + 1),
                "src_port": 40000 + n % 20000,
                "dst_ip": "192.0.2.1",
                "dst_port": 2222,
                "protocol": "ssh",
                "timestamp": format!(
                    "2026-12-04T{:02}:{:02}:{:02}.{:06}Z",
                    micros / 3_600_000_000 % 24,
                    micros / 60_000_000 % 60,
                    micros / 1_000_000 % 60,
                    micros % 1_000_000
                ),
            })
            .to_string()
        })
        .collect()
}

struct Figures {
    backend: &'static str,
    bulk_events_per_second: f64,
    judged_events_per_second: f64,
    judged_alone_events_per_second: f64,
    baseline_events_per_second: f64,
    schema_baseline_events_per_second: f64,
    single_events_per_second: f64,
    peak_memory_mib: f64,
    events: usize,
    posts: usize,
}

async fn register_honeypot(http: &reqwest::Client, server: &Server, name: &str) -> String {
    let reply: Value = http
        .post(format!("{}/security/honeypot/instances", server.base_url))
        .bearer_auth(&server.token)
        .json(&json!({"name": name, "honeypot_type": "ssh"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["api_key"].as_str().expect("an api key").to_string()
}

/// Raises the normal mode's per-client limit far above what one machine
/// sends: this measures what ingest can take, and 64 clients posting single
/// events as one honeypot would otherwise meet the default 100 a second.
async fn lift_rate_limit(http: &reqwest::Client, server: &Server) {
    let limit = json!({"requests_per_minute": 60_000_000, "burst": 1_000_000});
    let status = http
        .post(format!("{}/security/policy/", server.base_url))
        .bearer_auth(&server.token)
        .json(&json!({"rate_limits": {"normal": limit}}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200, "the rate limit is raised");
}

/// Bulk ingest through HTTP: two senders, batches of `BATCH_LINES`.
async fn measure_bulk(http: &reqwest::Client, server: &Server, lines: &[String]) -> (f64, Instant) {
    let key = register_honeypot(http, server, "bulk").await;
    let bodies: Vec<String> = lines
        .chunks(BATCH_LINES)
        .map(|chunk| chunk.join("\n"))
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (http, bodies, next, key) = (http.clone(), bodies.clone(), next.clone(), key.clone());
        let url = format!(
            "{}/security/honeypot/events/bulk?format=cowrie",
            server.base_url
        );
        senders.push(tokio::spawn(async move {
            let mut stored = 0;
            while let Some(body) = bodies.get(next.fetch_add(1, Ordering::SeqCst)) {
                let reply: Value = http
                    .post(&url)
                    .header("X-HONEYPOT-KEY", &key)
                    .header("Content-Type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                stored += reply["accepted"].as_u64().expect("a bulk report") as usize;
            }
            stored
        }));
    }
    let mut stored = 0;
    for sender in senders {
        stored += sender.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(stored, lines.len(), "every bulk record is accepted");
    (lines.len() as f64 / elapsed, started)
}

/// Waits until the engine has judged every event; returns events per second
/// since `started`.
async fn measure_judging(
    http: &reqwest::Client,
    server: &Server,
    events: usize,
    started: Instant,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(1800);
    while Instant::now() < deadline {
        let dashboard: Value = http
            .get(format!("{}/security/dashboard", server.base_url))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if dashboard["honeypots"]["unprocessed"] == 0 {
            return events as f64 / started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f64::NAN
}

/// The engine alone on a backlog: the server's database after its run,
/// the engine's position set back to the first event and its incidents
/// removed, judged again in-process, batch after batch, with nothing else
/// running. Events judged per second.
async fn measure_backlog_judging(database_url: &str) -> f64 {
    let db = Db::connect(database_url).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    for reset in [
        "DELETE FROM incident_links",
        "DELETE FROM incidents",
        "UPDATE engine_state SET judged_through = 0",
    ] {
        sqlx::query(reset).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM honeypot_events")
        .fetch_one(db.reader())
        .await
        .unwrap();

    let clock = Arc::new(SystemClock);
    let engine = Engine::new(
        db.clone(),
        clock.clone(),
        Arc::new(Notify::new()),
        SharedIndex::load(&db, clock.now()).await.unwrap(),
        SharedPolicy::load(&db).await.unwrap(),
    );
    let started = Instant::now();
    while engine.judge_next_batch().await.unwrap() > 0 {}
    let elapsed = started.elapsed().as_secs_f64();
    db.close().await;
    events as f64 / elapsed
}

/// Where the baseline's rows go.
#[derive(Clone, Copy)]
enum BaselineTable {
    /// A table of the same columns without any index.
    Bare,
    /// Valhalla's own `honeypot_events`, with every index the server keeps
    /// (created by the server's migrations in a database of its own).
    Schema,
}

/// The same rows through a plain batched INSERT with the same driver:
/// 32 rows a statement (a few hundred parameters, where sqlx is fastest),
/// `BATCH_LINES` rows a transaction, the same engine, durability and page
/// cache as the server's writer; no HTTP, parsing, classification or
/// detection.
async fn measure_baseline(
    database_url: &str,
    backend: &str,
    lines: &[String],
    table: BaselineTable,
) -> f64 {
    let pool = AnyPoolOptions::new().max_connections(1);
    let pool = if backend == "sqlite" {
        pool.after_connect(|connection, _| {
            Box::pin(async move {
                connection
                    .execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA cache_size = -65536;",
                    )
                    .await?;
                Ok(())
            })
        })
    } else {
        pool
    };
    let honeypot_id = match table {
        BaselineTable::Bare => 1,
        BaselineTable::Schema => {
            let server = Server::start(database_url).await;
            register_honeypot(&reqwest::Client::new(), &server, "baseline").await;
            drop(server);
            1
        }
    };
    let pool = pool.connect(database_url).await.unwrap();
    let target = match table {
        BaselineTable::Bare => {
            pool.execute(
                "CREATE TABLE baseline_events (honeypot_id BIGINT, event_type TEXT, \
                 source_ip TEXT, source_port BIGINT, destination_port BIGINT, protocol TEXT, \
                 username TEXT, password TEXT, session_id TEXT, payload TEXT, \
                 occurred_at BIGINT, received_at BIGINT, threat_level TEXT, threat_tags TEXT, \
                 fingerprint TEXT)",
            )
            .await
            .unwrap();
            "baseline_events"
        }
        BaselineTable::Schema => "honeypot_events",
    };
    let rows: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();

    let started = Instant::now();
    for (batch_number, batch) in rows.chunks(BATCH_LINES).enumerate() {
        let mut tx = pool.begin().await.unwrap();
        for (chunk_number, chunk) in batch.chunks(32).enumerate() {
            let placeholders: Vec<String> = (0..chunk.len())
                .map(|row| {
                    let numbers: Vec<String> = (1..=15)
                        .map(|column| format!("${}", row * 15 + column))
                        .collect();
                    format!("({})", numbers.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {target} (honeypot_id, event_type, source_ip, source_port, \
                 destination_port, protocol, username, password, session_id, payload, \
                 occurred_at, received_at, threat_level, threat_tags, fingerprint) VALUES {}",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (index, row) in chunk.iter().enumerate() {
                let number = batch_number * BATCH_LINES + chunk_number * 32 + index;
                query = query
                    .bind(honeypot_id)
                    .bind("auth_attempt")
                    .bind(row["src_ip"].as_str().unwrap().to_string())
                    .bind(row["src_port"].as_i64())
                    .bind(row["dst_port"].as_i64())
                    .bind("ssh")
                    .bind(row["username"].as_str().unwrap().to_string())
                    .bind("123456")
                    .bind(row["session"].as_str().unwrap().to_string())
                    .bind(row.to_string())
                    .bind(1_764_853_200_000_i64)
                    .bind(1_764_853_200_000_i64)
                    .bind("low")
                    .bind("[\"brute_force\"]")
                    .bind(format!("{number:064x}"));
            }
            query.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    pool.close().await;
    rows.len() as f64 / elapsed
}

/// Single-event POSTs from `CONCURRENT_CLIENTS` clients at once.
async fn measure_single(server: &Server, posts: usize) -> f64 {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENT_CLIENTS)
        .build()
        .unwrap();
    let key = register_honeypot(&http, server, "single").await;
    let url = format!("{}/security/honeypot/events", server.base_url);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CONCURRENT_CLIENTS {
        let (http, url, key, next) = (http.clone(), url.clone(), key.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= posts {
                    return;
                }
                let event = json!({
                    "event_type": "auth_attempt",
                    "source_ip": format!("203.0.{}.{}", n / 250 % 250, n % 250 + 1),
                    "username": "root", "password": "123456", "destination_port": 22,
                });
                let status = http
                    .post(&url)
                    .header("X-HONEYPOT-KEY", &key)
                    .json(&event)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status.as_u16(), 201);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    posts as f64 / started.elapsed().as_secs_f64()
}

async fn measure_backend(backend: &'static str, events: usize, posts: usize) -> Option<Figures> {
    let dir = tempfile::tempdir().unwrap();
    let names = ["server", "baseline", "schema"];
    let urls: Vec<String> = match backend {
        "sqlite" => names
            .iter()
            .map(|name| format!("sqlite://{}?mode=rwc", dir.path().join(name).display()))
            .collect(),
        _ => {
            let admin = std::env::var("VALHALLA_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
            let mut connection = AnyConnection::connect(&admin).await.ok()?;
            let suffix = format!("{:08x}", rand_u128() as u32);
            let (base, _) = admin.rsplit_once('/').unwrap();
            let mut urls = Vec::new();
            for name in names {
                let database = format!("bench_{name}_{suffix}");
                connection
                    .execute(format!("CREATE DATABASE {database}").as_str())
                    .await
                    .ok()?;
                urls.push(format!("{base}/{database}"));
            }
            urls
        }
    };
    let (server_url, baseline_url, schema_url) = (&urls[0], &urls[1], &urls[2]);

    let lines = cowrie_lines(events, 1);
    let baseline = measure_baseline(baseline_url, backend, &lines, BaselineTable::Bare).await;
    let schema_baseline =
        measure_baseline(schema_url, backend, &lines, BaselineTable::Schema).await;

    let server = Server::start(server_url).await;
    let http = reqwest::Client::new();
    lift_rate_limit(&http, &server).await;
    let (bulk, started) = measure_bulk(&http, &server, &lines).await;
    let judged = measure_judging(&http, &server, lines.len(), started).await;
    let single = measure_single(&server, posts).await;
    let peak = server.peak_memory_mib();
    drop(server);
    let judged_alone = measure_backlog_judging(server_url).await;

    if backend == "postgres" {
        drop_bench_databases(&urls).await;
    }
    Some(Figures {
        backend,
        bulk_events_per_second: bulk,
        judged_events_per_second: judged,
        judged_alone_events_per_second: judged_alone,
        baseline_events_per_second: baseline,
        schema_baseline_events_per_second: schema_baseline,
        single_events_per_second: single,
        peak_memory_mib: peak,
        events,
        posts,
    })
}

async fn drop_bench_databases(urls: &[String]) {
    let admin = std::env::var("VALHALLA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let Ok(mut connection) = AnyConnection::connect(&admin).await else {
        return;
    };
    for url in urls {
        let name = url.rsplit('/').next().unwrap();
        let _ = connection
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run this.
    if !std::env::args().any(|argument| argument == "--bench") {
        return;
    }
    sqlx::any::install_default_drivers();
    let events = env_count("VALHALLA_BENCH_EVENTS", 200_000);
    let posts = env_count("VALHALLA_BENCH_POSTS", 40_000);

    let mut rows = Vec::new();
    for backend in ["sqlite", "postgres"] {
        match measure_backend(backend, events, posts).await {
            Some(figures) => rows.push(figures),
            None => eprintln!("{backend}: not reachable, skipped"),
        }
    }

    println!(
        "| backend | bulk ingest (events/s) | plain batched INSERT, bare table (events/s) \
         | bulk / bare | plain batched INSERT into honeypot_events, its indexes (events/s) \
         | bulk / indexed | judged during ingest (events/s) | judged alone, a backlog (events/s) \
         | judged alone / bulk \
         | single POSTs, {CONCURRENT_CLIENTS} clients (events/s) | server peak RSS (MiB) | sizes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for figures in rows {
        let bulk = figures.bulk_events_per_second;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} \
             | {} bulk, {} single |",
            figures.backend,
            bulk,
            figures.baseline_events_per_second,
            bulk / figures.baseline_events_per_second,
            figures.schema_baseline_events_per_second,
            bulk / figures.schema_baseline_events_per_second,
            figures.judged_events_per_second,
            figures.judged_alone_events_per_second,
            figures.judged_alone_events_per_second / bulk,
            figures.single_events_per_second,
            figures.peak_memory_mib,
            figures.events,
            figures.posts,
        );
    }
}
