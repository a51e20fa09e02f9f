//! In-process lookups in the blocklist index against 1,000,000 entries
//! (900,000 `ip`, 100,000 `cidr`, IPv4 and IPv6 half and half), each figure
//! beside a baseline measured in the same run:
//! - a std `HashSet<IpAddr>` holding the same 900,000 addresses, probed
//!   with the same addresses (exact matches only: what a set alone gives);
//! - a linear scan over the 100,000 networks, for a sample of addresses
//!   (what finding every containing network costs without an index).
//!
//! Each lookup is timed alone, so the figures include one clock read
//! (reported as "timer overhead"). Memory is what the index allocates,
//! counted by a wrapping allocator, per entry. Load time is building the
//! index from parsed entities; reading them from the database is not part
//! of it.
//!
//! Two shapes of network lengths, each with its own index and baselines:
//! one like real blocklists (mostly /24 for IPv4, /64 and /48 for IPv6),
//! and one uniform in /12–/28 and /24–/64, where short IPv4 networks cover
//! most of the space, so most checks match several networks and more
//! lengths are probed: the harder case.
//!
//! Run with `bench/blocklist_index.sh`, which writes the table into
//! BENCHMARKS.md. Sizes: `VALHALLA_BENCH_ADDRESSES` (default 900000),
//! `VALHALLA_BENCH_NETWORKS` (default 100000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use valhalla::blocklist::{BlocklistIndex, Entity, Network};
use valhalla::time::Timestamp;

/// Counts live heap bytes, to state the index's memory exactly. A global
/// allocator can only be written with `unsafe`; it forwards to `System`.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// xorshift64*: the same data on every run.
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

    fn address(&mut self, v4: bool) -> IpAddr {
        if v4 {
            // 1.0.0.0 to 126.255.255.255: clear of the loopback allowlist.
            let value = 0x0100_0000 + self.below(126 << 24) as u32;
            IpAddr::V4(Ipv4Addr::from(value))
        } else {
            let value = (u128::from(self.next()) << 64) | u128::from(self.next());
            // 2000::/4, global unicast.
            IpAddr::V6(Ipv6Addr::from((value >> 4) | (2u128 << 124)))
        }
    }

    fn network(&mut self, v4: bool, spread: bool) -> Network {
        let address = self.address(v4);
        let prefix = match (v4, spread) {
            (true, true) => 12 + self.below(17),
            (false, true) => 24 + self.below(41),
            // Shaped like real blocklists: mostly /24 and /64 or /48.
            (true, false) => match self.below(10) {
                0..=5 => 24,
                6..=8 => 16 + self.below(8),
                _ => 25 + self.below(6),
            },
            (false, false) => match self.below(10) {
                0..=4 => 64,
                5..=7 => 48,
                8 => 56,
                _ => 32 + self.below(16),
            },
        };
        let text = format!("{address}/{prefix}");
        Network::parse(&text, false).unwrap_or_else(|error| {
            let canonical = error.rsplit(' ').next().expect("names the network");
            Network::parse(canonical, false).expect("the canonical network parses")
        })
    }
}

fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

struct Figures {
    median: Duration,
    p99: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    Figures {
        median: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
    }
}

fn time_each<T>(probes: &[T], mut lookup: impl FnMut(&T) -> usize) -> Figures {
    let mut samples = Vec::with_capacity(probes.len());
    for probe in probes {
        let start = Instant::now();
        black_box(lookup(black_box(probe)));
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

fn nanos(duration: Duration) -> String {
    format!("{} ns", duration.as_nanos())
}

fn main() {
    let address_count = env_size("VALHALLA_BENCH_ADDRESSES", 900_000);
    let network_count = env_size("VALHALLA_BENCH_NETWORKS", 100_000);
    let mut header = false;
    for (spread, lengths) in [
        (false, "lengths like real lists (/24, /16–/23, /64, /48)"),
        (true, "lengths spread evenly (/12–/28, /24–/64)"),
    ] {
        let rows = scenario(address_count, network_count, spread);
        if !header {
            println!("| lengths | measure | median | p99 | load | memory |");
            println!("|---|---|---|---|---|---|");
            header = true;
        }
        for row in rows {
            println!("| {lengths} {row}");
        }
    }
}

/// Builds one index and measures it; returns the table rows after their
/// first cell.
fn scenario(address_count: usize, network_count: usize, spread: bool) -> Vec<String> {
    let mut random = Random(0x5eed_0fb1_0c11_5700);
    let now = Timestamp::from_millis(1_800_000_000_000).expect("a valid instant");

    let addresses: Vec<IpAddr> = (0..address_count)
        .map(|n| random.address(n % 2 == 0))
        .collect();
    let networks: Vec<Network> = (0..network_count)
        .map(|n| random.network(n % 2 == 0, spread))
        .collect();
    // One block in four expires within the hour; one in twenty has expired
    // already and must not match.
    let expiries: Vec<Option<Timestamp>> = (0..address_count + network_count)
        .map(|_| match random.below(20) {
            0 => Some(now.minus_seconds(60)),
            1..=5 => now.plus_seconds(1 + random.below(3600) as i64),
            _ => None,
        })
        .collect();
    let entities: Vec<Entity> = addresses
        .iter()
        .map(|address| Entity::Ip(*address))
        .chain(networks.iter().map(|network| Entity::Cidr(*network)))
        .collect();

    let before = ALLOCATED.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut index = BlocklistIndex::new();
    for (id, (entity, expires_at)) in entities.iter().zip(&expiries).enumerate() {
        index.upsert(id as i64 + 1, entity, *expires_at);
    }
    let load = started.elapsed();
    let index_bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    let entries = index.len();

    // A third blocked addresses, a third inside networks, a third anywhere.
    let probes: Vec<Entity> = (0..1_000_000)
        .map(|n| {
            let address = match n % 3 {
                0 => addresses[random.below(addresses.len() as u64) as usize],
                1 => {
                    let network = networks[random.below(networks.len() as u64) as usize];
                    let (start, end) = network.range();
                    let offset = u128::from(random.next()) % (end - start).max(1);
                    if network.family() == 4 {
                        IpAddr::V4(Ipv4Addr::from((start + offset) as u32))
                    } else {
                        IpAddr::V6(Ipv6Addr::from(start + offset))
                    }
                }
                _ => random.address(n % 2 == 0),
            };
            Entity::Ip(address)
        })
        .collect();

    let timer = time_each(&probes, |_| 0);
    let mut found = Vec::new();
    let indexed = time_each(&probes, |probe| {
        found.clear();
        index.matching_into(probe, now, &mut found);
        found.len()
    });
    let matched = probes
        .iter()
        .filter(|probe| !index.matching(probe, now).is_empty())
        .count();
    drop(index);

    let before = ALLOCATED.load(Ordering::Relaxed);
    let set: HashSet<IpAddr> = addresses.iter().copied().collect();
    let set_bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    let hashed = time_each(&probes, |probe| match probe {
        Entity::Ip(address) => usize::from(set.contains(address)),
        _ => 0,
    });
    let scanned = time_each(&probes[..2000], |probe| match probe {
        Entity::Ip(address) => networks
            .iter()
            .filter(|network| network.contains(*address))
            .count(),
        _ => 0,
    });

    vec![
        format!(
            "| index: {entries} entries, every match (ip + all containing cidrs), \
             {matched} of {} probes matched | {} | {} | {:.2} s | {} B/entry |",
            probes.len(),
            nanos(indexed.median),
            nanos(indexed.p99),
            load.as_secs_f64(),
            index_bytes / entries.max(1),
        ),
        format!(
            "| baseline: std HashSet<IpAddr>, exact ip only, same probes | {} | {} | | {} B/address |",
            nanos(hashed.median),
            nanos(hashed.p99),
            set_bytes / addresses.len().max(1),
        ),
        format!(
            "| baseline: linear scan of the {network_count} cidrs, 2,000 probes | {} | {} | | |",
            nanos(scanned.median),
            nanos(scanned.p99),
        ),
        format!(
            "| timer overhead (empty timed region), included above | {} | {} | | |",
            nanos(timer.median),
            nanos(timer.p99),
        ),
    ]
}
