"""Schemathesis hooks for Valhalla's CI (loaded through SCHEMATHESIS_HOOKS).

Bulk event ingest takes NDJSON, which schemathesis has no serializer for;
the body is documented as a string, so it goes on the wire as that text.
"""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
