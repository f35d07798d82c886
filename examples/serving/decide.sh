#!/bin/sh
# One decision over HTTP with curl; start the service first with `nextbest serve`.
# Usage: examples/serving/decide.sh USER_ID   (NEXTBEST_URL defaults to http://127.0.0.1:3000;
# NEXTBEST_API_KEY is sent when set, for a service that asks for a key)
set -eu
URL="${NEXTBEST_URL:-http://127.0.0.1:3000}"
curl -sS --fail-with-body -X POST "$URL/decide" -H 'Content-Type: application/json' \
  -H "X-API-Key: ${NEXTBEST_API_KEY:-}" -d "{
  \"user_id\": \"$1\",
  \"context\": {\"campaign_id\": \"readme\", \"channels\": [\"email\", \"push\", \"inapp\"]},
  \"explain\": false
}"
