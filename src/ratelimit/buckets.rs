//! One token bucket per client, kept as GCRA does: a single instant per
//! client (its "theoretical arrival time") instead of a count and a refill
//! stamp. A client may send when that instant lies at most the burst
//! tolerance ahead of now; each request pushes it one emission interval
//! further. A bucket whose instant has passed is full, which is also what
//! a bucket never seen is: evicting it loses nothing.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::policy::RateLimit;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// Whose bucket a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// A credential that authenticated once: the SHA-256 digest of the
    /// secret, never the secret itself.
    Credential([u8; 32]),
    /// The peer address; IPv6 by its /64, which one subscriber usually
    /// holds whole, so that rotating addresses inside it does not help.
    Address(IpAddr),
    /// Every new address once the table is full: they share one bucket
    /// rather than grow memory.
    Overflow,
}

impl ClientKey {
    pub fn address(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey::Address(IpAddr::V6(prefix.into()))
            }
            v4 => ClientKey::Address(v4),
        }
    }

    fn is_credential(&self) -> bool {
        matches!(self, ClientKey::Credential(_))
    }
}

/// The rate limit in the units the buckets count in.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Time one request costs.
    emission_interval: i128,
    /// How far ahead of now a bucket's instant may be and still admit a
    /// request: `burst - 1` intervals, so that `burst` requests pass at once.
    tolerance: i128,
}

impl From<RateLimit> for Rate {
    fn from(limit: RateLimit) -> Self {
        let per_minute = i128::from(limit.requests_per_minute.max(1));
        let emission_interval = (60 * NANOS_PER_SECOND / per_minute).max(1);
        Rate {
            emission_interval,
            tolerance: emission_interval * i128::from(limit.burst.max(1) - 1),
        }
    }
}

/// What a charge decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted, and charged to this key.
    Admitted(ClientKey),
    /// Refused: the bucket admits the next request in this many whole
    /// seconds (at least one).
    Refused { retry_after_seconds: u64 },
}

/// Every client's bucket instant, in nanoseconds since the epoch.
#[derive(Debug)]
pub struct Buckets {
    instants: HashMap<ClientKey, i128>,
    /// Most entries held; new addresses beyond it share `Overflow`.
    capacity: usize,
}

impl Buckets {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            instants: HashMap::new(),
            capacity,
        }
    }

    /// Whether `key` has a bucket (for a credential: has authenticated).
    pub fn holds(&self, key: &ClientKey) -> bool {
        self.instants.contains_key(key)
    }

    /// Charges one request to `key` at `now` (nanoseconds), or refuses it.
    pub fn charge(&mut self, key: ClientKey, now: i128, limit: RateLimit) -> Decision {
        let rate = Rate::from(limit);
        let key = self.admissible_key(key);
        let instant = self.instants.get(&key).copied().unwrap_or(now).max(now);

        let ahead = instant - now;
        if ahead > rate.tolerance {
            let wait = ahead - rate.tolerance;
            let seconds = (wait + NANOS_PER_SECOND - 1) / NANOS_PER_SECOND;
            return Decision::Refused {
                retry_after_seconds: u64::try_from(seconds.max(1)).unwrap_or(u64::MAX),
            };
        }

        self.instants.insert(key, instant + rate.emission_interval);
        Decision::Admitted(key)
    }

    /// Gives back one request charged to `key`, when it turns out to
    /// belong to another bucket.
    pub fn refund(&mut self, key: ClientKey, now: i128, limit: RateLimit) {
        let rate = Rate::from(limit);
        if let Some(instant) = self.instants.get_mut(&key) {
            *instant = (*instant - rate.emission_interval).max(now);
        }
    }

    /// Drops buckets that are full again: addresses at once, credentials
    /// after `credential_idle` more nanoseconds, since a credential without
    /// a bucket is first charged to its address (see `RateLimiter`).
    pub fn sweep(&mut self, now: i128, credential_idle: i128) {
        self.instants.retain(|key, instant| {
            let grace = if key.is_credential() {
                credential_idle
            } else {
                0
            };
            *instant + grace > now
        });
    }

    pub fn len(&self) -> usize {
        self.instants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instants.is_empty()
    }

    /// New credentials always get a bucket: only one that authenticated
    /// gets here, so their number is bounded by the tokens and keys issued.
    fn admissible_key(&self, key: ClientKey) -> ClientKey {
        let is_new_address = !key.is_credential() && !self.instants.contains_key(&key);
        if is_new_address && self.instants.len() >= self.capacity {
            ClientKey::Overflow
        } else {
            key
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i128 = NANOS_PER_SECOND;

    fn limit(requests_per_minute: i64, burst: i64) -> RateLimit {
        RateLimit {
            requests_per_minute,
            burst,
        }
    }

    fn key(last: u8) -> ClientKey {
        ClientKey::address(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn a_burst_passes_then_the_next_request_waits_one_interval() {
        let mut buckets = Buckets::with_capacity(10);
        let now = 1_000 * SECOND;
        for _ in 0..20 {
            assert_eq!(
                buckets.charge(key(1), now, limit(120, 20)),
                Decision::Admitted(key(1))
            );
        }
        assert_eq!(
            buckets.charge(key(1), now, limit(120, 20)),
            Decision::Refused {
                retry_after_seconds: 1
            }
        );
        assert!(matches!(
            buckets.charge(key(1), now + SECOND / 2, limit(120, 20)),
            Decision::Admitted(_)
        ));
    }

    #[test]
    fn retry_after_rounds_the_wait_up_to_whole_seconds() {
        let mut buckets = Buckets::with_capacity(10);
        // One request a minute: the second waits 60 s.
        buckets.charge(key(1), 0, limit(1, 1));
        assert_eq!(
            buckets.charge(key(1), SECOND / 10, limit(1, 1)),
            Decision::Refused {
                retry_after_seconds: 60
            }
        );
    }

    #[test]
    fn clients_do_not_share_buckets() {
        let mut buckets = Buckets::with_capacity(10);
        buckets.charge(key(1), 0, limit(1, 1));
        assert!(matches!(
            buckets.charge(key(2), 0, limit(1, 1)),
            Decision::Admitted(_)
        ));
    }

    #[test]
    fn a_full_table_puts_new_addresses_in_one_shared_bucket() {
        let mut buckets = Buckets::with_capacity(2);
        buckets.charge(key(1), 0, limit(1, 1));
        buckets.charge(key(2), 0, limit(1, 1));
        assert_eq!(
            buckets.charge(key(3), 0, limit(1, 1)),
            Decision::Admitted(ClientKey::Overflow)
        );
        assert!(matches!(
            buckets.charge(key(4), 0, limit(1, 1)),
            Decision::Refused { .. }
        ));
        assert_eq!(buckets.len(), 3);
    }

    #[test]
    fn sweeping_drops_only_full_buckets_and_keeps_credentials_longer() {
        let mut buckets = Buckets::with_capacity(10);
        let credential = ClientKey::Credential([7; 32]);
        buckets.charge(key(1), 0, limit(60, 10));
        buckets.charge(credential, 0, limit(60, 10));
        buckets.charge(key(2), 0, limit(60, 10));
        buckets.charge(key(2), 0, limit(60, 10));

        buckets.sweep(SECOND, 60 * SECOND);

        assert!(!buckets.holds(&key(1)));
        assert!(buckets.holds(&key(2)));
        assert!(buckets.holds(&credential));
        buckets.sweep(62 * SECOND, 60 * SECOND);
        assert!(buckets.is_empty());
    }

    #[test]
    fn a_refund_gives_back_one_request() {
        let mut buckets = Buckets::with_capacity(10);
        buckets.charge(key(1), 0, limit(1, 1));
        buckets.refund(key(1), 0, limit(1, 1));
        assert!(matches!(
            buckets.charge(key(1), 0, limit(1, 1)),
            Decision::Admitted(_)
        ));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ClientKey::address(one), ClientKey::address(other));
        assert_eq!(ClientKey::address(mapped), key(1));
    }

    #[test]
    fn extreme_limits_neither_overflow_nor_divide_by_zero() {
        let mut buckets = Buckets::with_capacity(10);
        let huge = limit(i64::MAX, i64::MAX);
        assert!(matches!(
            buckets.charge(key(1), 0, huge),
            Decision::Admitted(_)
        ));
    }
}
