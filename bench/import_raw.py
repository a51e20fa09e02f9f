#!/usr/bin/env python3
"""Times raw sqlite3 inserts of an import file's blocks into a schema variant.

Usage: import_raw.py FILE VARIANT [--batch N] [--synchronous FULL|NORMAL|OFF]

FILE comes from bench/blocklist_lines.py. Its blocks (canonical values,
the first line of each entity) are inserted into a fresh SQLite file
migrated with migrations/sqlite, then changed as VARIANT says, in batches
sorted by key, with the server's pragmas (WAL, synchronous FULL, 64 MiB
cache). No server, parsing or rules: what the schema alone costs, to
compare index designs (BENCHMARKS.md, "Blocklist import").
"""

import argparse
import glob
import ipaddress
import json
import os
import sqlite3
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MERGED = [
    "DROP INDEX IF EXISTS blocks_one_live_per_entity",
    "DROP INDEX IF EXISTS blocks_entity",
    "CREATE UNIQUE INDEX IF NOT EXISTS blocks_entity_live ON blocks "
    "(entity_type, value, (CASE WHEN deactivated_at IS NULL THEN 0 END))",
]
# Statements run after the migrations, by variant name.
VARIANTS = {
    "migrated": [],
    "before-0008": None,  # migrations 0001-0007 only
    "one-expiry": MERGED + ["DROP INDEX blocks_expires"],
    "expiry-by-state": MERGED + [
        "DROP INDEX blocks_expires", "DROP INDEX blocks_expires_at",
        "CREATE INDEX blocks_expiry ON blocks (deactivated_at, expires_at)"],
    "entity-only": MERGED + [
        f"DROP INDEX {name}" for name in ("blocks_expires", "blocks_expires_at", "blocks_live",
                                          "blocks_source", "blocks_created_at")],
    "no-entity": [
        f"DROP INDEX IF EXISTS {name}" for name in (
            "blocks_one_live_per_entity", "blocks_entity", "blocks_entity_live",
            "blocks_expires", "blocks_expires_at", "blocks_live", "blocks_source",
            "blocks_created_at")],
}
INSERT = (
    "INSERT INTO blocks (entity_type, value, family, range_start, range_end, reason, "
    "expires_at, source, created_by, created_at, created_seq, changed_seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'import', 'bench', ?, ?, ?) ON CONFLICT DO NOTHING"
)


def range_key(address, family):
    """32 hex digits; IPv4 as its IPv4-mapped IPv6 address, as the server keys it."""
    number = int(address)
    return "%032x" % (number if family == 6 else number | 0xFFFF << 32)


def blocks(path):
    seen = set()
    rows = []
    with open(path) as lines:
        for line in lines:
            item = json.loads(line)
            entity_type = item["entity_type"]
            if entity_type == "ip":
                address = ipaddress.ip_address(item["value"])
                if address.version == 6 and address.ipv4_mapped:
                    address = address.ipv4_mapped
                network = ipaddress.ip_network(address)
                value = str(address)
            else:
                network = ipaddress.ip_network(item["value"], strict=False)
                value = str(network)
            if (entity_type, value) in seen:
                continue
            seen.add((entity_type, value))
            family = network.version
            rows.append((entity_type, value, family,
                         range_key(network.network_address, family),
                         range_key(network.broadcast_address, family),
                         item["reason"], item.get("duration_seconds")))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL", "OFF"])
    args = parser.parse_args()

    rows = blocks(args.file)
    migrations = sorted(glob.glob(os.path.join(ROOT, "migrations/sqlite/*.sql")))
    if VARIANTS[args.variant] is None:
        migrations = [m for m in migrations if os.path.basename(m) < "0008"]
    with tempfile.TemporaryDirectory() as scratch:
        db = sqlite3.connect(os.path.join(scratch, "blocks.db"), isolation_level=None)
        for migration in migrations:
            with open(migration) as sql:
                db.executescript(sql.read())
        for statement in VARIANTS[args.variant] or []:
            db.execute(statement)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {args.synchronous}")
        db.execute("PRAGMA cache_size = -65536")

        now = 1_780_000_000_000
        started = time.monotonic()
        for seq, first in enumerate(range(0, len(rows), args.batch), 1):
            batch = sorted(rows[first:first + args.batch], key=lambda row: row[:2])
            now += 300
            db.execute("BEGIN")
            db.executemany(INSERT, [
                row[:6] + (None if row[6] is None else now + row[6] * 1000, now, seq, seq)
                for row in batch])
            db.execute("COMMIT")
        seconds = time.monotonic() - started
        count = db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
        db.close()
    print(f"{args.variant} batch={args.batch} synchronous={args.synchronous} rows={count} "
          f"seconds={seconds:.2f} load={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
