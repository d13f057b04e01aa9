#!/usr/bin/env bash
# Install what the project needs on this machine: a few Debian packages and the Python
# package with every extra. Idempotent; fast when everything is there.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON="${PYTHON:-python3}"
# libusb: open3d imports it; redis-server: the front end's store; openssl/curl: cluster.sh;
# chromium/chromium-driver: the console's browser tests (tests/apiserver/test_console.py).
DEBS=(libusb-1.0-0 libgomp1 openssl curl redis-server chromium chromium-driver)

install_debs() {
  local missing=() pkg
  for pkg in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" || missing+=("${pkg}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null; then
    log_fatal "missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})"
  fi
  local SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  log_info "installing Debian packages: ${missing[*]}"
  ${SUDO} apt-get update -qq
  DEBIAN_FRONTEND=noninteractive ${SUDO} apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python() {
  log_info "installing spatialforge[all] (editable) with ${PYTHON}"
  "${PYTHON}" -m pip install -q --disable-pip-version-check -e "${REPO_ROOT}[all]" 2>&1 |
    grep -v -E "^WARNING: Running pip as the 'root' user|^\[notice\]" || true
  "${PYTHON}" -c 'import spatialforge.operator.handlers, spatialforge.devcluster' ||
    log_fatal "the spatialforge install is broken; see the pip output above"
}

install_debs
install_python
