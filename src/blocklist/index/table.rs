//! The hash tables that hold the index's addresses, networks and IPv6
//! bucket masks: std's `HashMap` with a cheaper hasher than SipHash.
//!
//! An open-addressing table with key and value in one slot was measured
//! against std's map and lost (see BENCHMARKS.md). The likely reason: std's
//! map keeps a byte of each key's hash in a control array apart from the
//! slots, small enough to stay in the processor's cache, so a probe for an
//! absent key (most probes of the networks, and every address that is not
//! blocked) need not wait for memory, where the one-slot table reads the
//! slot itself.
//!
//! Keys are attacker-chosen (a blocked address is whatever the attacker
//! used), so the hash is keyed by a per-process random seed: without it an
//! attacker could pick addresses that collide and turn every lookup into a
//! scan. With it they cannot tell which addresses collide. The keys are
//! fixed-width integers (`u32` for IPv4, `u128` for IPv6, `u64` for bucket
//! numbers), so the hash is one folded 64×64→128-bit multiply per 64 bits
//! of key and one keyed by the seed to finish.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

/// A key: an IPv4 address or network start (`u32`), an IPv6 one (`u128`),
/// or an IPv6 bucket number (`u64`).
pub(super) trait Key: Copy + Eq + Hash + Into<u128> {
    /// The key from an address held as `u128`; IPv4 and bucket keys keep
    /// the low bits, which is where the caller put them.
    fn from_point(point: u128) -> Self;
}

impl Key for u32 {
    fn from_point(point: u128) -> Self {
        point as u32
    }
}

impl Key for u64 {
    fn from_point(point: u128) -> Self {
        point as u64
    }
}

impl Key for u128 {
    fn from_point(point: u128) -> Self {
        point
    }
}

#[derive(Clone, Copy)]
pub(super) struct SeededState {
    seed: u64,
}

impl SeededState {
    pub(super) fn new() -> Self {
        let seed = getrandom::u64().expect("the operating system provides randomness");
        // Odd, so that the finishing multiply loses no bit.
        Self { seed: seed | 1 }
    }
}

impl BuildHasher for SeededState {
    type Hasher = FoldedHasher;

    fn build_hasher(&self) -> FoldedHasher {
        FoldedHasher {
            state: self.seed,
            seed: self.seed,
        }
    }
}

pub(super) struct FoldedHasher {
    state: u64,
    seed: u64,
}

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// The 128-bit product folded to 64 bits, so that every input bit reaches
/// both the high bits and the low bits of the hash.
fn fold(value: u64, key: u64) -> u64 {
    let product = u128::from(value) * u128::from(key);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for FoldedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.state = fold(self.state ^ value, MULTIPLIER);
    }

    fn write_u128(&mut self, value: u128) {
        self.write_u64(value as u64);
        self.write_u64((value >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        fold(self.state, self.seed)
    }
}

pub(super) type Table<K, V> = HashMap<K, V, SeededState>;
