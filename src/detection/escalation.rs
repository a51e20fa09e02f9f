//! Automatic escalation of the security mode.
//!
//! Up: when high-or-critical events within `escalation_thresholds.window_seconds`
//! (counted back from now) reach the elevated or lockdown threshold, a
//! `system` request asks for that mode. Down: once the count has stayed
//! below the current mode's threshold for `deescalation_cooldown_seconds`,
//! a `system` request steps the mode down one level.
//!
//! A mode set by a person is theirs: it is not stepped down until a person
//! sets the mode again or turns `auto_escalation_enabled` back on. The rule
//! reads the policy history: the mode is managed automatically when the
//! latest change to `mode` or `auto_escalation_enabled` was made by
//! `system`, or turned `auto_escalation_enabled` on. Requests go through the
//! action workflow, so they are audited and, unless the policy auto-approves
//! `system` in the current mode, wait for a person's approval.

use serde_json::Value;
use sqlx::Row;

use super::auto_block::ENGINE;
use crate::actions::{self, ActionPayload, ActionType, FiledRequest, NewActionRequest, Source};
use crate::error::Result;
use crate::policy::{Mode, Policy, PolicySettings};
use crate::storage::{self, Tx};
use crate::time::Timestamp;

/// The name under which escalation files requests.
pub const SYSTEM: &str = "system";

const MODE_SUBJECT: &str = "mode";

fn rank(mode: Mode) -> u8 {
    match mode {
        Mode::Normal => 0,
        Mode::Elevated => 1,
        Mode::Lockdown => 2,
    }
}

/// High and critical events that occurred within the window ending now.
async fn threat_count(tx: &mut Tx, now: Timestamp, policy: &PolicySettings) -> Result<i64> {
    let since = now.minus_seconds(policy.escalation_thresholds.window_seconds);
    let row = sqlx::query(
        "SELECT COUNT(*) AS threats FROM honeypot_events \
         WHERE threat_level IN ('high', 'critical') AND occurred_at > $1 AND occurred_at <= $2",
    )
    .bind(since.millis())
    .bind(now.millis())
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get("threats")?)
}

/// The threshold that keeps `mode` in force (none for normal).
fn threshold_of(mode: Mode, policy: &PolicySettings) -> Option<i64> {
    match mode {
        Mode::Normal => None,
        Mode::Elevated => Some(policy.escalation_thresholds.elevated),
        Mode::Lockdown => Some(policy.escalation_thresholds.lockdown),
    }
}

/// After new events: asks for a higher mode when the count calls for one.
pub async fn consider_raising(
    tx: &mut Tx,
    now: Timestamp,
    policy: &PolicySettings,
) -> Result<Option<FiledRequest>> {
    if !policy.auto_escalation_enabled {
        return Ok(None);
    }
    let count = threat_count(tx, now, policy).await?;
    let thresholds = &policy.escalation_thresholds;
    let wanted = if count >= thresholds.lockdown {
        Mode::Lockdown
    } else if count >= thresholds.elevated {
        Mode::Elevated
    } else {
        Mode::Normal
    };
    if threshold_of(policy.mode, policy).is_some_and(|threshold| count >= threshold) {
        record_hot(tx, now).await?;
    }
    if rank(wanted) <= rank(policy.mode) || actions::open_request_exists(tx, MODE_SUBJECT).await? {
        return Ok(None);
    }

    record_hot(tx, now).await?;
    let reason = format!(
        "{count} high or critical events in the last {} s reach the {} threshold",
        thresholds.window_seconds,
        wanted.as_str()
    );
    file_mode_request(tx, now, wanted, reason).await.map(Some)
}

/// On the tick: steps the mode down one level after a quiet cooldown.
pub async fn consider_lowering(
    tx: &mut Tx,
    now: Timestamp,
    policy: &Policy,
) -> Result<Option<FiledRequest>> {
    let settings = &policy.settings;
    let lower = match settings.mode {
        Mode::Normal => return Ok(None),
        Mode::Elevated => Mode::Normal,
        Mode::Lockdown => Mode::Elevated,
    };
    if !settings.auto_escalation_enabled || !managed_automatically(tx).await? {
        return Ok(None);
    }
    let count = threat_count(tx, now, settings).await?;
    if threshold_of(settings.mode, settings).is_some_and(|threshold| count >= threshold) {
        record_hot(tx, now).await?;
        return Ok(None);
    }
    let quiet_since = last_hot_at(tx)
        .await?
        .unwrap_or(policy.updated_at)
        .max(policy.updated_at);
    let cooled = quiet_since.plus_seconds(settings.deescalation_cooldown_seconds);
    if cooled.is_none_or(|at| now < at) || actions::open_request_exists(tx, MODE_SUBJECT).await? {
        return Ok(None);
    }

    let reason = format!(
        "{count} high or critical events in the last {} s, below the {} threshold for {} s",
        settings.escalation_thresholds.window_seconds,
        settings.mode.as_str(),
        settings.deescalation_cooldown_seconds
    );
    file_mode_request(tx, now, lower, reason).await.map(Some)
}

async fn file_mode_request(
    tx: &mut Tx,
    now: Timestamp,
    mode: Mode,
    reason: String,
) -> Result<FiledRequest> {
    let request = NewActionRequest {
        auto_approvable: true,
        source: Source::System,
        action_type: ActionType::SetMode,
        payload: ActionPayload::SetMode(mode),
        reason,
        requested_by: SYSTEM.to_string(),
    };
    let filed = actions::file_in_transaction(tx, now, &request).await?;
    tracing::info!(
        action_request.id = filed.request.id,
        mode = mode.as_str(),
        by = ENGINE,
        "mode change requested"
    );
    Ok(filed)
}

/// Whether the latest change to the mode, or to automatic escalation, left
/// the mode in the engine's hands (see the module documentation).
async fn managed_automatically(tx: &mut Tx) -> Result<bool> {
    // Only versions that changed one of the two fields can decide, however
    // many other changes came after them. `changes` is compact JSON keyed by
    // field, so matching the key's text finds those versions on both
    // databases; the loop below reads each one properly.
    let rows = sqlx::query(
        "SELECT changed_by, changes FROM policy_history \
         WHERE changes LIKE '%\"mode\":%' OR changes LIKE '%\"auto_escalation_enabled\":%' \
         ORDER BY version DESC LIMIT 200",
    )
    .fetch_all(&mut **tx)
    .await?;
    for row in &rows {
        let changes: Value = storage::json(row, "changes")?;
        let enabled_again = changes["auto_escalation_enabled"]["new"] == Value::Bool(true);
        if changes.get("mode").is_none() && !enabled_again {
            continue;
        }
        let changed_by: String = row.try_get("changed_by")?;
        return Ok(changed_by == SYSTEM || enabled_again);
    }
    Ok(true)
}

async fn record_hot(tx: &mut Tx, now: Timestamp) -> Result<()> {
    sqlx::query("UPDATE engine_state SET last_hot_at = $1 WHERE id = 1")
        .bind(now.millis())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn last_hot_at(tx: &mut Tx) -> Result<Option<Timestamp>> {
    let row = sqlx::query("SELECT last_hot_at FROM engine_state WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?;
    storage::timestamp_opt(&row, "last_hot_at")
}
