#!/usr/bin/env bash
# Starts the whole product on this machine: a private Redis (unless GATEWAY_REDIS_URL is set),
# the offline model (unless GATEWAY_UPSTREAM_BASE_URL is set), one worker, and the gateway on
# port 8000 in the foreground. Ctrl-C stops everything. Without GATEWAY_API_KEYS the gateway
# runs open, so it listens on 127.0.0.1 only (see docs/security-defaults.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# Logs for people here (docs/logging.md); deployments keep the default, one JSON object a line.
export GATEWAY_LOG_FORMAT=${GATEWAY_LOG_FORMAT:-console}
RUN_DIR=.run
mkdir -p "$RUN_DIR/redis"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if [ -z "${GATEWAY_REDIS_URL:-}" ]; then
  port=${REDIS_PORT:-6380}
  redis-server --port "$port" --bind 127.0.0.1 --dir "$RUN_DIR/redis" --appendonly yes \
    --appendfsync everysec --maxmemory-policy noeviction --save "" \
    --logfile "$PWD/$RUN_DIR/redis.log" &
  pids+=($!)
  export GATEWAY_REDIS_URL="redis://127.0.0.1:$port/0"
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
fi

if [ -z "${GATEWAY_UPSTREAM_BASE_URL:-}" ]; then
  "$VENV/bin/offline-model" --port "${OFFLINE_PORT:-8001}" &
  pids+=($!)
  export GATEWAY_UPSTREAM_BASE_URL="http://127.0.0.1:${OFFLINE_PORT:-8001}/v1"
fi

"$VENV/bin/gateway-worker" > "$RUN_DIR/worker.log" 2>&1 &
pids+=($!)

echo "gateway on http://127.0.0.1:${GATEWAY_PORT:-8000} (redis $GATEWAY_REDIS_URL, upstream $GATEWAY_UPSTREAM_BASE_URL)"
echo "worker log: $RUN_DIR/worker.log"
"$VENV/bin/gateway" --host "${GATEWAY_HOST:-127.0.0.1}" --port "${GATEWAY_PORT:-8000}" &
pids+=($!)
wait "${pids[-1]}"
