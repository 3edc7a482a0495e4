#!/bin/sh
# Create the lake bucket, a least-privilege policy and the pipeline's user on MinIO.
# Idempotent by explicit checks; any other failure stops with a non-zero exit (compose then
# keeps the worker from starting: it waits for this to complete successfully).
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${AUDIENCE_LAKE_BUCKET:?}" "${AUDIENCE_LAKE_ACCESS_KEY:?}" "${AUDIENCE_LAKE_SECRET_KEY:?}"
endpoint="${MINIO_ENDPOINT:-http://minio:9000}"
policy=audience-lake-rw

mc alias set lake "$endpoint" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"

if mc stat "lake/$AUDIENCE_LAKE_BUCKET" >/dev/null 2>&1; then
    echo "bucket $AUDIENCE_LAKE_BUCKET exists"
else
    mc mb "lake/$AUDIENCE_LAKE_BUCKET"
fi

# The policy file names the bucket audience-lake; write it for the configured bucket.
sed "s/audience-lake/$AUDIENCE_LAKE_BUCKET/g" /policy/lake-policy.json > /tmp/lake-policy.json
if mc admin policy info lake "$policy" >/dev/null 2>&1; then
    echo "policy $policy exists"
else
    mc admin policy create lake "$policy" /tmp/lake-policy.json
fi

if mc admin user info lake "$AUDIENCE_LAKE_ACCESS_KEY" >/dev/null 2>&1; then
    echo "user $AUDIENCE_LAKE_ACCESS_KEY exists"
else
    mc admin user add lake "$AUDIENCE_LAKE_ACCESS_KEY" "$AUDIENCE_LAKE_SECRET_KEY"
fi

# Attaching twice is an error in mc; attach only when the user lacks the policy.
if mc admin user info lake "$AUDIENCE_LAKE_ACCESS_KEY" --json | grep -q "\"$policy\""; then
    echo "policy $policy attached to $AUDIENCE_LAKE_ACCESS_KEY"
else
    mc admin policy attach lake "$policy" --user "$AUDIENCE_LAKE_ACCESS_KEY"
fi
echo "bucket, policy and user ready"
