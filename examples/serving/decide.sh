#!/bin/sh
# One decision over HTTP with curl; start the service first with `nextbest serve`.
# Usage: examples/serving/decide.sh USER_ID   (NEXTBEST_URL defaults to http://127.0.0.1:3000)
set -eu
URL="${NEXTBEST_URL:-http://127.0.0.1:3000}"
curl -sS --fail-with-body -X POST "$URL/decide" -H 'Content-Type: application/json' -d "{
  \"user_id\": \"$1\",
  \"context\": {\"campaign_id\": \"readme\", \"channels\": [\"email\", \"push\", \"inapp\"]},
  \"explain\": false
}"
