//! Integration tests: the real server over HTTP on loopback, each test on
//! SQLite and on PostgreSQL.

// Not every test module uses every helper.
#[allow(dead_code)]
#[macro_use]
mod support;

mod actions;
mod blocklist;
mod cowrie_sample;
mod crowdsec;
mod detection;
mod errors;
mod export;
mod field_cases;
mod honeypots;
mod import;
mod ingest;
mod logs;
mod metrics;
mod pagination;
mod policy;
mod rate_limits;
mod replicas;
mod roles;
mod tokens;
