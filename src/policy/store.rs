//! Reading and changing the one policy row, with its history and audit.

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

use super::model::{Mode, Policy, PolicySettings};
use crate::audit::{self, Change};
use crate::blocklist;
use crate::error::{Error, FieldError, Result};
use crate::http::deserialize_value;
use crate::storage::{self, Db, Tx};
use crate::time::Timestamp;

/// Fields of the policy a client may change.
const WRITABLE_FIELDS: &[&str] = &[
    "mode",
    "auto_escalation_enabled",
    "escalation_thresholds",
    "deescalation_cooldown_seconds",
    "rate_limits",
    "auto_block",
    "auto_approve",
    "require_distinct_approver",
    "allowlist",
];

/// Creates the default policy (version 1, by `bootstrap`) on first start.
pub async fn ensure_policy_exists(db: &Db, now: Timestamp) -> Result<()> {
    let mut tx = db.begin().await?;
    let settings = PolicySettings::default();
    let document = serde_json::to_string(&settings).expect("settings serialise");
    let inserted = sqlx::query(
        "INSERT INTO policy (id, document, version, updated_at, updated_by) \
         VALUES (1, $1, 1, $2, 'bootstrap') ON CONFLICT (id) DO NOTHING",
    )
    .bind(&document)
    .bind(now.millis())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        record_history(&mut tx, 1, now, "bootstrap", &document, Map::new()).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The current policy.
pub async fn load_policy<'e, E: Executor<'e, Database = Any>>(executor: E) -> Result<Policy> {
    let row =
        sqlx::query("SELECT document, version, updated_at, updated_by FROM policy WHERE id = 1")
            .fetch_optional(executor)
            .await?
            .ok_or_else(|| Error::Unavailable("the policy has not been created yet".to_string()))?;
    policy_from_row(&row)
}

fn policy_from_row(row: &AnyRow) -> Result<Policy> {
    Ok(Policy {
        settings: storage::json(row, "document")?,
        version: row.try_get("version")?,
        updated_at: storage::timestamp(row, "updated_at")?,
        updated_by: row.try_get("updated_by")?,
    })
}

/// Applies a partial update: any subset of the writable fields, plus an
/// optional `expected_version`. Nested objects merge field by field; the
/// result is validated as a whole before anything is written.
pub async fn update_policy(
    tx: &mut Tx,
    now: Timestamp,
    actor: &str,
    mut changes: Map<String, Value>,
) -> Result<Policy> {
    let current = load_policy(&mut **tx).await?;
    check_expected_version(changes.remove("expected_version"), current.version)?;
    let settings = merged_settings(&current.settings, changes)?;

    save_policy(tx, &current, settings, now, actor).await
}

/// Sets only the mode; used by `set_mode` action requests.
pub async fn set_mode(tx: &mut Tx, now: Timestamp, actor: &str, mode: Mode) -> Result<Policy> {
    let current = load_policy(&mut **tx).await?;
    let settings = PolicySettings {
        mode,
        ..current.settings.clone()
    };
    save_policy(tx, &current, settings, now, actor).await
}

/// Checks a proposed partial update against the current policy without
/// applying it, so action requests are refused when they are filed.
pub fn validate_update(current: &PolicySettings, mut changes: Map<String, Value>) -> Result<()> {
    if let Some(expected) = changes.remove("expected_version") {
        parse_expected_version(expected)?;
    }
    merged_settings(current, changes).map(|_| ())
}

fn check_expected_version(expected: Option<Value>, current: i64) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let expected = parse_expected_version(expected)?;
    if expected != current {
        return Err(Error::Conflict(format!(
            "the policy is at version {current}, not {expected}; reload it and retry"
        )));
    }
    Ok(())
}

fn parse_expected_version(value: Value) -> Result<i64> {
    value
        .as_i64()
        .filter(|version| *version >= 1)
        .ok_or_else(|| Error::invalid_field("expected_version", "must be a positive integer"))
}

fn merged_settings(
    current: &PolicySettings,
    changes: Map<String, Value>,
) -> Result<PolicySettings> {
    let unknown: Vec<FieldError> = changes
        .keys()
        .filter(|key| !WRITABLE_FIELDS.contains(&key.as_str()))
        .map(|key| FieldError::new(key.clone(), "not a writable policy field"))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::invalid_fields(unknown));
    }

    let mut document = serde_json::to_value(current).expect("settings serialise");
    merge(&mut document, Value::Object(changes));
    let settings: PolicySettings = deserialize_value(document)?;

    let errors = settings.validate();
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(Error::invalid_fields(errors))
    }
}

/// Objects merge key by key; anything else replaces.
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge(existing, value)
                    }
                    _ => {
                        target.insert(key, value);
                    }
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

/// Writes a new version. The `WHERE version = …` makes concurrent updates
/// safe: of two writers starting from one version, the second gets 409.
async fn save_policy(
    tx: &mut Tx,
    current: &Policy,
    settings: PolicySettings,
    now: Timestamp,
    actor: &str,
) -> Result<Policy> {
    let document = serde_json::to_string(&settings).expect("settings serialise");
    let version = current.version + 1;
    let saved = sqlx::query(
        "UPDATE policy SET document = $1, version = $2, updated_at = $3, updated_by = $4 \
         WHERE id = 1 AND version = $5",
    )
    .bind(&document)
    .bind(version)
    .bind(now.millis())
    .bind(actor)
    .bind(current.version)
    .execute(&mut **tx)
    .await?;
    if saved.rows_affected() != 1 {
        return Err(Error::Conflict(
            "the policy changed meanwhile; retry".to_string(),
        ));
    }

    let changes = changed_fields(&current.settings, &settings);
    record_history(tx, version, now, actor, &document, changes.clone()).await?;
    let change = Change {
        actor,
        kind: "policy.updated",
        subject_type: "policy",
        subject_id: Some(version.to_string()),
        old_value: Some(serde_json::to_value(current).expect("policy serialises")),
        new_value: Some(Value::Object(changes)),
    };
    audit::record(tx, now, change).await?;

    let added: Vec<_> = settings
        .allowlist
        .iter()
        .filter(|network| !current.settings.allowlist.contains(network))
        .copied()
        .collect();
    blocklist::deactivate_allowlisted(tx, &added, actor, now).await?;

    tracing::info!(
        policy.version = version,
        policy.mode = settings.mode.as_str(),
        "policy updated"
    );
    Ok(Policy {
        settings,
        version,
        updated_at: now,
        updated_by: actor.to_string(),
    })
}

/// `{field: {"old": …, "new": …}}` for each top-level field that changed.
fn changed_fields(old: &PolicySettings, new: &PolicySettings) -> Map<String, Value> {
    let old = serde_json::to_value(old).expect("settings serialise");
    let new = serde_json::to_value(new).expect("settings serialise");
    let mut changes = Map::new();
    if let (Value::Object(old), Value::Object(new)) = (old, new) {
        for (field, new_value) in new {
            let old_value = old.get(&field).cloned().unwrap_or(Value::Null);
            if old_value != new_value {
                changes.insert(
                    field,
                    serde_json::json!({"old": old_value, "new": new_value}),
                );
            }
        }
    }
    changes
}

async fn record_history(
    tx: &mut Tx,
    version: i64,
    now: Timestamp,
    actor: &str,
    document: &str,
    changes: Map<String, Value>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO policy_history (version, changed_at, changed_by, document, changes) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(version)
    .bind(now.millis())
    .bind(actor)
    .bind(document)
    .bind(Value::Object(changes).to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_objects_merge_and_arrays_replace() {
        let mut target = serde_json::json!({"a": {"x": 1, "y": 2}, "list": [1, 2]});
        merge(&mut target, serde_json::json!({"a": {"y": 3}, "list": [9]}));
        assert_eq!(
            target,
            serde_json::json!({"a": {"x": 1, "y": 3}, "list": [9]})
        );
    }

    #[test]
    fn a_duration_string_names_its_field() {
        let changes = serde_json::json!({"auto_block": {"block_seconds": "3d"}});
        let Value::Object(changes) = changes else {
            unreachable!()
        };
        match merged_settings(&PolicySettings::default(), changes) {
            Err(Error::Invalid { errors, .. }) => {
                assert_eq!(errors[0].field, "auto_block.block_seconds")
            }
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_allowlist_entry_is_named_by_position() {
        let changes =
            serde_json::json!({"allowlist": ["127.0.0.0/8", "::1/128", "2001:db8:1837:5b00/56"]});
        let Value::Object(changes) = changes else {
            unreachable!()
        };
        match merged_settings(&PolicySettings::default(), changes) {
            Err(Error::Invalid { errors, .. }) => assert_eq!(errors[0].field, "allowlist[2]"),
            other => panic!("expected 422, got {other:?}"),
        }
    }
}
