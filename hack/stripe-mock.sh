#!/usr/bin/env bash
# Start, stop and describe Stripe's official API mock (stripe-mock) for the REST front end.
#   hack/stripe-mock.sh up     start it (idempotent) on loopback and print the client env
#   hack/stripe-mock.sh down   stop it
#   hack/stripe-mock.sh env    print the env a client needs (export lines)
# The port comes from STRIPE_MOCK_PORT (default 12111). The binary is built by
# `bash hack/build-tools.sh stripe-mock` (github.com/stripe/stripe-mock at STRIPE_MOCK_VERSION).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STRIPE_MOCK_BIN="$(tool_path stripe-mock "${STRIPE_MOCK_VERSION}")"
STRIPE_MOCK_DIR="${SF_STATE}/stripe-mock"
STRIPE_MOCK_ENV_FILE="${STRIPE_MOCK_DIR}/env"

stripe_mock_env() {
  [[ -f ${STRIPE_MOCK_ENV_FILE} ]] || log_fatal "stripe-mock is not running (hack/stripe-mock.sh up)"
  cat "${STRIPE_MOCK_ENV_FILE}"
}

stripe_mock_up() {
  if proc_alive stripe-mock && [[ -f ${STRIPE_MOCK_ENV_FILE} ]]; then
    stripe_mock_env
    return 0
  fi
  [[ -x ${STRIPE_MOCK_BIN} ]] || log_fatal "stripe-mock binary missing at ${STRIPE_MOCK_BIN}; build it with: bash hack/build-tools.sh stripe-mock"
  local port="${STRIPE_MOCK_PORT:-12111}"
  if (echo >"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
    log_fatal "port ${port} is already in use; set STRIPE_MOCK_PORT to a free port"
  fi
  mkdir -p "${STRIPE_MOCK_DIR}"
  log_info "starting stripe-mock on 127.0.0.1:${port}"
  # Given only an HTTP address, stripe-mock also opens HTTPS on :12112; pin that to a free
  # loopback port too, so parallel sessions never collide.
  proc_start stripe-mock "${STRIPE_MOCK_BIN}" -http-addr "127.0.0.1:${port}" -https-addr "127.0.0.1:$(free_port)"
  wait_for_port 127.0.0.1 "${port}" 60 stripe-mock
  echo "export SPATIALFORGE_API_STRIPE_API_BASE=http://127.0.0.1:${port}" >"${STRIPE_MOCK_ENV_FILE}"
  stripe_mock_env
}

stripe_mock_down() {
  proc_stop stripe-mock
  rm -f "${STRIPE_MOCK_ENV_FILE}"
  log_info "stripe-mock stopped"
}

case "${1:-}" in
  up) stripe_mock_up ;;
  down) stripe_mock_down ;;
  env) stripe_mock_env ;;
  *) log_fatal "usage: hack/stripe-mock.sh up|down|env" ;;
esac
