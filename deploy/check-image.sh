#!/usr/bin/env bash
# Build the CPU image, run it as Kubernetes would (read-only root, writable caches), wait
# for /health, embed one text, then send SIGTERM during a long request and check the
# drain: /health 503 and /ping 200 on new connections, the request answered, exit 0.
#
#   ./deploy/check-image.sh [docker|podman]     (default: the first one installed)
#
# Environment: TORCH_WHEELS (a folder of the build context holding torch's CPU wheel,
# default deploy/wheels, filled from /opt/wheels where that has one), TORCH_INDEX_URL
# (PyTorch's CPU index or a mirror), BUILD_OPTS (more build options, e.g. a --volume for
# a CA bundle), RUN_OPTS (more run options, e.g. --ulimit values a sandbox allows),
# PODMAN_RUNTIME (default runc), PORT (default 18080).
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${1:-}"
if [ -z "$engine" ]; then
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null; then engine="$candidate"; break; fi
  done
fi
[ -n "$engine" ] || { echo "no container engine (docker or podman) found" >&2; exit 2; }
tag="cenote:check"
port="${PORT:-18080}"
url="http://127.0.0.1:$port"
run=("$engine")
build=(build -t "$tag")
if [ "$engine" = podman ]; then
  run+=(--runtime "${PODMAN_RUNTIME:-runc}")
  build+=(--format docker)  # podman's OCI format drops HEALTHCHECK
  # Podman's default limits (1048576 files, 4194304 processes) fail to apply where the
  # machine caps them lower ("error setting rlimit"); these are ample for the server.
  RUN_OPTS="${RUN_OPTS---ulimit nofile=16384:16384 --ulimit nproc=8192:8192}"
fi
wheels="${TORCH_WHEELS:-deploy/wheels}"
if ! ls "$wheels"/torch-*.whl >/dev/null 2>&1 && [ "$wheels" = deploy/wheels ]; then
  for wheel in /opt/wheels/torch-*+cpu-cp311-*.whl; do
    if [ -f "$wheel" ]; then cp "$wheel" deploy/wheels/; fi
  done
fi
build+=(--build-arg "TORCH_WHEELS=$wheels")
if [ -n "${TORCH_INDEX_URL:-}" ]; then build+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"); fi
# shellcheck disable=SC2206  # BUILD_OPTS is split into words on purpose
build+=(${BUILD_OPTS:-})

echo "== build ($engine)"
start=$SECONDS
"${run[@]}" "${build[@]}" .
echo "built in $((SECONDS - start)) s: $("${run[@]}" image inspect -f '{{.Size}}' "$tag") bytes"
healthcheck="$("${run[@]}" image inspect -f '{{json .Config.Healthcheck}}' "$tag")"
echo "HEALTHCHECK: $healthcheck"
case "$healthcheck" in *"/health"*) ;; *) echo "the image has no HEALTHCHECK" >&2; exit 1 ;; esac

echo "== run"
writable=exec,mode=1777
# shellcheck disable=SC2086  # RUN_OPTS is split into words on purpose
container="$("${run[@]}" run -d --read-only --tmpfs "/tmp:$writable" \
  --tmpfs "/home/cenote/.cache:$writable" --tmpfs "/models/hf:$writable" \
  -p "127.0.0.1:$port:8000" ${RUN_OPTS:-} "$tag")"
trap '"${run[@]}" rm -f "$container" >/dev/null 2>&1 || true' EXIT
start=$SECONDS
until curl -fsS "$url/health" >/dev/null 2>&1; do
  if [ $((SECONDS - start)) -gt 300 ] || \
     [ "$("${run[@]}" inspect -f '{{.State.Running}}' "$container")" != true ]; then
    echo "the container did not become healthy:" >&2
    "${run[@]}" logs "$container" >&2
    exit 1
  fi
  sleep 1
done
echo "healthy after $((SECONDS - start)) s"
test "$("${run[@]}" inspect -f '{{.Config.User}}' "$container")" = "cenote"
echo "user: cenote"
curl -fsS "$url/v1/embeddings" -H 'Content-Type: application/json' \
  -d '{"input": "A container that embeds."}' | python3 -c \
  'import json, sys; v = json.load(sys.stdin)["data"][0]["embedding"]; assert len(v) == 384; print("embedding ok:", len(v), "dims")'

echo "== drain"
body="$(mktemp)"
answer="$(mktemp)"
python3 -c 'import json; print(json.dumps({"input": [f"Passage {i}: " + "a rather long sentence about containers " * 40 for i in range(256)]}))' > "$body"
curl -sS -o "$answer" -w '%{http_code}' "$url/v1/embeddings" \
  -H 'Content-Type: application/json' -d @"$body" > "$answer.status" &
request=$!
sleep 1
"${run[@]}" kill --signal TERM "$container" >/dev/null
sleep 1
health="$(curl -s -o /dev/null -w '%{http_code}' "$url/health" || true)"
ping="$(curl -s -o /dev/null -w '%{http_code}' "$url/ping" || true)"
if kill -0 "$request" 2>/dev/null; then in_flight=yes; else in_flight=no; fi
wait "$request" || true
status="$(cat "$answer.status")"
echo "while draining: /health $health, /ping $ping (request still in flight: $in_flight)"
echo "request in flight at SIGTERM answered: $status"
"${run[@]}" wait "$container" >/dev/null
echo "exit code after SIGTERM: $("${run[@]}" inspect -f '{{.State.ExitCode}}' "$container")"
"${run[@]}" logs "$container" 2>&1 | tail -n 5
rm -f "$body" "$answer" "$answer.status"
test "$health" = 503 && test "$ping" = 200 && test "$status" = 200
