#!/usr/bin/env bash
# Build the real servers the tests talk to from the Go module proxy, once, into
# $SF_CACHE/bin/<tool>-<version>/. Usage: hack/build-tools.sh [kube|etcd|minio|stripe-mock|helm|node|all]...
# `node` is what a real node needs beside the plane (hack/e2e.sh): kubelet and kube-proxy,
# containerd 2, the CNI plugins, crictl and CoreDNS; `all` leaves it out (the suite needs none).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || log_fatal "Go is required to build the control plane (https://go.dev/dl/)"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath" GOTOOLCHAIN=local
WORK="${SF_CACHE}/src"

# build_kube: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl from k8s.io/kubernetes.
build_kube() {
  local out="${SF_BIN}/kube-${KUBE_VERSION}" mod="${WORK}/kube-${KUBE_VERSION}"
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  if all_present "${out}" "${cmds[@]}"; then return 0; fi
  log_info "building Kubernetes ${KUBE_VERSION} (first time only; ~15 min on 2 cores)"
  mkdir -p "${mod}" "${out}"
  local staging="v0.${KUBE_VERSION#v1.}"
  (
    cd "${mod}" || exit 1
    local fetched cause
    if ! fetched="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" 2>&1)"; then
      # The proxy's own answer (version unknown, or a network error) is the useful part.
      cause="$(printf '%s\n' "${fetched}" | sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' | sed 's/\\n\\t/ /g')"
      log_fatal "k8s.io/kubernetes ${KUBE_VERSION} cannot be fetched from the Go module proxy ($(go env GOPROXY)): ${cause:-${fetched}}; check KUBE_VERSION in hack/lib.sh and the network"
    fi
    local gomod
    gomod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/${KUBE_VERSION}.mod"
    {
      echo "module spatialforge.local/kubebuild"
      echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
      echo "require k8s.io/kubernetes ${KUBE_VERSION}"
      # k8s.io/kubernetes lists its staging modules as v0.0.0 with local replaces that do not
      # apply to a dependent module: pin each to the matching release.
      grep -E '^\s*k8s.io/[^ ]+ => ./staging/' "${gomod}" | awk -v v="${staging}" '{print "replace " $1 " => " $1 " " v}'
    } >go.mod
    kube_go_build "${out}" "${cmds[@]}"
  )
}

# kube_go_build OUT CMD...: in the wrapper module's directory, each k8s.io/kubernetes command
# (its dependencies recorded in go.sum) into OUT, with the version stamped as a release would.
kube_go_build() {
  local out=$1 cmd minor ldflags
  shift
  minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=${KUBE_VERSION} -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor}"
  for cmd in "$@"; do
    [[ -x "${out}/${cmd}" ]] && continue
    go get "k8s.io/kubernetes/cmd/${cmd}@${KUBE_VERSION}" 2>&1 | grep -v '^go: ' || true
    log_info "  go build ${cmd}"
    go build -ldflags "${ldflags}" -o "${out}/${cmd}.tmp" "k8s.io/kubernetes/cmd/${cmd}" ||
      log_fatal "building ${cmd} ${KUBE_VERSION} failed; check Go ($(go version)) and the module proxy"
    mv "${out}/${cmd}.tmp" "${out}/${cmd}"
  done
}

# build_kube_node: kubelet and kube-proxy, from the module directory build_kube prepared (its
# dependencies are already compiled, so each takes a few minutes, not fifteen).
build_kube_node() {
  local out="${SF_BIN}/kube-${KUBE_VERSION}"
  all_present "${out}" kubelet kube-proxy && return 0
  build_kube
  (cd "${WORK}/kube-${KUBE_VERSION}" && kube_go_build "${out}" kubelet kube-proxy)
}

# build_install NAME VERSION PKG@VERSION...: commands of one module without replace lines (go
# install refuses those) into $SF_BIN/NAME-VERSION, each named for its package.
build_install() {
  local name=$1 version=$2 out="${SF_BIN}/$1-$2" pkg missing=()
  shift 2
  for pkg in "$@"; do [[ -x "${out}/$(basename "${pkg%@*}")" ]] || missing+=("${pkg}"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log_info "building ${name} ${version}: ${missing[*]##*/}"
  mkdir -p "${out}"
  GOBIN="${out}" go install -tags "${BUILD_TAGS:-}" -ldflags "-s -w" "${missing[@]}" ||
    log_fatal "building ${name} ${version} failed"
}

# build_runc: containerd 2's specs need a newer runc than Debian's 1.1 ("can't get final child's
# PID from pipe"); runc links libseccomp through cgo, for the pods' RuntimeDefault profiles.
build_runc() {
  local out="${SF_BIN}/runc-${RUNC_VERSION}"
  if all_present "${out}" runc; then return 0; fi
  if ! dpkg-query -W -f='${Status}' libseccomp-dev 2>/dev/null | grep -q "install ok installed"; then
    [[ $(id -u) -eq 0 ]] || log_fatal "runc needs libseccomp-dev (as root: apt-get install libseccomp-dev)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libseccomp-dev pkg-config gcc libc6-dev >/dev/null
  fi
  log_info "building runc ${RUNC_VERSION} (cgo, seccomp)"
  mkdir -p "${out}"
  CGO_ENABLED=1 GOBIN="${out}" go install -tags seccomp -ldflags "-s -w" \
    "github.com/opencontainers/runc@${RUNC_VERSION}" || log_fatal "building runc ${RUNC_VERSION} failed"
}

build_node() {
  build_kube_node
  BUILD_TAGS="no_btrfs no_devmapper no_zfs" build_install containerd "${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}"
  local p plugins=()
  for p in main/bridge main/loopback ipam/host-local meta/portmap meta/firewall; do
    plugins+=("github.com/containernetworking/plugins/plugins/${p}@${CNI_PLUGINS_VERSION}")
  done
  build_install cni-plugins "${CNI_PLUGINS_VERSION}" "${plugins[@]}"
  build_runc
  build_install crictl "${CRICTL_VERSION}" "sigs.k8s.io/cri-tools/cmd/crictl@${CRICTL_VERSION}"
  build_install coredns "${COREDNS_VERSION}" "github.com/coredns/coredns@${COREDNS_VERSION}"
}

# build_etcd: etcd server from go.etcd.io/etcd/server/v3 through a two-line main.
build_etcd() {
  local out="${SF_BIN}/etcd-${ETCD_VERSION}" mod="${WORK}/etcd-${ETCD_VERSION}"
  if all_present "${out}" etcd; then return 0; fi
  log_info "building etcd ${ETCD_VERSION}"
  mkdir -p "${mod}" "${out}"
  (
    cd "${mod}" || exit 1
    cat >main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    printf 'module spatialforge.local/etcdbuild\ngo %s\n' "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')" >go.mod
    go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >/dev/null 2>&1 ||
      log_fatal "go.etcd.io/etcd/server/v3 ${ETCD_VERSION} cannot be fetched from the Go module proxy ($(go env GOPROXY))"
    go mod tidy >/dev/null
    go build -ldflags "-s -w" -o "${out}/etcd.tmp" . || log_fatal "building etcd ${ETCD_VERSION} failed"
    mv "${out}/etcd.tmp" "${out}/etcd"
  )
}

all_present() {
  local dir=$1; shift
  local f
  for f in "$@"; do [[ -x "${dir}/${f}" ]] || return 1; done
}

main() {
  local targets=("$@")
  [[ ${#targets[@]} -eq 0 || ${targets[0]} == all ]] && targets=(etcd kube minio stripe-mock helm)
  local t
  for t in "${targets[@]}"; do
    case "${t}" in
      kube) build_kube ;;
      etcd) build_etcd ;;
      minio) build_install minio "${MINIO_VERSION}" "github.com/minio/minio@${MINIO_VERSION}" ;;
      stripe-mock) build_install stripe-mock "${STRIPE_MOCK_VERSION}" "github.com/stripe/stripe-mock@${STRIPE_MOCK_VERSION}" ;;
      helm) build_install helm "${HELM_VERSION}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" ;;
      node) build_node ;;
      *) log_fatal "unknown tool '${t}' (expected kube, etcd, minio, stripe-mock, helm, node or all)" ;;
    esac
  done
  log_info "tools ready in ${SF_BIN}"
}

main "$@"
