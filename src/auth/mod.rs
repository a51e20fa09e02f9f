//! Who is calling, and what they may do.
//!
//! Principals present `Authorization: Bearer <token>`; the token's role maps
//! to a set of capabilities (API.md's role table). Honeypots authenticate
//! separately with their instance key (see `honeypots`).

mod cache;
mod secret;
pub mod tokens;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actions::Source;
use crate::error::{Error, Result};
use crate::ratelimit::CredentialKind;
use crate::server::AppState;

pub use cache::{CredentialCache, TokenCache};
pub use secret::{digests_match, Secret};

/// A token's role. `viewer < analyst < policy_owner < admin` each include
/// the ones before; `detector` and `bouncer` are for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Analyst,
    PolicyOwner,
    Admin,
    Detector,
    Bouncer,
}

/// What a request wants to do; each handler asks for exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Policy, actions, honeypots, events, audit, dashboard.
    ReadSecurityState,
    /// Blocklist list, check, export and decision stream.
    ReadBlocklist,
    ManageBlocks,
    /// Bulk import of blocks: a million at once is a policy decision.
    ImportBlocks,
    RequestActions,
    ResolveActions,
    ManageHoneypots,
    UpdatePolicy,
    ManageTokens,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::PolicyOwner => "policy_owner",
            Role::Admin => "admin",
            Role::Detector => "detector",
            Role::Bouncer => "bouncer",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }

    /// The role table of API.md.
    pub fn allows(self, capability: Capability) -> bool {
        use Capability::*;
        use Role::*;
        match capability {
            ReadBlocklist => true,
            ReadSecurityState => self != Bouncer,
            RequestActions => matches!(self, Analyst | PolicyOwner | Admin | Detector),
            ManageBlocks | ResolveActions | ManageHoneypots => {
                matches!(self, Analyst | PolicyOwner | Admin)
            }
            UpdatePolicy | ImportBlocks => matches!(self, PolicyOwner | Admin),
            ManageTokens => self == Admin,
        }
    }

    /// The action-request source a principal of this role speaks as; it
    /// cannot be chosen by the caller.
    pub fn action_source(self) -> Option<Source> {
        match self {
            Role::Detector => Some(Source::Heimdall),
            Role::PolicyOwner => Some(Source::Tyr),
            Role::Analyst | Role::Admin => Some(Source::Human),
            Role::Viewer | Role::Bouncer => None,
        }
    }
}

/// An authenticated caller: a token's name and role.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// Fails with 403 unless the role has `capability`.
    pub fn require(&self, capability: Capability) -> Result<()> {
        if self.role.allows(capability) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "the role `{}` may not do this",
                self.role.as_str()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = bearer_token(&parts.headers).ok_or(Error::Unauthorized(BEARER_EXPECTED))?;
        let principal = tokens::authenticate(state, &token).await?;
        crate::ratelimit::confirm(&parts.extensions, CredentialKind::Bearer);
        Ok(principal)
    }
}

/// What a 401 tells a client to send.
pub const BEARER_EXPECTED: &str = "send a valid token as `Authorization: Bearer <token>`";

/// The token of an `Authorization: Bearer` header, as it is looked up.
pub fn bearer_token(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Secret::new(token))
}
