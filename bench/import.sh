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
stamp="$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -m), load average $(cut -d' ' -f1 /proc/loadavg) at the end, commit $(git rev-parse --short HEAD)"
section=$(printf '%s\n%s\n\n%s\n' "<!-- import:start -->" "Measured $stamp with \`bench/import.sh\`:" "$table")

python3 - "$section" <<'PY'
import re, sys
section = sys.argv[1] + "\n<!-- import:end -->"
path = "BENCHMARKS.md"
text = open(path).read()
text = re.sub(r"<!-- import:start -->.*?<!-- import:end -->", lambda _: section, text, flags=re.S)
open(path, "w").write(text)
PY
echo "$table"
