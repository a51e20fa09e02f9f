#!/usr/bin/env bash
# Measures ingest throughput (benches/ingest.rs) and writes the table into
# BENCHMARKS.md between the ingest markers. Needs PostgreSQL for its row
# (VALHALLA_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")/.."

table=$(cargo bench --bench ingest 2>/dev/null | grep '^|')
printf '%s\n' "$table" | python3 bench/write_section.py ingest bench/ingest.sh
echo "$table"
