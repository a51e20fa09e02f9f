//! Recently authenticated credentials (API tokens, honeypot keys), so that
//! a busy machine client (a proxy checking every request it serves, a
//! bouncer polling, a honeypot posting events one by one) costs no
//! database query per request.
//!
//! An entry is trusted for [`TRUSTED_FOR`]. A revocation through this
//! server (a token revoked, a honeypot deactivated or its key rotated)
//! evicts its entries at once; one made elsewhere (another replica,
//! `valhalla token revoke` beside a running server) takes effect here when
//! the entry's trust runs out, within a second. A request that read the
//! credential just before the revocation committed may cache it after the
//! eviction; that, too, lasts at most a second. Only successes are cached:
//! an unknown credential is looked up every time, so one issued a moment
//! ago works at once.

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

/// Credentials by digest; the plaintext is never kept.
pub struct CredentialCache<T> {
    entries: Arc<Mutex<HashMap<String, (T, Instant)>>>,
}

pub type TokenCache = CredentialCache<KnownToken>;

// Derived `Clone` and `Default` would demand them of `T` too.
impl<T> Clone for CredentialCache<T> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
        }
    }
}

impl<T> Default for CredentialCache<T> {
    fn default() -> Self {
        Self {
            entries: Arc::default(),
        }
    }
}

impl<T: Clone> CredentialCache<T> {
    /// What a digest authenticated as less than a second ago.
    pub fn get(&self, digest: &str) -> Option<T> {
        let entries = self.lock();
        let (token, at) = entries.get(digest)?;
        (at.elapsed() < TRUSTED_FOR).then(|| token.clone())
    }

    /// Remembers a credential just read from the database.
    pub fn insert(&self, digest: String, token: T) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(digest, (token, Instant::now()));
    }

    /// Changes a cached entry without extending its trust.
    pub fn update(&self, digest: &str, change: impl FnOnce(&mut T)) {
        if let Some((entry, _)) = self.lock().get_mut(digest) {
            change(entry);
        }
    }

    /// Forgets every entry for which `doomed` holds.
    pub fn evict(&self, doomed: impl Fn(&T) -> bool) {
        self.lock().retain(|_, (entry, _)| !doomed(entry));
    }

    // Every critical section is one map operation, so a poisoned lock
    // still guards a consistent map.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (T, Instant)>> {
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
        cache.evict(|token| token.principal.name == "edge");
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
