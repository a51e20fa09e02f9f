//! First start: the default policy, and an admin token if there is none.

use crate::auth::tokens::{any_token_exists, issue_token};
use crate::auth::{Role, Secret};
use crate::error::{Error, Result};
use crate::policy::ensure_policy_exists;
use crate::storage::Db;
use crate::time::Timestamp;

/// The name of the token issued at first start.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// Creates the default policy and, when no token works yet, an admin token:
/// the one given (`VALHALLA_ADMIN_TOKEN`) or a fresh one printed once on
/// stderr.
/// `listen` is the address the server is about to listen on, for the
/// example printed with a new admin token.
pub async fn prepare(
    db: &Db,
    now: Timestamp,
    admin_token: Option<Secret>,
    listen: &str,
) -> Result<()> {
    ensure_policy_exists(db, now).await?;
    if any_token_exists(db).await? {
        return Ok(());
    }

    let given = admin_token.is_some();
    let secret = match admin_token {
        Some(secret) if secret.expose().len() < 32 => {
            return Err(Error::Internal(
                "VALHALLA_ADMIN_TOKEN must be at least 32 characters (128 bits of randomness)"
                    .to_string(),
            ))
        }
        Some(secret) => secret,
        None => Secret::generate("vh_"),
    };
    issue_token(
        db,
        now,
        "bootstrap",
        BOOTSTRAP_ADMIN,
        Role::Admin,
        secret.clone(),
    )
    .await?;

    if given {
        tracing::info!("issued the admin token given in VALHALLA_ADMIN_TOKEN");
    } else {
        // Printed, not logged: log pipelines keep lines; this must be seen once.
        eprintln!(
            "\nNo API token existed, so an admin token was created. It is shown only now:\n\n    \
             {}\n\nUse it as `Authorization: Bearer <token>`, e.g.\n    \
             curl -H 'Authorization: Bearer {}' http://{listen}/security/dashboard\n",
            secret.expose(),
            secret.expose()
        );
    }
    Ok(())
}
