#!/usr/bin/env bash
# A private Docker engine and the project's images, built here with no registry.
#
#   hack/docker.sh up                 install docker.io if missing, start a private dockerd
#   hack/docker.sh down               stop it (images and layers are kept)
#   hack/docker.sh status             whether it answers
#   hack/docker.sh env                the export a shell needs (DOCKER_HOST)
#   hack/docker.sh base               the Debian bookworm Python base image (mmdebstrap), once
#   hack/docker.sh build [IMAGE...]   operator apiserver runner minio redis pause (default: the first three)
#
# The engine's state lives outside the repo ($SF_CACHE/docker). Its bridge and every network it
# makes sit in 198.19.0.0/16 (benchmarking range; the node agent's pod addresses use 198.18/16),
# so no test traffic goes to 10/8, 172.16/12 or 192.168/16.
#
# No registry answers here: the base image is made from Debian packages and passed to the
# Dockerfiles as PYTHON_IMAGE, and pip inside a build reads a wheelhouse the host's pip filled
# (served over HTTP on the bridge address for the length of the build). The host's CA bundle
# therefore never enters an image or a build argument; with a registry and PyPI reachable, the
# Dockerfiles build as they stand (docs/operations.md).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKER_DIR="${SF_CACHE}/docker"
DOCKER_SOCK="${DOCKER_DIR}/docker.sock"
DOCKER_BIP="${SF_DOCKER_BIP:-198.19.0.1/24}"
DOCKER_POOL="${SF_DOCKER_POOL:-198.19.64.0/18}"
BRIDGE_IP="${DOCKER_BIP%/*}"
BASE_IMAGE="${SF_BASE_IMAGE:-spatialforge/python-base:bookworm}"
WHEELHOUSE="${SF_CACHE}/wheelhouse"
TAG="${TAG:-dev}"
PYTHON="${PYTHON:-python3}"
export DOCKER_HOST="unix://${DOCKER_SOCK}"

docker_need_root() {
  [[ $(id -u) -eq 0 ]] || log_fatal "a private Docker engine needs root (dockerd manages mounts, cgroups and iptables); run as root"
}

docker_install() {
  local pkg missing=()
  for pkg in docker.io mmdebstrap iptables; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" || missing+=("${pkg}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log_info "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

docker_answers() { docker info >/dev/null 2>&1; }

docker_up() {
  docker_need_root
  docker_install
  if docker_answers; then return 0; fi
  mkdir -p "${DOCKER_DIR}"/{data,exec}
  local pid="${DOCKER_DIR}/dockerd.pid"
  if [[ -f ${pid} ]] && kill -0 "$(cat "${pid}")" 2>/dev/null; then
    log_info "dockerd (pid $(cat "${pid}")) runs but does not answer yet"
  else
    rm -f "${pid}" "${DOCKER_SOCK}"
    log_info "starting dockerd (state ${DOCKER_DIR}, bridge ${DOCKER_BIP})"
    setsid dockerd --data-root "${DOCKER_DIR}/data" --exec-root "${DOCKER_DIR}/exec" \
      --host "${DOCKER_HOST}" --pidfile "${pid}" --bip "${DOCKER_BIP}" \
      --default-address-pool "base=${DOCKER_POOL},size=24" \
      --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs --log-level warn \
      >>"${DOCKER_DIR}/dockerd.log" 2>&1 </dev/null &
  fi
  local i
  for ((i = 0; i < 300; i++)); do
    docker_answers && { log_info "docker engine up: export DOCKER_HOST=${DOCKER_HOST}"; return 0; }
    sleep 0.2
  done
  log_fatal "dockerd did not answer within 60s; see ${DOCKER_DIR}/dockerd.log"
}

docker_down() {
  local pid="${DOCKER_DIR}/dockerd.pid" p i
  [[ -f ${pid} ]] || return 0
  p="$(cat "${pid}")"
  kill "${p}" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do kill -0 "${p}" 2>/dev/null || break; sleep 0.2; done
  kill -9 "${p}" 2>/dev/null || true
  rm -f "${pid}"
  log_info "docker engine stopped"
}

docker_status() {
  if docker_answers; then
    docker version --format 'docker engine {{.Server.Version}} answers on '"${DOCKER_HOST}"
  else
    echo "no docker engine answers on ${DOCKER_HOST} (hack/docker.sh up)"
    return 1
  fi
}

# The base every Dockerfile here builds FROM when no registry answers: Debian bookworm's Python
# 3.11 with venv and pip, made from Debian's packages.
docker_base() {
  docker_up
  if docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1; then return 0; fi
  command -v mmdebstrap >/dev/null || log_fatal "mmdebstrap missing (apt-get install mmdebstrap)"
  local tar="${DOCKER_DIR}/base-bookworm.tar"
  log_info "making ${BASE_IMAGE} with mmdebstrap (about a minute)"
  # shellcheck disable=SC2016  # "$1" belongs to mmdebstrap's hook shell
  mmdebstrap --quiet --variant=minbase --format=tar \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd \
    --aptopt='Acquire::Languages "none"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "${tar}" http://deb.debian.org/debian || { rm -f "${tar}"; log_fatal "mmdebstrap failed"; }
  docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "${tar}" "${BASE_IMAGE}" >/dev/null
  rm -f "${tar}"
}

# docker_wheels EXTRA...: every wheel the images' `pip install` needs, into the shared wheelhouse.
# pip runs in the base image itself, so environment markers resolve for its Python (3.11.2, not
# the host's), with the host's pip cache and, where PIP_CERT names one, the host's CA bundle
# mounted read-only for that run only.
docker_wheels() {
  mkdir -p "${WHEELHOUSE}" "${HOME}/.cache/pip"
  local reqs mounts=()
  reqs="$("${PYTHON}" - "${REPO_ROOT}/pyproject.toml" "$@" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(dict.fromkeys(p["dependencies"] + [d for e in sys.argv[2:] for d in p["optional-dependencies"][e]])))
PY
)"
  printf '%s\nsetuptools>=69\nwheel\n' "${reqs}" >"${WHEELHOUSE}/.requirements.txt"
  local filled
  filled="${WHEELHOUSE}/.filled-$(sha256sum <"${WHEELHOUSE}/.requirements.txt" | cut -c1-16)"
  if [[ -f ${filled} ]]; then
    log_info "wheelhouse: up to date for [$*]"
    return 0
  fi
  if [[ -n ${PIP_CERT:-} && -f ${PIP_CERT} ]]; then
    mounts+=(-v "${PIP_CERT}:/etc/spatialforge-pip-ca.pem:ro" -e PIP_CERT=/etc/spatialforge-pip-ca.pem)
  fi
  log_info "wheelhouse: dependencies of [$*] for ${BASE_IMAGE}"
  docker run --rm "${mounts[@]}" -v "${WHEELHOUSE}:/wheels" -v "${HOME}/.cache/pip:/root/.cache/pip" \
    -e PIP_DISABLE_PIP_VERSION_CHECK=1 -w /tmp "${BASE_IMAGE}" sh -ec \
    'python -m venv /tmp/v && /tmp/v/bin/pip wheel -q --find-links /wheels --wheel-dir /wheels -r /wheels/.requirements.txt' ||
    log_fatal "pip could not fill the wheelhouse for [$*]"
  touch "${filled}"
}

# with_wheel_server CMD...: serve the wheelhouse on the bridge address while CMD runs.
with_wheel_server() {
  local port="${SF_WHEEL_PORT:-18631}" server rc=0
  # A fixed port: the URL is a build argument, and the legacy builder's cache keys on its value.
  if (echo >"/dev/tcp/${BRIDGE_IP}/${port}") 2>/dev/null; then port="$(free_port)"; fi
  "${PYTHON}" -m http.server --bind "${BRIDGE_IP}" --directory "${WHEELHOUSE}" "${port}" >/dev/null 2>&1 &
  server=$!
  wait_for_port "${BRIDGE_IP}" "${port}" 10 wheel-server
  WHEEL_ARGS=(--build-arg "PIP_NO_INDEX=1" --build-arg "PIP_FIND_LINKS=http://${BRIDGE_IP}:${port}/"
    --build-arg "PIP_TRUSTED_HOST=${BRIDGE_IP}")
  "$@" || rc=$?
  kill "${server}" 2>/dev/null || true
  return "${rc}"
}

# build_one IMAGE: spatialforge/IMAGE:$TAG from its Dockerfile, timed.
build_one() {
  local image=$1 start=${SECONDS} args=()
  case ${image} in
    # Dependency stages get tags of their own (*-deps, runner-base), so the prune below never
    # drops them: a source edit rebuilds seconds of layers, not the gigabytes under them.
    operator-deps) args=(-f "${REPO_ROOT}/Dockerfile.operator" --target deps "${WHEEL_ARGS[@]}") ;;
    operator | apiserver)
      build_one operator-deps
      args=(-f "${REPO_ROOT}/Dockerfile.operator" --target "${image}" "${WHEEL_ARGS[@]}") ;;
    runner-deps) args=(-f "${REPO_ROOT}/Dockerfile.runner" --target deps "${WHEEL_ARGS[@]}") ;;
    runner-base) args=(-f "${REPO_ROOT}/Dockerfile.runner" --target runtime "${WHEEL_ARGS[@]}") ;;
    runner)
      build_one runner-deps
      build_one runner-base
      args=(-f "${REPO_ROOT}/Dockerfile.runner" "${WHEEL_ARGS[@]}") ;;
    minio) build_minio; return ;;
    redis | pause) args=(-f "${HACK_DIR}/images/Dockerfile.${image}") ;;
    *) log_fatal "unknown image '${image}' (operator, apiserver, runner, minio, redis or pause)" ;;
  esac
  log_info "building spatialforge/${image}:${TAG}"
  docker build -q "${args[@]}" --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" \
    --build-arg "REVISION=$(git -C "${REPO_ROOT}" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "spatialforge/${image}:${TAG}" "${REPO_ROOT}" 2>&1 >/dev/null | quiet_legacy_builder ||
    log_fatal "docker build of ${image} failed (rerun without -q: docker build ${args[*]} .)"
  log_info "built spatialforge/${image}:${TAG} in $((SECONDS - start)) s"
  # Older builds of this tag are now dangling: gigabytes for the runner. The tagged stages keep the
  # cache; the age filter spares the intermediate images of a build running beside this one.
  docker image prune -f --filter until=15m >/dev/null
}

# Debian's Docker 20.10 builds with the legacy builder (no buildx, so no BuildKit to fetch a
# frontend image from a registry) and says so on every build: drop that notice, keep the rest.
quiet_legacy_builder() {
  grep -v -E '^(DEPRECATED: The legacy builder|\s+Install the buildx|\s+https://docs.docker.com/go/buildx/|$)' >&2 || true
}

# MinIO: the binary hack/build-tools.sh builds from the Go module proxy, on the base image.
build_minio() {
  local bin ctx
  "${HACK_DIR}/build-tools.sh" minio
  bin="$(tool_path minio "${MINIO_VERSION}")"
  ctx="$(mktemp -d)"
  cp "${bin}" "${ctx}/minio"
  cp "${HACK_DIR}/images/Dockerfile.minio" "${ctx}/Dockerfile"
  docker build -q --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" -t "spatialforge/minio:${TAG}" "${ctx}" 2>&1 >/dev/null |
    quiet_legacy_builder ||
    { rm -rf "${ctx}"; log_fatal "docker build of minio failed"; }
  rm -rf "${ctx}"
  log_info "built spatialforge/minio:${TAG}"
}

docker_build() {
  local images=("$@") image extras=()
  [[ ${#images[@]} -eq 0 ]] && images=(operator apiserver runner)
  docker_base
  for image in "${images[@]}"; do
    case ${image} in
      operator | apiserver | runner) extras+=("${image}") ;;
    esac
  done
  WHEEL_ARGS=()
  if [[ ${#extras[@]} -gt 0 ]]; then
    docker_wheels "${extras[@]}"
    with_wheel_server build_all "${images[@]}"
  else
    build_all "${images[@]}"
  fi
}

build_all() {
  local image
  for image in "$@"; do build_one "${image}"; done
}

case "${1:-}" in
  up) docker_up ;;
  down) docker_down ;;
  status) docker_status ;;
  env) echo "export DOCKER_HOST=${DOCKER_HOST}" ;;
  base) docker_base ;;
  build) shift; docker_build "$@" ;;
  *) echo "usage: $0 up|down|status|env|base|build [operator|apiserver|runner|minio|redis|pause]..." >&2; exit 2 ;;
esac
