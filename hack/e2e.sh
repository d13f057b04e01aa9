#!/usr/bin/env bash
# End to end on real containers, on this machine: the three images built from the Dockerfiles,
# a real kubelet with containerd 2 joined to the project's own control plane, the chart installed
# with its defaults, both samples, the REST flow, synchronous depth through a DepthPool, the
# runner-status policy against a real projected token, and faults on real pods. The last line is
# one JSON object (hack/e2e_checks.py).
#
#   hack/e2e.sh             everything, from whatever state (images and node binaries are cached)
#   hack/e2e.sh node-up     only the node: plane, containerd, kubelet, kube-proxy, CoreDNS
#   hack/e2e.sh down        stop the node and the plane (images stay in containerd and Docker)
#   KEEP=1 hack/e2e.sh      leave everything running afterwards (KUBECONFIG=.local/e2e/kubeconfig)
#
# The node is the shape of Kubernetes' own local-up-cluster: kubelet, kube-proxy and containerd
# run on the host beside the plane (hack/cluster.sh), as root. Pods sit on a CNI bridge in
# 198.19.16.0/20, Services in 198.19.240.0/24, and the plane, the kubelet and CoreDNS listen on
# the Docker bridge address 198.19.0.1: every address is in the benchmarking range 198.18.0.0/15,
# clear of the node agent's pod addresses (198.18.0.0/16). Where root, Docker or a tool is missing
# it says what in one line and exits 2.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

E2E_STATE="${SF_STATE}/e2e"
NODE_ROOT="${SF_CACHE}/e2e-node"            # containerd's content store: images survive runs
RUN_DIR="/run/spatialforge-e2e"             # sockets and runtime state
NODE_NAME="spatialforge-node"
NODE_IP="198.19.0.1"                        # the Docker bridge (hack/docker.sh)
POD_CIDR="198.19.16.0/20"
SERVICE_CIDR="198.19.240.0/24"
TAG="${TAG:-e2e}"
export TAG
KUBE_DIR="${SF_BIN}/kube-${KUBE_VERSION}"
CTR_DIR="${SF_BIN}/containerd-${CONTAINERD_VERSION}"
CNI_DIR="${SF_BIN}/cni-plugins-${CNI_PLUGINS_VERSION}"
CRICTL="${SF_BIN}/crictl-${CRICTL_VERSION}/crictl"
RUNC="${SF_BIN}/runc-${RUNC_VERSION}/runc"
COREDNS="${SF_BIN}/coredns-${COREDNS_VERSION}/coredns"
CTR_SOCK="${RUN_DIR}/containerd.sock"
IMAGES=(operator apiserver runner minio redis pause)
PYTHON="${PYTHON:-python3}"
export SPATIALFORGE_STATE="${E2E_STATE}" SF_NODES=0 SF_ADVERTISE_ADDRESS="${NODE_IP}" \
  SF_SERVICE_CIDR="${SERVICE_CIDR}" SF_NODE_NAME="${NODE_NAME}" SF_PORTS=free
export DOCKER_HOST="unix://${SF_CACHE}/docker/docker.sock"
KUBECONFIG="${E2E_STATE}/kubeconfig"
export KUBECONFIG CONTAINER_RUNTIME_ENDPOINT="unix://${CTR_SOCK}"

e2e_missing() { printf 'e2e: %s. Nothing was run.\n' "$*" >&2; exit 2; }

e2e_require() {
  [[ $(id -u) -eq 0 ]] || e2e_missing "root is needed (containerd, the kubelet and kube-proxy manage mounts, cgroups and iptables)"
  command -v go >/dev/null || e2e_missing "Go is needed to build the node binaries (https://go.dev/dl/)"
  local tool
  for tool in apt-get curl openssl ip; do
    command -v "${tool}" >/dev/null || e2e_missing "${tool} is not on PATH"
  done
  "${PYTHON}" -c 'import spatialforge.crds, boto3, httpx' 2>/dev/null ||
    e2e_missing "the project is not installed here (make install)"
}

# The node's processes: state in $E2E_STATE, like the plane's.
node_proc() { SF_STATE="${E2E_STATE}" proc_start "$@"; }
node_alive() { SF_STATE="${E2E_STATE}" proc_alive "$1"; }

node_containerd() {
  node_alive containerd && return 0
  mkdir -p "${NODE_ROOT}" "${RUN_DIR}" "${E2E_STATE}/cni/net.d"
  cat >"${E2E_STATE}/containerd.toml" <<TOML
version = 3
root = "${NODE_ROOT}/containerd"
state = "${RUN_DIR}/containerd"
[grpc]
  address = "${CTR_SOCK}"
[plugins."io.containerd.cri.v1.runtime"]
  # Without CAP_SYS_RESOURCE (this machine's root lacks it) no process may lower its
  # oom_score_adj: keep containers' (the kubelet asks -998 for sandboxes) at containerd's own.
  restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    BinaryName = "${RUNC}"
    SystemdCgroup = false
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["${CNI_DIR}"]
  conf_dir = "${E2E_STATE}/cni/net.d"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "docker.io/spatialforge/pause:${TAG}"
TOML
  cat >"${E2E_STATE}/cni/net.d/10-spatialforge.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "spatialforge-e2e", "plugins": [
  {"type": "bridge", "bridge": "sfcni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "${RUN_DIR}/ipam",
            "ranges": [[{"subnet": "${POD_CIDR}"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "firewall"}
]}
JSON
  log_info "starting containerd ${CONTAINERD_VERSION}"
  node_proc containerd env PATH="${CTR_DIR}:${PATH}" "${CTR_DIR}/containerd" --config "${E2E_STATE}/containerd.toml"
  local i
  for ((i = 0; i < 150; i++)); do
    "${CRICTL}" version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  log_fatal "containerd did not answer on ${CTR_SOCK}; see ${E2E_STATE}/logs/containerd.log"
}

# node_load: every image into containerd's k8s.io namespace, unless it holds that build already.
# The layer tarballs are dropped once unpacked: the runner would otherwise take its 8 GB twice.
node_load() {
  local image have want
  for image in "${IMAGES[@]}"; do
    want="$(docker image inspect -f '{{.Id}}' "spatialforge/${image}:${TAG}")"
    have="$("${CRICTL}" inspecti -o go-template --template '{{.status.id}}' "docker.io/spatialforge/${image}:${TAG}" 2>/dev/null || true)"
    [[ ${have} == "${want}" ]] && continue
    log_info "loading spatialforge/${image}:${TAG} into containerd"
    docker save "spatialforge/${image}:${TAG}" |
      "${CTR_DIR}/ctr" --address "${CTR_SOCK}" -n k8s.io images import --local --discard-unpacked-layers - >/dev/null ||
      log_fatal "loading ${image} into containerd failed"
    # The previous build, now untagged, would stay in the store for good (8 GB for the runner):
    # remove it unless a container still uses it.
    [[ -n ${have} ]] && "${CRICTL}" rmi "${have}" >/dev/null 2>&1 || true
  done
}

node_kubelet() {
  node_alive kubelet && return 0
  local pki="${E2E_STATE}/pki" dir="${E2E_STATE}/kubelet"
  mkdir -p "${dir}"
  cat >"${dir}/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false            # this machine is cgroup v1; Kubernetes 1.35+ refuses it otherwise
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${CTR_SOCK}
address: ${NODE_IP}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${pki}/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [${NODE_IP}]
clusterDomain: cluster.local
failSwapOn: false
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100   # the images were loaded, not pulled: never collect them
evictionHard: {memory.available: 200Mi, nodefs.available: 1%, imagefs.available: 1%}
rotateCertificates: false
YAML
  log_info "starting kubelet ${KUBE_VERSION} as node ${NODE_NAME}"
  node_proc kubelet "${KUBE_DIR}/kubelet" --config="${dir}/config.yaml" \
    --kubeconfig="${pki}/node.kubeconfig" --hostname-override="${NODE_NAME}" --node-ip="${NODE_IP}" \
    --root-dir="${NODE_ROOT}/kubelet" --cert-dir="${dir}/pki" \
    --node-labels="spatialforge.io/pool=gpu" --v=1
}

node_proxy() {
  node_alive kube-proxy && return 0
  cat >"${E2E_STATE}/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: ${POD_CIDR}
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
healthzBindAddress: ${NODE_IP}:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection: {kubeconfig: ${E2E_STATE}/pki/proxy.kubeconfig}
iptables: {masqueradeAll: true}   # no br_netfilter needed: replies return through the host
conntrack: {maxPerCore: 0}
YAML
  log_info "starting kube-proxy"
  node_proc kube-proxy "${KUBE_DIR}/kube-proxy" --config="${E2E_STATE}/kube-proxy.yaml" --v=1
}

# Cluster names only: nothing is forwarded, so no pod's lookup leaves this machine.
node_dns() {
  node_alive coredns && return 0
  kubectl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:spatialforge-dns"}
rules:
  - {apiGroups: [""], resources: [services, namespaces, pods], verbs: [list, watch]}
  - {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:spatialforge-dns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:spatialforge-dns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:spatialforge-dns"}]
YAML
  cat >"${E2E_STATE}/Corefile" <<COREFILE
.:53 {
    bind ${NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${E2E_STATE}/pki/dns.kubeconfig spatialforge-dev
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 10
}
COREFILE
  log_info "starting CoreDNS on ${NODE_IP}:53"
  node_proc coredns "${COREDNS}" -conf "${E2E_STATE}/Corefile"
}

node_ready() {
  local i
  for ((i = 0; i < 600; i++)); do
    if kubectl get node "${NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; then
      # A GPU node without the device plugin: 4 nvidia.com/gpu advertised (the runner computes on CPU).
      kubectl patch node "${NODE_NAME}" --subresource=status --type=merge \
        -p '{"status":{"capacity":{"nvidia.com/gpu":"4"},"allocatable":{"nvidia.com/gpu":"4"}}}' >/dev/null
      return 0
    fi
    node_alive kubelet || log_fatal "the kubelet exited; see ${E2E_STATE}/logs/kubelet.log"
    sleep 0.5
  done
  log_fatal "node ${NODE_NAME} not Ready after 300s; see ${E2E_STATE}/logs/kubelet.log"
}

node_up() {
  "${HACK_DIR}/docker.sh" up
  "${HACK_DIR}/build-tools.sh" etcd kube helm minio node
  [[ $(ip -4 -o addr show) == *"inet ${NODE_IP}/"* ]] || log_fatal "${NODE_IP} is not on this host (the Docker bridge; hack/docker.sh up)"
  "${HACK_DIR}/cluster.sh" up
  export PATH="${KUBE_DIR}:${PATH}"
  node_containerd
  node_dns
  node_kubelet
  node_proxy
  node_ready
  log_info "node up: export KUBECONFIG=${KUBECONFIG} PATH=${KUBE_DIR}:\$PATH"
}

node_down() {
  local c
  for c in kube-proxy kubelet coredns; do SF_STATE="${E2E_STATE}" proc_stop "${c}"; done
  # Stop every pod's containers before containerd, so no shim is left behind.
  if [[ -S ${CTR_SOCK} ]]; then
    "${CRICTL}" rmp -fa >/dev/null 2>&1 || true
  fi
  SF_STATE="${E2E_STATE}" proc_stop containerd
  # A kubelet that is stopped, not drained, leaves its pods' volumes mounted (projected tokens
  # are tmpfs) and its root bind-mounted: unmount them, deepest first, so nothing under the
  # node's root stays pinned between runs.
  local m
  while read -r m; do
    umount "${m}" 2>/dev/null || umount -l "${m}"
  done < <(awk -v root="${NODE_ROOT}/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r)
  "${HACK_DIR}/cluster.sh" down
  log_info "node and plane stopped (images kept in ${NODE_ROOT})"
}

e2e_images() {
  local start=${SECONDS}
  "${HACK_DIR}/docker.sh" build "${IMAGES[@]}"
  E2E_BUILD_S=$((SECONDS - start))
  export E2E_BUILD_S
}

main() {
  case "${1:-run}" in
    node-up) e2e_require; node_up ;;
    down) node_down ;;
    run)
      e2e_require
      local start_epoch
      start_epoch="$(date +%s)"
      "${HACK_DIR}/docker.sh" up
      e2e_images
      node_up
      node_load
      [[ -z ${KEEP:-} ]] && trap node_down EXIT
      E2E_START_EPOCH=${start_epoch} HELM="$(tool_path helm "${HELM_VERSION}")" KUBE_DIR="${KUBE_DIR}" \
        CRICTL="${CRICTL}" TAG="${TAG}" "${PYTHON}" "${HACK_DIR}/e2e_checks.py"
      ;;
    *) echo "usage: $0 [run|node-up|down]" >&2; exit 2 ;;
  esac
}

main "$@"
