#!/usr/bin/env bash
# Build the CPU image, start it, wait for /health, embed one text, stop it (SIGTERM).
# Needs a running container engine: ./deploy/check-image.sh [docker|podman]
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${1:-docker}"
tag="cenote:check"
port="${PORT:-18080}"
"$engine" build -t "$tag" .
container="$("$engine" run -d -p "127.0.0.1:$port:8000" "$tag")"
trap '"$engine" rm -f "$container" >/dev/null' EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
  sleep 2
done
curl -fsS "http://127.0.0.1:$port/v1/embeddings" -H 'Content-Type: application/json' \
  -d '{"input": "A container that embeds."}' | python3 -c \
  'import json, sys; v = json.load(sys.stdin)["data"][0]["embedding"]; assert len(v) == 384; print("embedding ok:", len(v), "dims")'
test "$("$engine" inspect -f '{{.Config.User}}' "$container")" = "cenote"
"$engine" stop -t 60 "$container" >/dev/null
echo "exit code after SIGTERM: $("$engine" inspect -f '{{.State.ExitCode}}' "$container")"
