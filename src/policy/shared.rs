//! The policy as the server holds it in memory, so that what every request
//! consults (the current mode's rate limit) costs no database read.
//!
//! Fed by this process's transactions as they commit, and by a follower
//! that notices the version moving when another process (a replica sharing
//! PostgreSQL, the command line) changes the policy.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::Row;

use super::model::{Policy, RateLimit};
use super::store::load_policy;
use crate::error::Result;
use crate::storage::Db;

/// How often a replica compares the stored version with its own: well
/// inside the second within which every replica must apply a change.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// The current policy, shared by cloning.
#[derive(Clone)]
pub struct SharedPolicy {
    current: Arc<RwLock<Arc<Policy>>>,
}

impl SharedPolicy {
    /// Reads the stored policy once, at start.
    pub async fn load(db: &Db) -> Result<Self> {
        let policy = load_policy(db.reader()).await?;
        Ok(Self::holding(policy))
    }

    /// A cache holding `policy`, for callers that already read it.
    pub fn holding(policy: Policy) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(policy))),
        }
    }

    /// The rate limit of the current mode.
    pub fn rate_limit(&self) -> RateLimit {
        let policy = self.read();
        *policy.settings.rate_limits.for_mode(policy.settings.mode)
    }

    /// Takes a committed policy. Versions only move forward: of two
    /// changes committed close together, the one whose caller comes back
    /// last may be the older, and must not win.
    pub fn replace(&self, policy: Policy) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if policy.version > current.version {
            *current = Arc::new(policy);
        }
    }

    /// Polls the stored version until the task is aborted and reloads the
    /// policy when it moved. Errors are logged and the next round retries.
    pub fn follow(&self, db: Db) -> tokio::task::JoinHandle<()> {
        let shared = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FOLLOW_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = shared.catch_up(&db).await {
                    tracing::warn!(%error, "cannot read the policy version");
                }
            }
        })
    }

    /// Reloads the policy if the stored version is newer than the one held.
    pub async fn catch_up(&self, db: &Db) -> Result<()> {
        let row = sqlx::query("SELECT version FROM policy WHERE id = 1")
            .fetch_optional(db.reader())
            .await?;
        let Some(row) = row else {
            return Ok(());
        };
        let stored: i64 = row.try_get("version")?;
        if stored <= self.read().version {
            return Ok(());
        }

        let policy = load_policy(db.reader()).await?;
        tracing::info!(
            policy.version = policy.version,
            policy.mode = policy.settings.mode.as_str(),
            "policy changed elsewhere; applied"
        );
        self.replace(policy);
        Ok(())
    }

    // Every write replaces the whole value, so a poisoned lock still holds
    // a consistent policy.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<Policy>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
