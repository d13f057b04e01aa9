#!/usr/bin/env bash
# Upgrade the SpatialForge CRDs in a cluster. Helm installs a chart's crds/ once and never
# upgrades or deletes them, so run this BEFORE `helm upgrade` whenever the CRDs changed.
#
#   hack/crds-upgrade.sh [--check] [--dir DIR]
#     --check   only show what would change (kubectl diff); exit 1 when something would
#     --dir     where the CRD YAML is (default: charts/spatialforge/crds, identical to crds/)
#
# Uses $KUBECTL (default: kubectl on PATH, else the project's cached build) and the current
# kubeconfig ($KUBECONFIG). Server-side apply with --force-conflicts takes the fields over from
# Helm's client-side apply; the CRDs' stored versions are checked afterwards, so an upgrade that
# would orphan stored objects is reported instead of silently succeeding.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

crds_kubectl() {
  if [[ -n ${KUBECTL:-} ]]; then
    printf '%s' "${KUBECTL}"
  elif command -v kubectl >/dev/null; then
    command -v kubectl
  else
    local cached
    cached="${SF_BIN}/kube-${KUBE_VERSION}/kubectl"
    [[ -x ${cached} ]] || log_fatal "kubectl not found: put it on PATH, set KUBECTL, or run hack/build-tools.sh kube"
    printf '%s' "${cached}"
  fi
}

main() {
  local check=0 dir="${REPO_ROOT}/charts/spatialforge/crds" kc
  while [[ $# -gt 0 ]]; do
    case $1 in
      --check) check=1 ;;
      --dir) dir=$2; shift ;;
      -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; return 0 ;;
      *) log_fatal "unknown argument: $1" ;;
    esac
    shift
  done
  kc="$(crds_kubectl)"
  local files=("${dir}"/*.yaml)
  [[ -f ${files[0]} ]] || log_fatal "no CRD YAML in ${dir}"

  if (( check )); then
    local rc=0
    "${kc}" diff --server-side --force-conflicts -f "${dir}" || rc=$?
    (( rc <= 1 )) || log_fatal "kubectl diff failed (${rc})"
    if (( rc == 1 )); then log_info "CRDs differ from ${dir}"; else log_info "CRDs are up to date"; fi
    return "${rc}"
  fi

  log_info "applying ${#files[@]} CRDs from ${dir}"
  "${kc}" apply --server-side --force-conflicts --field-manager=spatialforge-crds -f "${dir}"
  local f name
  for f in "${files[@]}"; do
    name="$(sed -n 's/^  name: //p' "${f}" | head -n1)"
    "${kc}" wait --for=condition=Established "crd/${name}" --timeout=60s >/dev/null
    # Every version still stored in etcd must still be served, or those objects become unreadable.
    local stored served v
    stored="$("${kc}" get crd "${name}" -o jsonpath='{.status.storedVersions[*]}')"
    served="$("${kc}" get crd "${name}" -o jsonpath='{range .spec.versions[?(@.served==true)]}{.name} {end}')"
    for v in ${stored}; do
      [[ " ${served} " == *" ${v} "* ]] ||
        log_fatal "${name}: stored version ${v} is no longer served; migrate objects first (docs/operations.md)"
    done
    log_info "${name}: established; stored versions: ${stored}"
  done
}

main "$@"
