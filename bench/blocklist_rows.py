#!/usr/bin/env python3
"""Writes a blocklist of realistic shape straight into a migrated Valhalla
SQLite database, for the enforcement benchmarks (bench/enforcement.sh).

usage: blocklist_rows.py DATABASE_FILE COUNT PROBES_FILE

COUNT blocks: 90 % `ip` and 10 % `cidr`, IPv4 and IPv6 half and half; the
networks have the lengths of real lists (IPv4 mostly /24, some /16-/23 and
/25-/30; IPv6 mostly /64 and /48, some /56 and /32-/47); one block in four
expires within a week, the rest are permanent. Rows carry what the server
writes (canonical value, family, range boundaries as 32-digit hex, change
numbers), so the server reads them as its own. PROBES_FILE gets addresses
to check, one a line: a third blocked addresses, a third addresses inside
blocked networks, a third random (mostly not blocked).

The database is written directly rather than through the import endpoint
so that this benchmark measures lookups and start-up alone.
"""
import ipaddress
import random
import sqlite3
import sys
import time

SEED = 20261204


def network_length(rng, family):
    roll = rng.random()
    if family == 4:
        if roll < 0.7:
            return 24
        if roll < 0.9:
            return rng.randint(16, 23)
        return rng.randint(25, 30)
    if roll < 0.5:
        return 64
    if roll < 0.8:
        return 48
    if roll < 0.9:
        return 56
    return rng.randint(32, 47)


def random_address(rng, family):
    if family == 4:
        # Public-looking space, away from 0/8, 10/8, 127/8 and multicast.
        return ipaddress.IPv4Address(rng.randint(0x0B000000, 0xDFFFFFFF))
    return ipaddress.IPv6Address((0x2001 << 112) | rng.getrandbits(112))


def main():
    path, count, probes_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(SEED)
    now_ms = int(time.time() * 1000)
    cidr_count = count // 10
    rows, seen, addresses, networks = [], set(), [], []

    while len(networks) < cidr_count:
        family = 4 if len(networks) % 2 == 0 else 6
        length = network_length(rng, family)
        network = ipaddress.ip_network(f"{random_address(rng, family)}/{length}", strict=False)
        key = ("cidr", str(network))
        if key in seen:
            continue
        seen.add(key)
        networks.append(network)
        rows.append(("cidr", network, family))

    while len(rows) < count:
        family = 4 if len(rows) % 2 == 0 else 6
        address = random_address(rng, family)
        key = ("ip", str(address))
        if key in seen:
            continue
        seen.add(key)
        addresses.append(address)
        rows.append(("ip", ipaddress.ip_network(address), family))

    rng.shuffle(rows)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("UPDATE blocklist_sequence SET last_seq = 1")
    db.executemany(
        "INSERT INTO blocks (entity_type, value, family, range_start, range_end, reason, "
        "source, created_by, created_at, expires_at, created_seq, changed_seq) "
        "VALUES (?, ?, ?, ?, ?, 'benchmark', 'human', 'bench', ?, ?, 1, 1)",
        (
            (
                kind,
                str(network.network_address) if kind == "ip" else str(network),
                family,
                f"{int(network.network_address):032x}",
                f"{int(network.broadcast_address):032x}",
                now_ms,
                now_ms + rng.randint(3600, 7 * 86400) * 1000 if rng.random() < 0.25 else None,
            )
            for kind, network, family in rows
        ),
    )
    db.commit()
    db.close()

    with open(probes_path, "w") as probes:
        for n in range(30000):
            if n % 3 == 0:
                probe = rng.choice(addresses)
            elif n % 3 == 1:
                network = rng.choice(networks)
                probe = network.network_address + rng.randrange(network.num_addresses)
            else:
                probe = random_address(rng, 4 if n % 2 else 6)
            probes.write(f"{probe}\n")


if __name__ == "__main__":
    main()
