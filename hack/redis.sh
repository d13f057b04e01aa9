#!/usr/bin/env bash
# Start, stop and describe a local Redis (Debian's redis-server) for the REST front end.
#   hack/redis.sh up     start it (idempotent) on loopback and print the client env
#   hack/redis.sh down   stop it (it saves its data to $SF_STATE/redis/dump.rdb first)
#   hack/redis.sh env    print the env a client needs (export lines)
# The port comes from REDIS_PORT (default 16379); REDIS_SERVER overrides the binary.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REDIS_BIN="${REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}"
REDIS_DIR="${SF_STATE}/redis"
REDIS_ENV_FILE="${REDIS_DIR}/env"

redis_env() {
  [[ -f ${REDIS_ENV_FILE} ]] || log_fatal "Redis is not running (hack/redis.sh up)"
  cat "${REDIS_ENV_FILE}"
}

redis_up() {
  if proc_alive redis && [[ -f ${REDIS_ENV_FILE} ]]; then
    redis_env
    return 0
  fi
  [[ -x ${REDIS_BIN} ]] || log_fatal "redis-server not found; install it with: apt-get install redis-server"
  local port="${REDIS_PORT:-16379}"
  if (echo >"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
    log_fatal "port ${port} is already in use; set REDIS_PORT to a free port"
  fi
  mkdir -p "${REDIS_DIR}"
  log_info "starting Redis on 127.0.0.1:${port} (data in ${REDIS_DIR})"
  # Loopback only, no protected-mode surprises, snapshot on shutdown so a restart keeps data.
  proc_start redis "${REDIS_BIN}" --bind 127.0.0.1 --port "${port}" --dir "${REDIS_DIR}" \
    --dbfilename dump.rdb --save "3600 1" --appendonly no --daemonize no --protected-mode yes \
    --logfile ""
  wait_for_port 127.0.0.1 "${port}" 30 redis
  echo "export SPATIALFORGE_API_REDIS_URL=redis://127.0.0.1:${port}/0" >"${REDIS_ENV_FILE}"
  redis_env
}

redis_down() {
  proc_stop redis
  rm -f "${REDIS_ENV_FILE}"
  log_info "Redis stopped"
}

case "${1:-}" in
  up) redis_up ;;
  down) redis_down ;;
  env) redis_env ;;
  *) log_fatal "usage: hack/redis.sh up|down|env" ;;
esac
