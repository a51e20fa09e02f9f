#!/usr/bin/env python3
"""Times PostgreSQL's own fastest load of an import file's blocks: COPY.

Usage: import_pg_floor.py FILE [--batch N] [--drop INDEX ...]
       [--url postgres://postgres@127.0.0.1:5432/test]

FILE comes from bench/blocklist_lines.py. Its blocks (canonical values, the
first line of each entity, as bench/import_raw.py reads them) are loaded into
a fresh database migrated with migrations/postgres, by one psql session: per
batch, sorted by key, `BEGIN; COPY blocks … FROM STDIN; COMMIT`. No server,
JSON, rules or change log, and no round trip per row: what the database
alone needs to take the rows with the schema's indexes, which no client can
beat (BENCHMARKS.md, "Blocklist import"). `--drop` drops indexes of `blocks`
first (`--drop all` every secondary one), to tell each one's share apart.
"""

import argparse
import csv
import glob
import io
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from import_raw import ROOT, blocks  # noqa: E402

SECONDARY = ("blocks_changed_seq", "blocks_created_at", "blocks_entity_live", "blocks_expires",
             "blocks_expires_at", "blocks_live", "blocks_source")
COLUMNS = ("entity_type, value, family, range_start, range_end, reason, expires_at, source, "
           "created_by, created_at, created_seq, changed_seq")


def psql(url, *args, **kwargs):
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, *args],
                          check=True, **kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--drop", nargs="*", default=[], choices=("all",) + SECONDARY)
    parser.add_argument("--url", default="postgres://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    rows = blocks(args.file)
    base = args.url.rsplit("/", 1)[0]
    name = f"bench_pg_floor_{os.getpid()}"
    psql(args.url, "-c", f"CREATE DATABASE {name}")
    url = f"{base}/{name}"
    try:
        for migration in sorted(glob.glob(os.path.join(ROOT, "migrations/postgres/*.sql"))):
            psql(url, "-f", migration)
        dropped = SECONDARY if "all" in args.drop else args.drop
        if dropped:
            psql(url, "-c", "DROP INDEX " + ", ".join(dropped))

        now = 1_780_000_000_000
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            for seq, first in enumerate(range(0, len(rows), args.batch), 1):
                batch = sorted(rows[first:first + args.batch], key=lambda row: row[:2])
                now += 300
                data = io.StringIO()
                writer = csv.writer(data, lineterminator="\n")
                for row in batch:
                    expires_at = None if row[6] is None else now + row[6] * 1000
                    writer.writerow(row[:6] + (expires_at, "human", "bench", now, seq, seq))
                script.write(f"BEGIN;\nCOPY blocks ({COLUMNS}) FROM STDIN WITH (FORMAT csv);\n")
                script.write(data.getvalue())
                script.write("\\.\nCOMMIT;\n")
            script.flush()
            started = time.monotonic()
            psql(url, "-f", script.name)
            seconds = time.monotonic() - started
        count = psql(url, "-Atc", "SELECT count(*) FROM blocks",
                     capture_output=True, text=True).stdout.strip()
    finally:
        psql(args.url, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(f"dropped={','.join(dropped) or 'none'} batch={args.batch} rows={count} seconds={seconds:.2f} "
          f"load={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
