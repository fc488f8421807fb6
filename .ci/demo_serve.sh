#!/usr/bin/env bash
# The end of `make demo`: the model service from the command line: serve, a key, a prediction over each
# protocol, a refused call, then the audit of those calls.
set -euo pipefail
port=${AIINFRA_DEMO_PORT:-8765}
aiinfra serve --port "$port" & server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break; sleep 0.3; done
secret=$(aiinfra keys create --name demo --role predict --expires 1d --json | python -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
row='{"month": 6, "day_of_week": 2, "dep_hour": 8, "distance": 1400, "plane_age": 10, "temp": 70, "humid": 60, "wind_speed": 8, "precip": 0, "pressure": 1015, "visib": 10, "carrier": "UA", "origin": "EWR", "dest": "ORD"}'
echo "V1 prediction:"; curl -s -H "Authorization: Bearer $secret" -H "Content-Type: application/json" -d "{\"instances\": [$row]}" "http://127.0.0.1:$port/v1/models/flights-delay:predict"; echo
echo "V2 model metadata (inputs):"; curl -s -H "Authorization: Bearer $secret" "http://127.0.0.1:$port/v2/models/flights-delay" | python -c 'import json,sys; print([i["name"] for i in json.load(sys.stdin)["inputs"]])'
echo "without a key:"; curl -s "http://127.0.0.1:$port/v2/models/flights-delay"; echo
kill -TERM $server; wait $server || true; trap - EXIT
aiinfra audit --limit 6
aiinfra services
