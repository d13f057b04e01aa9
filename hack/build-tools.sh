#!/usr/bin/env bash
# Build the real servers the tests talk to from the Go module proxy, once, into
# $SF_CACHE/bin/<tool>-<version>/. Usage: hack/build-tools.sh [kube|etcd|minio|stripe-mock|helm|all]...
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || log_fatal "Go is required to build the control plane (https://go.dev/dl/)"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false} -trimpath" GOTOOLCHAIN=local
WORK="${SF_CACHE}/src"

# build_kube: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl from k8s.io/kubernetes.
build_kube() {
  local out="${SF_BIN}/kube-${KUBE_VERSION}" mod="${WORK}/kube-${KUBE_VERSION}" cmd minor
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
    for cmd in "${cmds[@]}"; do  # records every command's dependencies in go.sum
      go get "k8s.io/kubernetes/cmd/${cmd}@${KUBE_VERSION}" 2>&1 | grep -v '^go: ' || true
    done
    minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=${KUBE_VERSION} -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor}"
    for cmd in "${cmds[@]}"; do
      [[ -x "${out}/${cmd}" ]] && continue
      log_info "  go build ${cmd}"
      go build -ldflags "${ldflags}" -o "${out}/${cmd}.tmp" "k8s.io/kubernetes/cmd/${cmd}" ||
        log_fatal "building ${cmd} ${KUBE_VERSION} failed; check Go ($(go version)) and the module proxy"
      mv "${out}/${cmd}.tmp" "${out}/${cmd}"
    done
  )
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

# build_simple NAME MODULE/PKG VERSION: modules without replace lines build with go install.
build_simple() {
  local name=$1 pkg=$2 version=$3 out="${SF_BIN}/$1-$3"
  if all_present "${out}" "${name}"; then return 0; fi
  log_info "building ${name} ${version}"
  mkdir -p "${out}"
  GOBIN="${out}" go install -ldflags "-s -w" "${pkg}@${version}" ||
    log_fatal "building ${name} ${version} from ${pkg} failed"
  local built
  built="${out}/$(basename "${pkg}")"
  [[ ${built} == "${out}/${name}" ]] || mv "${built}" "${out}/${name}"
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
      minio) build_simple minio github.com/minio/minio "${MINIO_VERSION}" ;;
      stripe-mock) build_simple stripe-mock github.com/stripe/stripe-mock "${STRIPE_MOCK_VERSION}" ;;
      helm) build_simple helm helm.sh/helm/v3/cmd/helm "${HELM_VERSION}" ;;
      *) log_fatal "unknown tool '${t}' (expected kube, etcd, minio, stripe-mock, helm or all)" ;;
    esac
  done
  log_info "tools ready in ${SF_BIN}"
}

main "$@"
