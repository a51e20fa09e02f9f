//! Settings, each from a flag or a `VALHALLA_*` environment variable, with a
//! default that works on a laptop.

use clap::{Args, ValueEnum};

use crate::auth::Secret;

/// Where the database is; shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// Database URL: `sqlite://FILE` (created if missing) or `postgres://...`.
    #[arg(
        long,
        env = "VALHALLA_DATABASE_URL",
        default_value = "sqlite://valhalla.db"
    )]
    pub database_url: String,
}

/// Settings of `valhalla serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address and port to listen on.
    #[arg(long, env = "VALHALLA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    #[command(flatten)]
    pub database: DatabaseSettings,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "VALHALLA_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest bulk event upload accepted, in bytes; larger ones get 413.
    #[arg(long, env = "VALHALLA_BULK_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub bulk_max_bytes: usize,

    /// Largest blocklist import accepted, in bytes; larger ones get 413
    /// (1,000,000 lines of about 60 bytes are 60 MB).
    #[arg(long, env = "VALHALLA_IMPORT_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub import_max_bytes: usize,

    /// Longest a request may take, reading its body included, in seconds.
    #[arg(long, env = "VALHALLA_REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,

    /// Longest a blocklist import may take, in seconds: a file of millions
    /// of lines takes longer than any other request.
    #[arg(long, env = "VALHALLA_IMPORT_TIMEOUT_SECONDS", default_value_t = 3600)]
    pub import_timeout_seconds: u64,

    /// Admin token to create at first start instead of a random one (32+ characters).
    #[arg(long, env = "VALHALLA_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<Secret>,
}

impl ServeSettings {
    /// Defaults for `database_url`, e.g. for tests and the demo.
    pub fn for_database(database_url: &str, listen: &str) -> Self {
        Self {
            listen: listen.to_string(),
            database: DatabaseSettings {
                database_url: database_url.to_string(),
            },
            max_body_bytes: 1024 * 1024,
            bulk_max_bytes: 16 * 1024 * 1024,
            import_max_bytes: 256 * 1024 * 1024,
            request_timeout_seconds: 30,
            import_timeout_seconds: 3600,
            admin_token: None,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings every subcommand shares.
#[derive(Debug, Clone, Args)]
pub struct LogSettings {
    /// Log line format.
    #[arg(long, env = "VALHALLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `valhalla=debug,sqlx=warn`.
    #[arg(
        long,
        env = "VALHALLA_LOG",
        default_value = "info,sqlx=warn",
        global = true
    )]
    pub log: String,
}

pub(crate) fn parse_secret(text: &str) -> Result<Secret, String> {
    Ok(Secret::new(text))
}

/// Every environment variable Valhalla reads; others with our prefix are
/// probably typos and are warned about at start.
pub const KNOWN_VARIABLES: &[&str] = &[
    "VALHALLA_DATABASE_URL",
    "VALHALLA_LISTEN",
    "VALHALLA_MAX_BODY_BYTES",
    "VALHALLA_BULK_MAX_BYTES",
    "VALHALLA_IMPORT_MAX_BYTES",
    "VALHALLA_REQUEST_TIMEOUT_SECONDS",
    "VALHALLA_IMPORT_TIMEOUT_SECONDS",
    "VALHALLA_ADMIN_TOKEN",
    "VALHALLA_LOG_FORMAT",
    "VALHALLA_LOG",
    "VALHALLA_SHIP_URL",
    "VALHALLA_SHIP_KEY",
    "VALHALLA_SHIP_FORMAT",
    "VALHALLA_SHIP_STATE_FILE",
    "VALHALLA_SHIP_ONCE",
    "VALHALLA_SHIP_BATCH_LINES",
    "VALHALLA_SHIP_FLUSH_MILLIS",
    "VALHALLA_SHIP_PATH",
    "VALHALLA_URL",
    "VALHALLA_TOKEN",
];

/// Warns about `VALHALLA_*` variables that nothing reads.
pub fn warn_about_unknown_variables() {
    for (name, _) in
        std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value)))
    {
        if name.starts_with("VALHALLA_")
            && !KNOWN_VARIABLES.contains(&name.as_str())
            && !name.starts_with("VALHALLA_TEST_")
        {
            tracing::warn!(variable = %name, "unknown VALHALLA_ environment variable is ignored");
        }
    }
}
