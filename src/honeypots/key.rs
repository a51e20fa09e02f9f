//! Honeypots authenticate with `X-HONEYPOT-KEY`, issued once per instance
//! and stored only as its digest.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sqlx::Row;

use crate::auth::digests_match;
use crate::error::{Error, Result};
use crate::ratelimit::{header_secret, CredentialKind};
use crate::server::AppState;

pub const HEADER: &str = "x-honeypot-key";

/// The active honeypot instance that sent a request.
#[derive(Debug, Clone)]
pub struct AuthenticatedHoneypot {
    pub id: i64,
}

impl FromRequestParts<AppState> for AuthenticatedHoneypot {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let key = header_secret(&parts.headers, HEADER).ok_or_else(honeypot_unauthorized)?;
        let digest = key.digest();

        let honeypot = match state.honeypot_keys.get(&digest) {
            Some(honeypot) => honeypot,
            None => {
                let honeypot = find_active_honeypot(state, &digest).await?;
                state.honeypot_keys.insert(digest, honeypot.clone());
                honeypot
            }
        };

        crate::ratelimit::confirm(&parts.extensions, CredentialKind::HoneypotKey);
        Ok(honeypot)
    }
}

/// The active instance whose key has this digest, or 401.
async fn find_active_honeypot(state: &AppState, digest: &str) -> Result<AuthenticatedHoneypot> {
    let row = sqlx::query(
        "SELECT id, key_hash FROM honeypot_instances \
         WHERE key_hash = $1 AND deactivated_at IS NULL",
    )
    .bind(digest)
    .fetch_optional(state.db.reader())
    .await?
    .ok_or_else(honeypot_unauthorized)?;

    let stored: String = row.try_get("key_hash")?;
    if !digests_match(&stored, digest) {
        return Err(honeypot_unauthorized());
    }
    Ok(AuthenticatedHoneypot {
        id: row.try_get("id")?,
    })
}

fn honeypot_unauthorized() -> Error {
    Error::Unauthorized("send an active instance's key as `X-HONEYPOT-KEY`")
}
