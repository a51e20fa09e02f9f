//! An in-memory index of the active blocklist, so that a check is a few
//! table probes instead of a query.
//!
//! Shape: exact tables for `ip` (one per family, keyed by `u32` or
//! `u128`), `user` and `api_key`, and for `cidr` one table per prefix
//! length, keyed by the network's first address. A check of an address must
//! return *every* containing network, not only the longest, so it probes
//! each prefix length that can hold one. Which lengths those are is known
//! cheaply: the address space is cut into buckets (/16 for IPv4, /32 for
//! IPv6), and each bucket keeps a bit mask of the lengths of the networks
//! that cover any of it. A network marks every bucket it covers, up to 256
//! of them for IPv4 (/8 and longer) and 16 for IPv6 (/28 and longer). An
//! IPv6 /24–/27 marks the one /24 it lies in, in a mask table of its own:
//! probing four lengths' tables on every IPv6 check instead cost about 40
//! ns when such networks exist (measured with lengths spread evenly). The
//! rare shorter ones are probed on every check. A check therefore costs the
//! address's probe, its bucket's, and one per length that can match there
//! (usually none or one), each one or two cache lines, whatever the table
//! size; a probe for an absent key reads only the table's control bytes,
//! which stay in the processor's cache (see `table.rs`). An IPv6 bucket
//! covered by a single network (nearly all of them in the benchmark, whose
//! ranges are scattered; a list that crowds many ranges into one /32 gains
//! less) keeps that network whole in its own slot, so a check inside it reads
//! no length's table: in alternating benchmark runs that took a check
//! inside an IPv6 network from 265–410 ns to 170–230 ns, and the median of
//! all checks down by about 15 ns (see BENCHMARKS.md). IPv4's buckets keep
//! only masks: a network per bucket would grow their flat array ninefold,
//! out of the cache that makes it cheap.
//! A binary trie was the alternative; it walks up to 32 (IPv4) or 128
//! (IPv6) dependent nodes, one cache miss each, and misses the 1 µs p99 on
//! a million entries. `benches/blocklist_index.rs` measures the choice.
//!
//! Each entry keeps only the block's id and expiry (16 bytes), so a million
//! entries fit in tens of megabytes; the check endpoint loads the matching
//! blocks' full records by id, which costs one query only when something
//! matches. Expiry is compared at lookup time, so an expired entry never
//! matches even before the sweep removes it.
//!
//! Changes reach the index after their transaction commits (see
//! `BlockChanges` in `shared.rs`), so a rolled-back transaction never
//! touches it; changes other processes commit arrive through the change
//! log, which `shared.rs` follows. Two
//! commits may be applied in the other order, so application is
//! order-tolerant: a block's expiry only moves later, a newer block (larger
//! id) of the same entity is never replaced by an older one, and a removed
//! id is remembered for a while so that a late extension cannot revive it.

mod table;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU8;

use self::table::{Key, SeededState, Table};
use super::entity::{canonical_ip, Entity, Network};
use crate::time::Timestamp;

/// How many removed ids are remembered to refuse a late re-insertion.
const REMEMBERED_REMOVALS: usize = 4096;

/// A live entry: the block's id and the instant it stops matching
/// (`i64::MAX` for a permanent block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: i64,
    expires_at: i64,
}

impl Entry {
    fn new(id: i64, expires_at: Option<Timestamp>) -> Self {
        let expires_at = expires_at.map_or(i64::MAX, Timestamp::millis);
        Self { id, expires_at }
    }

    fn is_live(&self, now: i64) -> bool {
        self.expires_at > now
    }
}

/// What covers one IPv6 bucket, as its slot in the bucket table holds it.
/// Most buckets are covered by a single network (a list's IPv6 ranges are
/// few among 2^32 buckets), so that network is kept here whole: a check of
/// an address inside it then reads this slot and no length's table, one
/// trip to memory less. When a second network covers the bucket, the slot
/// holds the mask of the lengths to probe instead.
#[derive(Debug, Clone, Copy)]
enum Cover {
    One(Inline),
    /// Bit `length - shortest_marked` set when networks of that length
    /// cover (part of) the bucket; two halves, so that the slot needs no
    /// 16-byte alignment and stays 40 bytes.
    Many([u64; 2]),
}

/// A network kept in a bucket's slot. Only the low 96 bits of its start are
/// stored: a network longer than the bucket lies inside it, so its top 32
/// bits are the bucket's; a shorter one contains the whole bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inline {
    low: u64,
    middle: u32,
    /// Never zero (only networks of `shortest_marked` or longer mark
    /// buckets), which leaves `Cover` a spare value for its tag.
    length: NonZeroU8,
    entry: Entry,
}

impl Inline {
    fn new(start: u128, length: u32, entry: Entry) -> Self {
        Self {
            low: start as u64,
            middle: (start >> 64) as u32,
            length: NonZeroU8::new(length as u8).expect("a marked network's length"),
            entry,
        }
    }

    /// The start's low 96 bits.
    fn low_bits(&self) -> u128 {
        (u128::from(self.middle) << 64) | u128::from(self.low)
    }

    fn is(&self, start: u128, length: u32) -> bool {
        u32::from(self.length.get()) == length && self.low_bits() == start & LOW_96
    }
}

const LOW_96: u128 = (1 << 96) - 1;

// The bucket table's slot, key included, stays 40 bytes (see `Cover::Many`).
const _: () = assert!(std::mem::size_of::<(u64, Cover)>() == 40);

fn split_mask(mask: u128) -> [u64; 2] {
    [mask as u64, (mask >> 64) as u64]
}

fn join_mask(halves: [u64; 2]) -> u128 {
    (u128::from(halves[1]) << 64) | u128::from(halves[0])
}

/// What a check learns from its address's bucket.
#[derive(Clone, Copy)]
enum Covered {
    /// The lengths to probe, as in [`Cover::Many`].
    Lengths(u128),
    One(Inline),
}

/// Each bucket's cover: a flat array of masks when buckets are few (IPv4's
/// 65,536 masks of 25 lengths take 256 KiB and stay in the processor's
/// cache, so that read costs no trip to memory; one network per bucket
/// inline would make it 2.3 MiB), a table of the covered ones otherwise
/// (IPv6), which keeps a bucket's only network inline (see [`Cover`]).
enum Buckets {
    Flat(Vec<u32>),
    Sparse(Table<u64, Cover>),
}

impl Buckets {
    fn new(bucket_bits: u32, lengths: u32, state: SeededState) -> Self {
        if bucket_bits <= 16 && lengths <= 32 {
            Buckets::Flat(vec![0; 1 << bucket_bits])
        } else {
            Buckets::Sparse(Table::with_hasher(state))
        }
    }

    /// What a check learns from a sparse bucket's slot.
    fn covered(cover: Option<&Cover>) -> Covered {
        match cover {
            None => Covered::Lengths(0),
            Some(Cover::Many(mask)) => Covered::Lengths(join_mask(*mask)),
            Some(Cover::One(inline)) => Covered::One(*inline),
        }
    }

    /// Records that `inline`'s network, of mask bit `bit`, covers `bucket`.
    fn mark(&mut self, bucket: u64, bit: u128, inline: Inline, shortest_marked: u32) {
        use std::collections::hash_map::Entry as MapEntry;
        match self {
            Buckets::Flat(masks) => masks[bucket as usize] |= bit as u32,
            Buckets::Sparse(covers) => match covers.entry(bucket) {
                MapEntry::Vacant(vacant) => {
                    vacant.insert(Cover::One(inline));
                }
                MapEntry::Occupied(mut occupied) => {
                    let mask = match *occupied.get() {
                        Cover::One(one) => 1u128 << (u32::from(one.length.get()) - shortest_marked),
                        Cover::Many(mask) => join_mask(mask),
                    };
                    occupied.insert(Cover::Many(split_mask(mask | bit)));
                }
            },
        }
    }

    /// Records that no network of mask bit `bit` covers `bucket` any more.
    /// A bucket that has held two networks keeps a mask until it empties,
    /// even when one network is left: which one it is cannot be told
    /// without scanning its length's table. A check there costs the length's
    /// probe, as it did before networks were kept inline.
    fn unmark(&mut self, bucket: u64, bit: u128) {
        match self {
            Buckets::Flat(masks) => masks[bucket as usize] &= !(bit as u32),
            Buckets::Sparse(covers) => {
                let Some(cover) = covers.get_mut(&bucket) else {
                    return;
                };
                let mask = match cover {
                    Cover::One(_) => 0,
                    Cover::Many(mask) => join_mask(*mask) & !bit,
                };
                if mask == 0 {
                    covers.remove(&bucket);
                } else {
                    *cover = Cover::Many(split_mask(mask));
                }
            }
        }
    }

    /// Gives the inline copy of a network its new entry.
    fn refresh(&mut self, bucket: u64, start: u128, length: u32, entry: Entry) {
        if let Buckets::Sparse(covers) = self {
            if let Some(Cover::One(one)) = covers.get_mut(&bucket) {
                if one.is(start, length) {
                    one.entry = entry;
                }
            }
        }
    }

    #[cfg(test)]
    fn marked(&self) -> usize {
        match self {
            Buckets::Flat(masks) => masks.iter().filter(|mask| **mask != 0).count(),
            Buckets::Sparse(covers) => covers.len(),
        }
    }
}

/// The `cidr` blocks of one address family, keyed by `K` (`u32` for IPv4,
/// `u128` for IPv6). Addresses travel as `u128` and are narrowed to `K`
/// only as table keys.
struct Networks<K> {
    /// 32 or 128.
    bits: u32,
    /// The length of a bucket's prefix: /16 for IPv4, /32 for IPv6.
    bucket_bits: u32,
    /// Networks of this length or longer mark each bucket they cover; a
    /// network of exactly this length covers 256 of them (IPv4) or 16
    /// (IPv6), a longer one fewer, down to one.
    shortest_marked: u32,
    /// Networks from this length to under `shortest_marked` lie in one
    /// coarse bucket (a /24 for IPv6) and mark it in `coarse`; shorter ones
    /// are probed on every check. IPv4 has no coarse level (the same value
    /// as `shortest_marked`).
    coarse_bits: u32,
    /// Bit `length - coarse_bits` set when networks of that length lie in
    /// the coarse bucket.
    coarse: Table<u64, u32>,
    /// Indexed by prefix length; keyed by the network's first address.
    by_length: Vec<Table<K, Entry>>,
    /// How many networks of each length under `coarse_bits` there are.
    unmarked_counts: Vec<u32>,
    /// What covers each bucket: bit `length - shortest_marked` of its mask
    /// set when networks of that length cover (part of) it, or for IPv6
    /// the bucket's only network.
    buckets: Buckets,
    /// How many networks of a length cover a bucket or coarse bucket, keyed
    /// `bucket << 8 | length` (the length tells the two kinds apart).
    bucket_counts: HashMap<u64, u32>,
}

impl<K: Key> Networks<K> {
    /// `shortest_marked` bounds what one network costs: one of that length
    /// marks `2^(bucket_bits - shortest_marked)` buckets, each a count and a
    /// bucket entry (about 70 bytes when the buckets are sparse).
    fn new(
        bits: u32,
        bucket_bits: u32,
        coarse_bits: u32,
        shortest_marked: u32,
        state: SeededState,
    ) -> Self {
        Self {
            bits,
            bucket_bits,
            shortest_marked,
            coarse_bits,
            coarse: Table::with_hasher(state),
            by_length: (0..=bits).map(|_| Table::with_hasher(state)).collect(),
            unmarked_counts: vec![0; coarse_bits as usize],
            buckets: Buckets::new(bucket_bits, bits - shortest_marked + 1, state),
            bucket_counts: HashMap::new(),
        }
    }

    fn mask(&self, point: u128, length: u32) -> u128 {
        if length == 0 {
            0
        } else {
            point & (u128::MAX << (self.bits - length))
        }
    }

    fn bucket(&self, point: u128) -> u64 {
        (point >> (self.bits - self.bucket_bits)) as u64
    }

    /// The coarse bucket's key in `bucket_counts`, for a network of `length`.
    fn coarse_key(&self, start: u128, length: u32) -> (u64, u64) {
        let bucket = (start >> (self.bits - self.coarse_bits)) as u64;
        (bucket, (bucket << 8) | u64::from(length))
    }

    /// The buckets a marked network covers.
    fn buckets(&self, start: u128, length: u32) -> std::ops::Range<u64> {
        let first = self.bucket(start);
        let count = 1u64 << self.bucket_bits.saturating_sub(length);
        first..first + count
    }

    fn get(&self, start: u128, length: u32) -> Option<Entry> {
        self.by_length[length as usize]
            .get(&K::from_point(start))
            .copied()
    }

    /// Adds the network, or gives it a new entry (and so its inline copies).
    fn insert(&mut self, start: u128, length: u32, entry: Entry) {
        let replaced = self.by_length[length as usize]
            .insert(K::from_point(start), entry)
            .is_some();
        if length < self.coarse_bits {
            self.unmarked_counts[length as usize] += u32::from(!replaced);
            return;
        }
        if length < self.shortest_marked {
            if !replaced {
                let (bucket, key) = self.coarse_key(start, length);
                *self.bucket_counts.entry(key).or_insert(0) += 1;
                *self.coarse.entry(bucket).or_insert(0) |= 1 << (length - self.coarse_bits);
            }
            return;
        }
        let bit = 1u128 << (length - self.shortest_marked);
        let inline = Inline::new(start, length, entry);
        for bucket in self.buckets(start, length) {
            if replaced {
                self.buckets.refresh(bucket, start, length, entry);
                continue;
            }
            *self
                .bucket_counts
                .entry((bucket << 8) | u64::from(length))
                .or_insert(0) += 1;
            self.buckets.mark(bucket, bit, inline, self.shortest_marked);
        }
    }

    fn remove(&mut self, start: u128, length: u32) {
        if self.by_length[length as usize]
            .remove(&K::from_point(start))
            .is_none()
        {
            return;
        }
        if length < self.coarse_bits {
            self.unmarked_counts[length as usize] -= 1;
            return;
        }
        if length < self.shortest_marked {
            self.remove_coarse(start, length);
            return;
        }
        for bucket in self.buckets(start, length) {
            let key = (bucket << 8) | u64::from(length);
            let count = self.bucket_counts.get_mut(&key).expect("counted on insert");
            *count -= 1;
            if *count > 0 {
                continue;
            }
            self.bucket_counts.remove(&key);
            let bit = 1u128 << (length - self.shortest_marked);
            self.buckets.unmark(bucket, bit);
        }
    }

    fn remove_coarse(&mut self, start: u128, length: u32) {
        let (bucket, key) = self.coarse_key(start, length);
        let count = self.bucket_counts.get_mut(&key).expect("counted on insert");
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.bucket_counts.remove(&key);
        let mask = self.coarse.get_mut(&bucket).expect("marked on insert");
        *mask &= !(1 << (length - self.coarse_bits));
        if *mask == 0 {
            self.coarse.remove(&bucket);
        }
    }

    /// Every live network containing `point`, longest first; `covered` is
    /// what its bucket holds (see [`matching_address`]).
    fn matching(&self, point: u128, covered: Covered, now: i64, found: &mut Vec<i64>) {
        let mut lengths = match covered {
            Covered::Lengths(lengths) => lengths,
            Covered::One(one) => {
                let length = u32::from(one.length.get());
                let inside = length <= self.bucket_bits
                    || self.mask(point, length) & LOW_96 == one.low_bits();
                if inside && one.entry.is_live(now) {
                    found.push(one.entry.id);
                }
                0
            }
        };
        while lengths != 0 {
            let bit = 127 - lengths.leading_zeros();
            lengths &= !(1u128 << bit);
            self.probe(point, self.shortest_marked + bit, now, found);
        }
        if !self.coarse.is_empty() {
            let (bucket, _) = self.coarse_key(point, 0);
            let mut lengths = self.coarse.get(&bucket).copied().unwrap_or(0);
            while lengths != 0 {
                let bit = 31 - lengths.leading_zeros();
                lengths &= !(1 << bit);
                self.probe(point, self.coarse_bits + bit, now, found);
            }
        }
        for length in (0..self.coarse_bits).rev() {
            if self.unmarked_counts[length as usize] > 0 {
                self.probe(point, length, now, found);
            }
        }
    }

    fn probe(&self, point: u128, length: u32, now: i64, found: &mut Vec<i64>) {
        let start = K::from_point(self.mask(point, length));
        if let Some(entry) = self.by_length[length as usize].get(&start) {
            if entry.is_live(now) {
                found.push(entry.id);
            }
        }
    }

    /// Removes every network that shares an address with `[start, end]`;
    /// returns the removed ids. A scan: it runs when the allowlist grows.
    fn remove_overlapping(&mut self, start: u128, end: u128) -> Vec<i64> {
        let mut doomed = Vec::new();
        for (length, networks) in self.by_length.iter().enumerate() {
            for (first, entry) in networks {
                let first: u128 = (*first).into();
                let last = first | (!self.mask(u128::MAX, length as u32) & self.family_mask());
                if first <= end && start <= last {
                    doomed.push((first, length as u32, entry.id));
                }
            }
        }
        for (first, length, _) in &doomed {
            self.remove(*first, *length);
        }
        doomed.into_iter().map(|(_, _, id)| id).collect()
    }

    fn family_mask(&self) -> u128 {
        if self.bits == 128 {
            u128::MAX
        } else {
            (1u128 << self.bits) - 1
        }
    }

    fn len(&self) -> usize {
        self.by_length.iter().map(HashMap::len).sum()
    }
}

/// Removes the addresses within `[start, end]`; returns their ids.
fn remove_addresses<K: Key>(addresses: &mut Table<K, Entry>, start: u128, end: u128) -> Vec<i64> {
    let mut removed = Vec::new();
    addresses.retain(|address, entry| {
        let inside = (start..=end).contains(&(*address).into());
        if inside {
            removed.push(entry.id);
        }
        !inside
    });
    removed
}

/// Where an entity's entry lives.
enum Slot<'a> {
    AddressV4(&'a mut Table<u32, Entry>, u32),
    AddressV6(&'a mut Table<u128, Entry>, u128),
    NetworkV4(&'a mut Networks<u32>, u128, u32),
    NetworkV6(&'a mut Networks<u128>, u128, u32),
    Name(&'a mut HashMap<String, Entry>, &'a str),
}

impl Slot<'_> {
    fn get(&self) -> Option<Entry> {
        match self {
            Slot::AddressV4(table, key) => table.get(key).copied(),
            Slot::AddressV6(table, key) => table.get(key).copied(),
            Slot::NetworkV4(networks, start, length) => networks.get(*start, *length),
            Slot::NetworkV6(networks, start, length) => networks.get(*start, *length),
            Slot::Name(map, name) => map.get(*name).copied(),
        }
    }

    /// Sets the entity's entry, added or replaced: through the networks'
    /// own method, which keeps a network's inline copies current.
    fn insert(&mut self, entry: Entry) {
        match self {
            Slot::AddressV4(table, key) => {
                table.insert(*key, entry);
            }
            Slot::AddressV6(table, key) => {
                table.insert(*key, entry);
            }
            Slot::NetworkV4(networks, start, length) => networks.insert(*start, *length, entry),
            Slot::NetworkV6(networks, start, length) => networks.insert(*start, *length, entry),
            Slot::Name(map, name) => {
                map.insert(name.to_string(), entry);
            }
        }
    }

    fn remove(&mut self) {
        match self {
            Slot::AddressV4(table, key) => {
                table.remove(key);
            }
            Slot::AddressV6(table, key) => {
                table.remove(key);
            }
            Slot::NetworkV4(networks, start, length) => networks.remove(*start, *length),
            Slot::NetworkV6(networks, start, length) => networks.remove(*start, *length),
            Slot::Name(map, name) => {
                map.remove(*name);
            }
        }
    }
}

/// The active blocklist in memory. Not synchronised itself: the server
/// holds it in a `SharedIndex`.
pub struct BlocklistIndex {
    ipv4: Table<u32, Entry>,
    ipv6: Table<u128, Entry>,
    networks_v4: Networks<u32>,
    networks_v6: Networks<u128>,
    users: HashMap<String, Entry>,
    api_keys: HashMap<String, Entry>,
    removed: HashSet<i64>,
    removed_order: VecDeque<i64>,
}

impl Default for BlocklistIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl BlocklistIndex {
    pub fn new() -> Self {
        // One seed for the address tables: see `table.rs` for why it is
        // random. Names keep std's maps and hasher (SipHash, keyed too).
        let state = SeededState::new();
        Self {
            ipv4: Table::with_hasher(state),
            ipv6: Table::with_hasher(state),
            // IPv4's buckets are 65,536 at most, whatever the networks: a /8
            // may mark 256 of them. IPv6 has 2^32 buckets, so each network
            // marking 256 (a /24) cost 17 KB and a list of such ranges
            // gigabytes; from /28 a network marks 16 at most (about 1 KB).
            // A /24–/27 lies in one /24 and marks it in a table of its own,
            // which a check probes once instead of four lengths' tables; the
            // rare shorter ones are probed on every check.
            networks_v4: Networks::new(32, 16, 8, 8, state),
            networks_v6: Networks::new(128, 32, 24, 28, state),
            users: HashMap::new(),
            api_keys: HashMap::new(),
            removed: HashSet::new(),
            removed_order: VecDeque::new(),
        }
    }

    /// Entries held, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.ipv4.len()
            + self.ipv6.len()
            + self.networks_v4.len()
            + self.networks_v6.len()
            + self.users.len()
            + self.api_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot<'a>(&'a mut self, entity: &'a Entity) -> Slot<'a> {
        match entity {
            Entity::Ip(address) => match canonical_ip(*address) {
                IpAddr::V4(v4) => Slot::AddressV4(&mut self.ipv4, u32::from(v4)),
                IpAddr::V6(v6) => Slot::AddressV6(&mut self.ipv6, u128::from(v6)),
            },
            Entity::Cidr(network) => {
                let (start, length) = start_and_length(network);
                match network.family() {
                    4 => Slot::NetworkV4(&mut self.networks_v4, start, length),
                    _ => Slot::NetworkV6(&mut self.networks_v6, start, length),
                }
            }
            Entity::User(name) => Slot::Name(&mut self.users, name),
            Entity::ApiKey(name) => Slot::Name(&mut self.api_keys, name),
        }
    }

    /// Records that block `id` of `entity` is active until `expires_at`.
    /// The entity's entry keeps the newest block (largest id); for the same
    /// block the later expiry wins, permanent above all.
    pub fn upsert(&mut self, id: i64, entity: &Entity, expires_at: Option<Timestamp>) {
        if self.removed.contains(&id) {
            return;
        }
        let entry = Entry::new(id, expires_at);
        let mut slot = self.slot(entity);
        match slot.get() {
            Some(current) if current.id == id => {
                if entry.expires_at > current.expires_at {
                    slot.insert(entry);
                }
            }
            Some(current) if current.id > id => {}
            _ => slot.insert(entry),
        }
    }

    /// Forgets block `id` of `entity`, if it is the entity's entry.
    pub fn remove(&mut self, id: i64, entity: &Entity) {
        let mut slot = self.slot(entity);
        if slot.get().is_some_and(|current| current.id == id) {
            slot.remove();
        }
        self.remember_removal(id);
    }

    fn remember_removal(&mut self, id: i64) {
        if !self.removed.insert(id) {
            return;
        }
        self.removed_order.push_back(id);
        if self.removed_order.len() > REMEMBERED_REMOVALS {
            let oldest = self.removed_order.pop_front().expect("not empty");
            self.removed.remove(&oldest);
        }
    }

    /// Forgets every `ip` and `cidr` entry that shares an address with
    /// `network`: the blocks that growing the allowlist deactivates.
    pub fn remove_overlapping(&mut self, network: &Network) {
        let (start, end) = network.range();
        let mut removed = match network.family() {
            4 => {
                let mut ids = self.networks_v4.remove_overlapping(start, end);
                ids.extend(remove_addresses(&mut self.ipv4, start, end));
                ids
            }
            _ => {
                let mut ids = self.networks_v6.remove_overlapping(start, end);
                ids.extend(remove_addresses(&mut self.ipv6, start, end));
                ids
            }
        };
        for id in removed.drain(..) {
            self.remember_removal(id);
        }
    }

    /// Whether the index holds an entry for exactly `entity`, expired or
    /// not: the import asks the database only about such entities.
    pub fn holds(&self, entity: &Entity) -> bool {
        match entity {
            Entity::Ip(address) => match canonical_ip(*address) {
                IpAddr::V4(v4) => self.ipv4.contains_key(&u32::from(v4)),
                IpAddr::V6(v6) => self.ipv6.contains_key(&u128::from(v6)),
            },
            Entity::Cidr(network) => {
                let (start, length) = start_and_length(network);
                match network.family() {
                    4 => self.networks_v4.get(start, length).is_some(),
                    _ => self.networks_v6.get(start, length).is_some(),
                }
            }
            Entity::User(name) => self.users.contains_key(name),
            Entity::ApiKey(name) => self.api_keys.contains_key(name),
        }
    }

    /// Ids of the blocks matching `entity` at `now`: for an address, its own
    /// `ip` block and every `cidr` block containing it; otherwise the
    /// entity's own block.
    pub fn matching(&self, entity: &Entity, now: Timestamp) -> Vec<i64> {
        let mut found = Vec::new();
        self.matching_into(entity, now, &mut found);
        found
    }

    /// As [`Self::matching`], appending to `found`: a caller checking many
    /// entities reuses one buffer instead of allocating per check.
    pub fn matching_into(&self, entity: &Entity, now: Timestamp, found: &mut Vec<i64>) {
        let now = now.millis();
        let exact = match entity {
            Entity::Ip(address) => {
                match canonical_ip(*address) {
                    IpAddr::V4(v4) => {
                        matching_address(u32::from(v4), &self.ipv4, &self.networks_v4, now, found)
                    }
                    IpAddr::V6(v6) => {
                        matching_address(u128::from(v6), &self.ipv6, &self.networks_v6, now, found)
                    }
                }
                return;
            }
            Entity::Cidr(network) => {
                let (start, length) = start_and_length(network);
                match network.family() {
                    4 => self.networks_v4.get(start, length),
                    _ => self.networks_v6.get(start, length),
                }
            }
            Entity::User(name) => self.users.get(name.as_str()).copied(),
            Entity::ApiKey(name) => self.api_keys.get(name.as_str()).copied(),
        };
        found.extend(
            exact
                .filter(|entry| entry.is_live(now))
                .map(|entry| entry.id),
        );
    }
}

/// An address's own block and its containing networks. The bucket is read
/// first: that read and the address's probe then wait for memory together,
/// instead of one after a branch on the other. Each kind of bucket storage
/// has its own arm so that IPv4 carries a plain mask: with one shared read
/// returning [`Covered`], IPv4's checks took 30–60 ns longer (measured).
fn matching_address<K: Key>(
    address: K,
    addresses: &Table<K, Entry>,
    networks: &Networks<K>,
    now: i64,
    found: &mut Vec<i64>,
) {
    let point: u128 = address.into();
    let bucket = networks.bucket(point);
    let covered = match &networks.buckets {
        Buckets::Flat(masks) => {
            let lengths = u128::from(masks[bucket as usize]);
            probe_address(address, addresses, now, found);
            Covered::Lengths(lengths)
        }
        Buckets::Sparse(covers) => {
            let covered = Buckets::covered(covers.get(&bucket));
            probe_address(address, addresses, now, found);
            covered
        }
    };
    networks.matching(point, covered, now, found);
}

fn probe_address<K: Key>(address: K, addresses: &Table<K, Entry>, now: i64, found: &mut Vec<i64>) {
    if let Some(entry) = addresses.get(&address) {
        if entry.is_live(now) {
            found.push(entry.id);
        }
    }
}

/// A network's first address and prefix length, from its range.
fn start_and_length(network: &Network) -> (u128, u32) {
    let bits = if network.family() == 4 { 32 } else { 128 };
    let (start, end) = network.range();
    let host_bits = 128 - (end - start).leading_zeros();
    (start, bits - host_bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocklist::EntityType;

    fn entity(kind: EntityType, value: &str) -> Entity {
        Entity::parse(kind, value).unwrap()
    }

    fn at(millis: i64) -> Timestamp {
        Timestamp::from_millis(millis).unwrap()
    }

    fn address(text: &str) -> Entity {
        entity(EntityType::Ip, text)
    }

    #[test]
    fn an_address_matches_its_own_block_and_every_containing_network() {
        let mut index = BlocklistIndex::new();
        index.upsert(1, &address("203.0.113.7"), None);
        index.upsert(2, &entity(EntityType::Cidr, "203.0.113.0/24"), None);
        index.upsert(3, &entity(EntityType::Cidr, "203.0.0.0/16"), None);
        index.upsert(4, &entity(EntityType::Cidr, "203.0.113.8/29"), None);
        index.upsert(5, &entity(EntityType::Cidr, "2001:db8::/32"), None);
        let mut ids = index.matching(&address("203.0.113.7"), at(0));
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(
            index.matching(&address("::ffff:203.0.113.9"), at(0)),
            vec![4, 2, 3]
        );
        assert_eq!(index.matching(&address("2001:db8:ffff::1"), at(0)), vec![5]);
        assert!(index.matching(&address("198.51.100.1"), at(0)).is_empty());
    }

    #[test]
    fn an_expired_entry_never_matches() {
        let mut index = BlocklistIndex::new();
        index.upsert(1, &entity(EntityType::User, "mallory"), Some(at(1000)));
        index.upsert(2, &entity(EntityType::Cidr, "::/0"), Some(at(1000)));
        let user = entity(EntityType::User, "mallory");
        assert_eq!(index.matching(&user, at(999)), vec![1]);
        assert!(index.matching(&user, at(1000)).is_empty());
        assert_eq!(index.matching(&address("::2"), at(999)), vec![2]);
        assert!(index.matching(&address("::2"), at(1000)).is_empty());
    }

    #[test]
    fn changes_applied_out_of_order_keep_the_newest_state() {
        let mut index = BlocklistIndex::new();
        let key = entity(EntityType::ApiKey, "leaked");
        index.upsert(1, &key, Some(at(5000)));
        index.upsert(1, &key, Some(at(2000)));
        assert_eq!(index.matching(&key, at(4000)), vec![1]);
        index.remove(1, &key);
        index.upsert(1, &key, None);
        assert!(index.matching(&key, at(0)).is_empty());
        index.upsert(3, &key, None);
        index.upsert(2, &key, None);
        assert_eq!(index.matching(&key, at(0)), vec![3]);
        index.remove(2, &key);
        assert_eq!(index.matching(&key, at(0)), vec![3]);
    }

    #[test]
    fn growing_the_allowlist_removes_every_overlapping_block() {
        let mut index = BlocklistIndex::new();
        index.upsert(1, &address("10.1.2.3"), None);
        index.upsert(2, &entity(EntityType::Cidr, "10.0.0.0/8"), None);
        index.upsert(3, &entity(EntityType::Cidr, "10.1.2.0/24"), None);
        index.upsert(4, &address("10.2.0.1"), None);
        index.upsert(5, &entity(EntityType::Cidr, "11.0.0.0/8"), None);
        index.remove_overlapping(&Network::parse("10.1.0.0/16", false).unwrap());
        assert!(index.matching(&address("10.1.2.3"), at(0)).is_empty());
        assert_eq!(index.matching(&address("10.2.0.1"), at(0)), vec![4]);
        assert_eq!(index.matching(&address("11.0.0.1"), at(0)), vec![5]);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn removing_the_last_long_network_of_a_bucket_clears_its_mark() {
        let mut index = BlocklistIndex::new();
        let network = entity(EntityType::Cidr, "2001:db8:1:2::/64");
        let wide = entity(EntityType::Cidr, "2001:d00::/28");
        index.upsert(1, &network, None);
        index.upsert(2, &wide, None);
        // The /28's 16 buckets, and the /64's own, which lies outside it.
        assert_eq!(index.networks_v6.buckets.marked(), 17);
        assert_eq!(index.matching(&address("2001:d0f::1"), at(0)), vec![2]);
        index.remove(1, &network);
        index.remove(2, &wide);
        assert_eq!(index.networks_v6.buckets.marked(), 0);
        assert!(index.networks_v6.bucket_counts.is_empty());
        assert!(index.is_empty());
    }

    #[test]
    fn wide_ipv6_networks_cost_one_coarse_mark_and_no_bucket_marks() {
        let mut index = BlocklistIndex::new();
        for n in 0..1000u32 {
            let wide = format!("{:x}:{:x}00::/24", 0x3000 + n / 256, n % 256);
            index.upsert(i64::from(n), &entity(EntityType::Cidr, &wide), None);
        }

        assert_eq!(index.len(), 1000);
        assert_eq!(index.networks_v6.buckets.marked(), 0);
        assert_eq!(index.networks_v6.coarse.len(), 1000);
        assert_eq!(index.networks_v6.bucket_counts.len(), 1000);
        assert_eq!(index.matching(&address("3000:100::1"), at(0)), vec![1]);
    }

    #[test]
    fn networks_of_one_coarse_bucket_match_and_leave_it_when_removed() {
        let mut index = BlocklistIndex::new();
        let quarter = entity(EntityType::Cidr, "2001:d80::/26");
        let other = entity(EntityType::Cidr, "2001:d40::/26");
        let whole = entity(EntityType::Cidr, "2001:d00::/24");
        index.upsert(1, &quarter, None);
        index.upsert(2, &other, None);
        index.upsert(3, &whole, Some(at(1000)));
        assert_eq!(index.networks_v6.coarse.len(), 1);
        assert_eq!(index.matching(&address("2001:db8::1"), at(0)), vec![1, 3]);
        assert_eq!(index.matching(&address("2001:d40::1"), at(999)), vec![2, 3]);
        assert_eq!(index.matching(&address("2001:d40::1"), at(1000)), vec![2]);
        assert_eq!(index.matching(&address("2001:dc0::1"), at(0)), vec![3]);
        assert!(index.matching(&address("2001:e00::1"), at(0)).is_empty());

        index.remove(1, &quarter);
        assert!(index.matching(&address("2001:db8::1"), at(1000)).is_empty());
        assert_eq!(index.matching(&address("2001:d40::1"), at(0)), vec![2, 3]);
        index.remove_overlapping(&Network::parse("2001:c00::/23", false).unwrap());
        assert!(index.networks_v6.coarse.is_empty());
        assert!(index.networks_v6.bucket_counts.is_empty());
        assert!(index.is_empty());
    }

    /// Whether the IPv6 bucket of `text` keeps its one network inline.
    fn inline_at(index: &BlocklistIndex, text: &str) -> bool {
        let point = u128::from(text.parse::<std::net::Ipv6Addr>().unwrap());
        let Buckets::Sparse(covers) = &index.networks_v6.buckets else {
            panic!("IPv6 buckets are sparse");
        };
        let bucket = index.networks_v6.bucket(point);
        matches!(covers.get(&bucket), Some(Cover::One(_)))
    }

    #[test]
    fn a_bucket_keeps_its_only_network_inline_until_a_second_one_covers_it() {
        let mut index = BlocklistIndex::new();
        let outer = entity(EntityType::Cidr, "2001:db8:5::/48");
        index.upsert(1, &outer, None);
        assert!(inline_at(&index, "2001:db8::"));
        assert_eq!(index.matching(&address("2001:db8:5:1::9"), at(0)), vec![1]);
        assert!(index.matching(&address("2001:db8:6::1"), at(0)).is_empty());

        let inner = entity(EntityType::Cidr, "2001:db8:5:1::/64");
        index.upsert(2, &inner, None);
        assert!(!inline_at(&index, "2001:db8::"));
        assert_eq!(
            index.matching(&address("2001:db8:5:1::9"), at(0)),
            vec![2, 1]
        );
        assert_eq!(index.matching(&address("2001:db8:5:2::9"), at(0)), vec![1]);

        index.remove(1, &outer);
        assert_eq!(index.matching(&address("2001:db8:5:1::9"), at(0)), vec![2]);
        assert!(index
            .matching(&address("2001:db8:5:2::9"), at(0))
            .is_empty());
        index.remove(2, &inner);
        assert_eq!(index.networks_v6.buckets.marked(), 0);

        index.upsert(3, &inner, None);
        assert!(inline_at(&index, "2001:db8::"));
        index.remove(3, &inner);
        assert_eq!(index.networks_v6.buckets.marked(), 0);
    }

    #[test]
    fn an_inline_network_follows_its_entry_through_extension_and_replacement() {
        let mut index = BlocklistIndex::new();
        // A /30 contains four whole buckets and keeps a copy in each.
        let wide = entity(EntityType::Cidr, "2001:db8::/30");
        index.upsert(1, &wide, Some(at(1000)));
        assert!(inline_at(&index, "2001:dbb::"));
        assert_eq!(index.matching(&address("2001:dbb::1"), at(999)), vec![1]);
        assert!(index.matching(&address("2001:dbb::1"), at(1000)).is_empty());

        index.upsert(1, &wide, Some(at(5000)));
        index.upsert(1, &wide, Some(at(2000)));
        assert_eq!(index.matching(&address("2001:dbb::1"), at(4999)), vec![1]);
        assert_eq!(index.matching(&address("2001:db8::1"), at(4999)), vec![1]);
        assert!(index.matching(&address("2001:dbb::1"), at(5000)).is_empty());

        index.upsert(7, &wide, None);
        assert_eq!(index.matching(&address("2001:dba::1"), at(9000)), vec![7]);
        index.upsert(6, &wide, None);
        assert_eq!(index.matching(&address("2001:dba::1"), at(9000)), vec![7]);
    }

    #[test]
    fn growing_the_allowlist_removes_an_inline_network() {
        let mut index = BlocklistIndex::new();
        index.upsert(1, &entity(EntityType::Cidr, "2001:db8:1::/48"), None);
        index.upsert(2, &entity(EntityType::Cidr, "2001:db9:1::/48"), None);
        index.remove_overlapping(&Network::parse("2001:db8:1:2::/64", false).unwrap());
        assert!(index.matching(&address("2001:db8:1::1"), at(0)).is_empty());
        assert_eq!(index.matching(&address("2001:db9:1::1"), at(0)), vec![2]);
        assert_eq!(index.networks_v6.buckets.marked(), 1);
        assert!(inline_at(&index, "2001:db9::"));
    }

    /// xorshift64*: deterministic, so a failure reproduces from its seed.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// A block as the naive model keeps it.
    struct Modelled {
        id: i64,
        entity: Entity,
        expires_at: Option<i64>,
        active: bool,
    }

    /// Addresses crowd a small space, so that networks overlap and checks hit.
    /// `sparse` spreads IPv6 over 64 buckets instead of 4, so that many hold
    /// a single network inline, and others gain and lose a second one.
    fn random_address(random: &mut Random, sparse: bool) -> IpAddr {
        if random.below(2) == 0 {
            let low = random.below(1 << 12) as u32;
            IpAddr::from(std::net::Ipv4Addr::from(
                0x0a00_0000 | (low << 8) | (low >> 4),
            ))
        } else {
            let low = u128::from(random.below(1 << 12));
            let bucket = 0x2001_0db8 + random.below(if sparse { 64 } else { 4 });
            IpAddr::from(std::net::Ipv6Addr::from(
                (u128::from(bucket) << 96) | (low << 40) | low,
            ))
        }
    }

    /// With `sparse`, IPv6 networks are /28 or longer: the lengths that
    /// mark buckets.
    fn random_entity(random: &mut Random, sparse: bool) -> Entity {
        let address = random_address(random, sparse);
        match random.below(8) {
            0..=3 => Entity::Ip(address),
            4..=6 => {
                let (bits, shortest) = match address {
                    IpAddr::V4(_) => (32, 0),
                    IpAddr::V6(_) => (128, if sparse { 28 } else { 0 }),
                };
                let prefix = bits - random.below(u64::from(bits - shortest) + 1) as u32;
                let text = format!("{address}/{prefix}");
                let network = Network::parse(&text, false).unwrap_or_else(|error| {
                    let canonical = error.rsplit(' ').next().unwrap().to_string();
                    Network::parse(&canonical, false).unwrap()
                });
                Entity::Cidr(network)
            }
            _ => Entity::User(format!("user{}", random.below(16))),
        }
    }

    fn naive_matches(model: &[Modelled], entity: &Entity, now: i64) -> Vec<i64> {
        let mut ids: Vec<i64> = model
            .iter()
            .filter(|block| block.active && block.expires_at.is_none_or(|at| at > now))
            .filter(|block| match (entity, &block.entity) {
                (Entity::Ip(address), Entity::Cidr(network)) => network.contains(*address),
                (wanted, blocked) => wanted == blocked,
            })
            .map(|block| block.id)
            .collect();
        ids.sort();
        ids
    }

    /// Blocks, extends, deactivates and lets expire as the store does, then
    /// checks random addresses and entities against a scan of the model.
    #[test]
    fn the_index_agrees_with_a_naive_scan() {
        for seed in 1..=30u64 {
            let sparse = seed > 20;
            let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut model: Vec<Modelled> = Vec::new();
            let mut index = BlocklistIndex::new();
            let mut now = 1_000_000i64;
            let (mut hits, mut several, mut inline) = (0, 0, 0);
            for _ in 0..3000 {
                now += random.below(50) as i64;
                match random.below(10) {
                    0..=5 => {
                        let entity = random_entity(&mut random, sparse);
                        let expires_at = match random.below(4) {
                            0 => None,
                            _ => Some(now + 1 + random.below(2000) as i64),
                        };
                        let live = model.iter_mut().find(|block| {
                            block.active
                                && block.entity == entity
                                && block.expires_at.is_none_or(|at| at > now)
                        });
                        let (id, expiry) = match live {
                            Some(block) => {
                                block.expires_at = match (block.expires_at, expires_at) {
                                    (Some(a), Some(b)) => Some(a.max(b)),
                                    _ => None,
                                };
                                (block.id, block.expires_at)
                            }
                            None => {
                                for old in model.iter_mut().filter(|old| old.entity == entity) {
                                    old.active = false;
                                }
                                let id = model.len() as i64 + 1;
                                model.push(Modelled {
                                    id,
                                    entity: entity.clone(),
                                    expires_at,
                                    active: true,
                                });
                                (id, expires_at)
                            }
                        };
                        index.upsert(id, &entity, expiry.map(at));
                    }
                    6 if !model.is_empty() => {
                        let chosen = random.below(model.len() as u64) as usize;
                        let block = &mut model[chosen];
                        block.active = false;
                        index.remove(block.id, &block.entity);
                    }
                    7 if random.below(20) == 0 => {
                        let network = match random_entity(&mut random, sparse) {
                            Entity::Cidr(network) => network,
                            Entity::Ip(address) => Network::host(address),
                            Entity::User(_) | Entity::ApiKey(_) => continue,
                        };
                        for block in model.iter_mut().filter(|block| {
                            block
                                .entity
                                .network()
                                .is_some_and(|own| own.overlaps(&network))
                        }) {
                            block.active = false;
                        }
                        index.remove_overlapping(&network);
                    }
                    _ => {
                        let probe = if random.below(4) == 0 {
                            random_entity(&mut random, sparse)
                        } else {
                            Entity::Ip(random_address(&mut random, sparse))
                        };
                        let mut found = index.matching(&probe, at(now));
                        found.sort();
                        hits += usize::from(!found.is_empty());
                        several += usize::from(found.len() > 1);
                        if let Entity::Ip(IpAddr::V6(v6)) = &probe {
                            inline += usize::from(inline_at(&index, &v6.to_string()));
                        }
                        assert_eq!(
                            found,
                            naive_matches(&model, &probe, now),
                            "seed {seed}, {probe:?} at {now}"
                        );
                    }
                }
            }
            // The generator must produce hits and overlaps, or it proves little.
            assert!(
                hits > 50 && several > 5 && (!sparse || inline > 20),
                "seed {seed}: {hits} hits, {several} overlaps, {inline} inline"
            );
        }
    }
}
