#!/bin/sh
# Create the lake bucket, least-privilege policies for the configured bucket and prefix, the
# pipeline's user (read-write on the prefix only) and, when its keys are set, an analyst user
# (read-only on the prefix). Idempotent by explicit checks; any other failure stops with a
# non-zero exit (compose then keeps the worker from starting: it waits for this to complete
# successfully).
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${AUDIENCE_LAKE_BUCKET:?}" "${AUDIENCE_LAKE_ACCESS_KEY:?}" "${AUDIENCE_LAKE_SECRET_KEY:?}"
endpoint="${MINIO_ENDPOINT:-http://minio:9000}"
prefix="${AUDIENCE_LAKE_PREFIX:-lake}"
here="$(dirname "$0")"
render="${RENDER_POLICY:-$here/render-policy.sh}"
policies="${POLICY_DIR:-/policy}"

mc alias set lake "$endpoint" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"

if mc stat "lake/$AUDIENCE_LAKE_BUCKET" >/dev/null 2>&1; then
    echo "bucket $AUDIENCE_LAKE_BUCKET exists"
else
    mc mb "lake/$AUDIENCE_LAKE_BUCKET"
fi

# ensure_policy NAME TEMPLATE: the template written for this bucket and prefix. `policy create`
# replaces the document of an existing policy, so a changed bucket or prefix takes effect on the
# next start (users keep their attachment).
ensure_policy() {
    sh "$render" "$policies/$2" "$AUDIENCE_LAKE_BUCKET" "$prefix" > "/tmp/$1.json"
    if mc admin policy info lake "$1" >/dev/null 2>&1; then
        echo "policy $1 exists; writing it for s3://$AUDIENCE_LAKE_BUCKET/$prefix"
    fi
    mc admin policy create lake "$1" "/tmp/$1.json"
}

# ensure_user KEY SECRET POLICY
ensure_user() {
    if mc admin user info lake "$1" >/dev/null 2>&1; then
        echo "user $1 exists"
    else
        mc admin user add lake "$1" "$2"
    fi
    # Attaching twice is an error in mc; attach only when the user lacks the policy.
    if mc admin user info lake "$1" --json | grep -q "\"$3\""; then
        echo "policy $3 attached to $1"
    else
        mc admin policy attach lake "$3" --user "$1"
    fi
}

ensure_policy audience-lake-rw lake-policy.json
ensure_policy audience-lake-ro lake-readonly-policy.json
ensure_user "$AUDIENCE_LAKE_ACCESS_KEY" "$AUDIENCE_LAKE_SECRET_KEY" audience-lake-rw
if [ -n "${AUDIENCE_LAKE_ANALYST_ACCESS_KEY:-}" ]; then
    : "${AUDIENCE_LAKE_ANALYST_SECRET_KEY:?set it with AUDIENCE_LAKE_ANALYST_ACCESS_KEY}"
    ensure_user "$AUDIENCE_LAKE_ANALYST_ACCESS_KEY" "$AUDIENCE_LAKE_ANALYST_SECRET_KEY" audience-lake-ro
fi
echo "bucket, policies and users ready for s3://$AUDIENCE_LAKE_BUCKET/$prefix"
