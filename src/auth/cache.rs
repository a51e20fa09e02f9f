//! Recently authenticated tokens, so that a busy machine client (a proxy
//! checking every request it serves, a bouncer polling) costs no database
//! query per request.
//!
//! An entry is trusted for [`TRUSTED_FOR`]. A revocation through this
//! server evicts the token's entries at once; a revocation made elsewhere
//! (another replica, `valhalla token revoke` beside a running server)
//! takes effect here when the entry's trust runs out, within a second.
//! A request that read the token just before the revocation committed may
//! cache it after the eviction; that, too, lasts at most a second. Only
//! successes are cached: an unknown token is looked up every time, so a
//! token issued a moment ago works at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Principal;

/// How long a cached authentication stands without asking the database.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// Distinct tokens remembered at most; past it the cache starts afresh,
/// which costs one query per token and bounds memory whatever clients send.
const CAPACITY: usize = 10_000;

/// A token as authenticated from the database.
#[derive(Debug, Clone)]
pub struct KnownToken {
    pub id: i64,
    pub principal: Principal,
    /// Milliseconds, as stored; kept so that a cached token still has its
    /// `last_used_at` refreshed at the usual resolution.
    pub last_used_at: Option<i64>,
}

#[derive(Clone, Default)]
pub struct TokenCache {
    /// By token digest; the plaintext is never kept.
    entries: Arc<Mutex<HashMap<String, (KnownToken, Instant)>>>,
}

impl TokenCache {
    /// The token of a digest authenticated less than a second ago.
    pub fn get(&self, digest: &str) -> Option<KnownToken> {
        let entries = self.lock();
        let (token, at) = entries.get(digest)?;
        (at.elapsed() < TRUSTED_FOR).then(|| token.clone())
    }

    /// Remembers a token just read from the database.
    pub fn insert(&self, digest: String, token: KnownToken) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(digest, (token, Instant::now()));
    }

    /// Notes a new `last_used_at` without extending the entry's trust.
    pub fn note_use(&self, digest: &str, at: i64) {
        if let Some((token, _)) = self.lock().get_mut(digest) {
            token.last_used_at = Some(at);
        }
    }

    /// Forgets every entry of the token named `name`.
    pub fn evict_named(&self, name: &str) {
        self.lock()
            .retain(|_, (token, _)| token.principal.name != name);
    }

    // Every critical section is one map operation, so a poisoned lock
    // still guards a consistent map.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (KnownToken, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn principal(name: &str) -> KnownToken {
        KnownToken {
            id: 1,
            principal: Principal {
                name: name.to_string(),
                role: Role::Bouncer,
            },
            last_used_at: None,
        }
    }

    #[test]
    fn a_cached_token_is_found_until_evicted() {
        let cache = TokenCache::default();
        cache.insert("digest-a".to_string(), principal("edge"));
        cache.insert("digest-b".to_string(), principal("other"));

        let found = cache.get("digest-a").map(|token| token.principal.name);
        assert_eq!(found, Some("edge".to_string()));
        cache.evict_named("edge");
        assert!(cache.get("digest-a").is_none());
        assert!(cache.get("digest-b").is_some());
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let cache = TokenCache::default();
        for n in 0..CAPACITY + 5 {
            cache.insert(format!("digest-{n}"), principal("edge"));
        }
        assert!(cache.lock().len() <= CAPACITY);
    }
}
