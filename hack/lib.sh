#!/usr/bin/env bash
# Shared helpers for hack/ scripts. Source it; functions are prefixed by concern.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"

# Pinned versions of every server the project builds. Bump here, nowhere else.
KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
STRIPE_MOCK_VERSION="${STRIPE_MOCK_VERSION:-v0.203.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# A real node beside the plane (hack/e2e.sh): containerd 2 (Kubernetes 1.36 needs 2.0+), the CNI
# plugins, runc, crictl and CoreDNS.
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-v1.5.3}"
CNI_PLUGINS_VERSION="${CNI_PLUGINS_VERSION:-v1.10.0}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"

# Binaries are cached outside the repo, keyed by version, so a clean clone reuses them.
SF_CACHE="${SPATIALFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spatialforge}"
SF_BIN="${SF_CACHE}/bin"
# Runtime state (data dirs, logs, pids, kubeconfig) lives in the checkout, ignored by git.
SF_STATE="${SPATIALFORGE_STATE:-${REPO_ROOT}/.local}"

log_info() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
log_fatal() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# tool_path NAME VERSION -> path of the cached binary (may not exist yet)
tool_path() { printf '%s/%s-%s/%s' "${SF_BIN}" "$1" "$2" "$1"; }

# wait_for_port HOST PORT SECONDS NAME
wait_for_port() {
  local host=$1 port=$2 secs=$3 name=$4 i
  for ((i = 0; i < secs * 10; i++)); do
    if (echo >"/dev/tcp/${host}/${port}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log_fatal "${name} did not listen on ${host}:${port} within ${secs}s (see ${SF_STATE}/logs/${name}.log)"
}

# free_port -> an unused loopback TCP port
free_port() { free_ports 1; }

# free_ports N -> N distinct unused loopback TCP ports on one line (all bound at once, so distinct)
free_ports() {
  python3 -c 'import socket,sys
socks=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# proc_start NAME CMD... : start a daemon, pid in $SF_STATE/pids/NAME.pid, log in logs/NAME.log
proc_start() {
  local name=$1; shift
  mkdir -p "${SF_STATE}/pids" "${SF_STATE}/logs"
  setsid "$@" >>"${SF_STATE}/logs/${name}.log" 2>&1 </dev/null &
  echo $! >"${SF_STATE}/pids/${name}.pid"
}

proc_alive() {
  local pidfile="${SF_STATE}/pids/$1.pid"
  [[ -f ${pidfile} ]] && kill -0 "$(cat "${pidfile}")" 2>/dev/null
}

# proc_stop NAME: TERM the process group, then KILL after a grace period
proc_stop() {
  local pidfile="${SF_STATE}/pids/$1.pid" pid i
  [[ -f ${pidfile} ]] || return 0
  pid=$(cat "${pidfile}")
  if kill -0 "${pid}" 2>/dev/null; then
    kill -TERM -- "-${pid}" 2>/dev/null || kill -TERM "${pid}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-${pid}" 2>/dev/null || kill -KILL "${pid}" 2>/dev/null || true
  fi
  rm -f "${pidfile}"
}
