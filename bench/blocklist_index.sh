#!/usr/bin/env bash
# Measures blocklist index lookups (benches/blocklist_index.rs) and writes
# the table into BENCHMARKS.md between the index markers. In-process only:
# no database or server is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

table=$(cargo bench --bench blocklist_index 2>/dev/null | grep '^|')
printf '%s\n' "$table" | python3 bench/write_section.py index bench/blocklist_index.sh
echo "$table"
