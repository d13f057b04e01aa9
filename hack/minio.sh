#!/usr/bin/env bash
# Start, stop and describe a local MinIO (S3) server for tests and the local demo.
#   hack/minio.sh up     start it (idempotent) on loopback and print the client env
#   hack/minio.sh down   stop it (the data dir stays under $SF_STATE/minio)
#   hack/minio.sh env    print the env a client needs (export lines)
# Root credentials come from MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (dev defaults below);
# the port from MINIO_PORT (default 19000). The binary is built by `hack/build-tools.sh minio`.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MINIO_BIN="$(tool_path minio "${MINIO_VERSION}")"
MINIO_DIR="${SF_STATE}/minio"
MINIO_ENV_FILE="${MINIO_DIR}/env"

minio_env() {
  [[ -f ${MINIO_ENV_FILE} ]] || log_fatal "MinIO is not running (hack/minio.sh up)"
  cat "${MINIO_ENV_FILE}"
}

minio_up() {
  if proc_alive minio && [[ -f ${MINIO_ENV_FILE} ]]; then
    minio_env
    return 0
  fi
  [[ -x ${MINIO_BIN} ]] || log_fatal "MinIO binary missing at ${MINIO_BIN}; build it with: bash hack/build-tools.sh minio"
  local user="${MINIO_ROOT_USER:-spatialforge}" pass="${MINIO_ROOT_PASSWORD:-spatialforge-dev-secret}"
  local port="${MINIO_PORT:-19000}" console
  (( ${#pass} >= 8 )) || log_fatal "MINIO_ROOT_PASSWORD must be at least 8 characters"
  if (echo >"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
    log_fatal "port ${port} is already in use; set MINIO_PORT to a free port"
  fi
  console="$(free_port)"
  mkdir -p "${MINIO_DIR}/data"
  log_info "starting MinIO on 127.0.0.1:${port} (data in ${MINIO_DIR}/data)"
  MINIO_ROOT_USER="${user}" MINIO_ROOT_PASSWORD="${pass}" MINIO_BROWSER=off \
    MINIO_UPDATE=off MINIO_CI_CD=1 \
    proc_start minio "${MINIO_BIN}" server --quiet --address "127.0.0.1:${port}" \
    --console-address "127.0.0.1:${console}" "${MINIO_DIR}/data"
  wait_for_port 127.0.0.1 "${port}" 60 minio
  local i
  for ((i = 0; i < 300; i++)); do
    if python3 -c "import sys,urllib.request; urllib.request.urlopen('http://127.0.0.1:${port}/minio/health/ready', timeout=1)" 2>/dev/null; then
      break
    fi
    proc_alive minio || log_fatal "MinIO exited (see ${SF_STATE}/logs/minio.log)"
    sleep 0.1
  done
  cat >"${MINIO_ENV_FILE}" <<ENV
export SPATIALFORGE_S3_ENDPOINT=http://127.0.0.1:${port}
export AWS_ACCESS_KEY_ID=${user}
export AWS_SECRET_ACCESS_KEY=${pass}
export AWS_REGION=us-east-1
ENV
  minio_env
}

minio_down() {
  proc_stop minio
  rm -f "${MINIO_ENV_FILE}"
  log_info "MinIO stopped"
}

case "${1:-}" in
  up) minio_up ;;
  down) minio_down ;;
  env) minio_env ;;
  *) log_fatal "usage: hack/minio.sh up|down|env" ;;
esac
