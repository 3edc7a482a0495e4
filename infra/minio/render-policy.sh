#!/bin/sh
# Write a policy template for one bucket and prefix:  render-policy.sh TEMPLATE BUCKET PREFIX
# The bucket and prefix are checked first (they are pasted into JSON and a sed expression), so a
# name that could widen the policy ("*", "?", quotes) stops with an error instead.
set -eu
template="$1" bucket="$2" prefix="$3"
prefix="${prefix#/}"
prefix="${prefix%/}"
if ! printf '%s' "$bucket" | grep -Eq '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$'; then
    echo "render-policy: invalid bucket name '$bucket'" >&2
    exit 2
fi
if ! printf '%s' "$prefix" | grep -Eq '^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$'; then
    echo "render-policy: invalid prefix '$prefix' (letters, digits, . _ - and /; not empty)" >&2
    exit 2
fi
case "/$prefix/" in
    */./* | */../*)
        echo "render-policy: invalid prefix '$prefix' (no . or .. segments)" >&2
        exit 2
        ;;
esac
sed -e "s|@BUCKET@|$bucket|g" -e "s|@PREFIX@|$prefix|g" "$template"
