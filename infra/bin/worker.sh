#!/bin/sh
# Start the Prefect worker the way docker-compose.yml does (and the native stack test does):
# create the process work pool, deploy prefect.yaml, then poll the pool.
#   AUDIENCE_LAKE_HOME     checkout the flows run from (prefect.yaml's pull step cd's there)
#   AUDIENCE_LAKE_POOL     work pool (default audience-lake, the one prefect.yaml names)
#   AUDIENCE_LAKE_DEPLOY   deployments to deploy, space-separated names (default: all)
# Every step must succeed; a failure stops the container (and compose restarts it).
# Secrets (AWS_*, AUDIENCE_LAKE_PEPPER, AUDIENCE_LAKE_SECRET_<NAME>) are in this process's
# environment, which the process worker hands to each flow run without recording it; or in
# Prefect Secret blocks named audience-lake-<name>. Never pass them as --job-variable or as
# deployment parameters: the UI shows both in clear.
set -eu
: "${AUDIENCE_LAKE_HOME:?set AUDIENCE_LAKE_HOME to the repository checkout}"
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server API, e.g. http://prefect-server:4200/api}"
pool="${AUDIENCE_LAKE_POOL:-audience-lake}"
cd "$AUDIENCE_LAKE_HOME"

# Idempotent: create only when absent, so a restart keeps a pool an operator tuned in the UI.
if prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool $pool exists"
else
    prefect work-pool create "$pool" --type process
fi

if [ -n "${AUDIENCE_LAKE_DEPLOY:-}" ]; then
    for name in $AUDIENCE_LAKE_DEPLOY; do
        prefect --no-prompt deploy --name "$name"
    done
else
    prefect --no-prompt deploy --all
fi

# --with-healthcheck serves /health on $PREFECT_WORKER_WEBSERVER_PORT (8080): 200 while it polls.
exec prefect worker start --pool "$pool" --type process --with-healthcheck
