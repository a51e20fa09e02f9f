#!/usr/bin/env bash
# Measures blocklist import (benches/import.rs) on SQLite and PostgreSQL and
# writes the table into BENCHMARKS.md between the import markers. Generates
# the file first with bench/blocklist_lines.py (1,000,000 lines unless
# VALHALLA_BENCH_IMPORT_LINES says otherwise). PostgreSQL comes from
# VALHALLA_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test);
# its row is skipped when it does not answer.
set -euo pipefail
cd "$(dirname "$0")/.."

lines="${VALHALLA_BENCH_IMPORT_LINES:-1000000}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/blocklist_lines.py --lines "$lines" > "$work/blocklist.ndjson"

table=$(VALHALLA_BENCH_IMPORT_FILE="$work/blocklist.ndjson" cargo bench --bench import 2>/dev/null \
    | grep '^|')
printf '%s\n' "$table" | python3 bench/write_section.py import bench/import.sh
echo "$table"
