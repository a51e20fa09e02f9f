#!/usr/bin/env bash
# Measures ingest throughput (benches/ingest.rs) and writes the table into
# BENCHMARKS.md between the ingest markers. Needs PostgreSQL for its row
# (VALHALLA_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")/.."

table=$(cargo bench --bench ingest 2>/dev/null | grep '^|')
stamp="$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -m), commit $(git rev-parse --short HEAD)"
section=$(printf '%s\n%s\n\n%s\n' "<!-- ingest:start -->" "Measured $stamp with \`bench/ingest.sh\`:" "$table")

python3 - "$section" <<'PY'
import re, sys
section = sys.argv[1] + "\n<!-- ingest:end -->"
path = "BENCHMARKS.md"
text = open(path).read()
text = re.sub(r"<!-- ingest:start -->.*?<!-- ingest:end -->", lambda _: section, text, flags=re.S)
open(path, "w").write(text)
PY
echo "$table"
