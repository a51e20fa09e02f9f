//! The command line: `serve`, `migrate`, `token …`, `block import`, `ship`
//! and `demo`. `main` only parses
//! and calls [`run`].

use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::auth::tokens::{issue_token, list_token_infos, revoke_token_named};
use crate::auth::{Role, Secret};
use crate::clock::{Clock, SystemClock};
use crate::config::{DatabaseSettings, LogFormat, LogSettings, ServeSettings};
use crate::error::{Error, Result};
use crate::storage::Db;

/// Valhalla: security orchestration — policy, blocklist, action workflow and
/// honeypot bridge in one service.
#[derive(Debug, Parser)]
#[command(name = "valhalla", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogSettings,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (creates and migrates the database on start).
    Serve(ServeSettings),
    /// Bring the database schema up to date, then exit.
    Migrate(DatabaseSettings),
    /// Manage API tokens directly in the database.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Work on the blocklist of a running Valhalla over its API.
    #[command(subcommand)]
    Block(BlockCommand),
    /// Follow a honeypot's log file and send its records to Valhalla.
    Ship(crate::shipper::ShipSettings),
    /// Start on a temporary database, replay the bundled real Cowrie log,
    /// show what the detection engine made of it, and keep serving.
    Demo {
        /// Address and port to listen on.
        #[arg(long, env = "VALHALLA_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once.
    Create {
        #[arg(long)]
        name: String,
        /// viewer, analyst, policy_owner, admin, detector or bouncer.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// List working tokens (never their secrets).
    List {
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Revoke a token by name; it stops working at once.
    Revoke {
        name: String,
        #[command(flatten)]
        database: DatabaseSettings,
    },
}

#[derive(Debug, Subcommand)]
pub enum BlockCommand {
    /// Import a blocklist file (NDJSON or CSV), streaming it to the server.
    Import(crate::blocklist::import::client::ImportSettings),
}

fn parse_role(text: &str) -> std::result::Result<Role, String> {
    Role::parse(text).ok_or_else(|| {
        "expected viewer, analyst, policy_owner, admin, detector or bouncer".to_string()
    })
}

/// Sets up logging on stderr, coloured only when stderr is a terminal so
/// that files and log pipelines get plain text.
pub fn init_logging(settings: &LogSettings) {
    use std::io::IsTerminal;

    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs a parsed command to completion.
pub async fn run(cli: Cli) -> Result<()> {
    crate::config::warn_about_unknown_variables();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Serve(settings) => serve(settings, clock).await,
        Command::Migrate(database) => {
            let db = open_database(&database).await?;
            db.close().await;
            eprintln!("the database schema is up to date");
            Ok(())
        }
        Command::Token(command) => run_token_command(command, clock).await,
        Command::Block(BlockCommand::Import(settings)) => {
            crate::blocklist::import::client::run(settings).await
        }
        Command::Demo { listen } => crate::demo::run(&listen, shutdown_signal()).await,
        Command::Ship(settings) => crate::shipper::run(settings, shutdown_signal())
            .await
            .map_err(|error| Error::Command(error.to_string())),
    }
}

async fn serve(settings: ServeSettings, clock: Arc<dyn Clock>) -> Result<()> {
    let server = crate::server::start(&settings, clock).await?;
    eprintln!("Valhalla listens on http://{}", server.address);
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    server.stop().await;
    Ok(())
}

async fn open_database(settings: &DatabaseSettings) -> Result<Db> {
    let db = Db::connect(&settings.database_url).await?;
    db.migrate().await?;
    Ok(db)
}

async fn run_token_command(command: TokenCommand, clock: Arc<dyn Clock>) -> Result<()> {
    let now = clock.now();
    match command {
        TokenCommand::Create {
            name,
            role,
            database,
        } => {
            let db = open_database(&database).await?;
            let issued = issue_token(&db, now, "cli", &name, role, Secret::generate("vh_")).await?;
            println!("{}", issued.token);
            eprintln!(
                "token `{}` ({}) created; it is shown only now",
                issued.name,
                role.as_str()
            );
            db.close().await;
        }
        TokenCommand::List { database } => {
            let db = open_database(&database).await?;
            for token in list_token_infos(&db).await? {
                let last_used = token.last_used_at.map(|at| at.to_string());
                println!(
                    "{}\t{}\t{}\t{}",
                    token.name,
                    token.role.as_str(),
                    token.created_at,
                    last_used.as_deref().unwrap_or("never")
                );
            }
            db.close().await;
        }
        TokenCommand::Revoke { name, database } => {
            let db = open_database(&database).await?;
            revoke_token_named(&db, now, "cli", &name).await?;
            eprintln!("token `{name}` revoked");
            db.close().await;
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::Internal(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
