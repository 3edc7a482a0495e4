#!/bin/sh
# Generate the sandbox's sample data (CRM contacts, orders.db, event and enrichment drops) into
# $AUDIENCE_LAKE_SANDBOX_DIR once; later starts keep what is there (the lake has ingested it).
set -eu
: "${AUDIENCE_LAKE_SANDBOX_DIR:?set AUDIENCE_LAKE_SANDBOX_DIR to the sample data directory}"
if [ -f "$AUDIENCE_LAKE_SANDBOX_DIR/manifest.json" ]; then
    echo "sample data exists in $AUDIENCE_LAKE_SANDBOX_DIR"
    exit 0
fi
exec python -m infra.sandbox.generate --out "$AUDIENCE_LAKE_SANDBOX_DIR" \
    --contacts "${AUDIENCE_LAKE_SANDBOX_CONTACTS:-2000}" --seed "${AUDIENCE_LAKE_SANDBOX_SEED:-7}"
