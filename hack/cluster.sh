#!/usr/bin/env bash
# A real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) plus the SpatialForge node agent that plays the kubelet for simulated GPU nodes.
#
#   hack/cluster.sh up       build once (cached), start, write .local/kubeconfig; idempotent
#   hack/cluster.sh down     stop everything, leave no process behind (state kept)
#   hack/cluster.sh reset    down, then wipe the state directory
#   hack/cluster.sh status   what runs, and whether the API answers
#   hack/cluster.sh env      the exports a shell needs (KUBECONFIG, PATH)
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# A state directory keeps the ports it was first started on (ports.env), so `up` after `down`
# reuses them and two state directories (the demo's and the test session's) never share one.
# SF_PORTS=free picks free loopback ports for a new state directory instead of the defaults;
# SF_API_PORT and friends, when set, win over both.
PORTS_FILE="${SF_STATE}/ports.env"
if [[ -f ${PORTS_FILE} ]]; then
  # shellcheck disable=SC1090
  source "${PORTS_FILE}"
elif [[ ${SF_PORTS:-fixed} == free ]]; then
  read -r API_PORT ETCD_PORT ETCD_PEER_PORT CM_PORT SCHED_PORT < <(free_ports 5)
fi
API_PORT="${SF_API_PORT:-${API_PORT:-16443}}"
ETCD_PORT="${SF_ETCD_PORT:-${ETCD_PORT:-12379}}"
ETCD_PEER_PORT="${SF_ETCD_PEER_PORT:-${ETCD_PEER_PORT:-12380}}"
CM_PORT="${SF_CM_PORT:-${CM_PORT:-10357}}"
SCHED_PORT="${SF_SCHED_PORT:-${SCHED_PORT:-10359}}"
NODES="${SF_NODES:-2}"
# A plane that real nodes join (hack/e2e.sh) listens on every address and advertises one its pods
# reach; the default plane stays on loopback with no kubernetes Service endpoints. The Service range
# sits in the benchmarking range 198.18.0.0/15, so no test traffic goes to private ranges.
ADVERTISE_ADDRESS="${SF_ADVERTISE_ADDRESS:-}"
SERVICE_CIDR="${SF_SERVICE_CIDR:-198.19.240.0/24}"
SERVICE_IP="$(python3 -c 'import ipaddress,sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "${SERVICE_CIDR}")"
GPUS_PER_NODE="${SF_GPUS_PER_NODE:-4}"
PYTHON="${PYTHON:-python3}"

KUBE_DIR="${SF_BIN}/kube-${KUBE_VERSION}"
ETCD_BIN="$(tool_path etcd "${ETCD_VERSION}")"
PKI="${SF_STATE}/pki"
KUBECONFIG_PATH="${SF_STATE}/kubeconfig"
COMPONENTS=(node-agent kube-scheduler kube-controller-manager kube-apiserver etcd)

cluster_build() {
  "${HACK_DIR}/build-tools.sh" etcd kube
}

cluster_pki() {
  cluster_pki_plane
  # The API server's client certificate towards kubelets (logs, exec, port-forward).
  [[ -f "${PKI}/kubelet-client.crt" ]] && return 0
  (
    cd "${PKI}" || exit 1
    umask 077
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      -keyout kubelet-client.key -out kubelet-client.csr 2>/dev/null
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -out kubelet-client.crt 2>/dev/null
  )
}

cluster_pki_plane() {
  [[ -f "${PKI}/admin.token" ]] && return 0
  command -v openssl >/dev/null || log_fatal "openssl is required (apt-get install openssl)"
  mkdir -p "${PKI}"
  (
    cd "${PKI}" || exit 1
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=spatialforge-dev-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
      "${SERVICE_IP}" "${ADVERTISE_ADDRESS:+,IP:${ADVERTISE_ADDRESS}}" >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # Static bearer tokens: the admin (system:masters) and the control-plane components.
    local admin cm sched
    admin=$(openssl rand -hex 24); cm=$(openssl rand -hex 24); sched=$(openssl rand -hex 24)
    {
      echo "${admin},admin,admin,system:masters"
      echo "${cm},system:kube-controller-manager,kube-controller-manager"
      echo "${sched},system:kube-scheduler,kube-scheduler"
    } >tokens.csv
    echo "${admin}" >admin.token; echo "${cm}" >cm.token; echo "${sched}" >sched.token
    # A plane real nodes join: identities of the kubelet (the Node authorizer's system:node:<name>),
    # kube-proxy (bound to system:node-proxier by default) and the cluster DNS.
    if [[ -n ${ADVERTISE_ADDRESS} ]]; then
      local node proxy dns
      node=$(openssl rand -hex 24); proxy=$(openssl rand -hex 24); dns=$(openssl rand -hex 24)
      {
        echo "${node},system:node:${SF_NODE_NAME:-spatialforge-node},kubelet,system:nodes"
        echo "${proxy},system:kube-proxy,kube-proxy"
        echo "${dns},system:spatialforge-dns,spatialforge-dns"
      } >>tokens.csv
      echo "${node}" >node.token; echo "${proxy}" >proxy.token; echo "${dns}" >dns.token
    fi
  )
}

# cluster_kubeconfig FILE TOKENFILE [SERVER]
cluster_kubeconfig() {
  local file=$1 token server=${3:-https://127.0.0.1:${API_PORT}}
  token=$(cat "$2")
  umask 077
  cat >"${file}" <<KC
apiVersion: v1
kind: Config
clusters:
- name: spatialforge-dev
  cluster:
    server: ${server}
    certificate-authority: ${PKI}/ca.crt
users:
- name: user
  user:
    token: ${token}
contexts:
- name: spatialforge-dev
  context: {cluster: spatialforge-dev, user: user}
current-context: spatialforge-dev
KC
}

cluster_api_ready() {
  local i
  for ((i = 0; i < 600; i++)); do
    if curl -sf --cacert "${PKI}/ca.crt" -H "Authorization: Bearer $(cat "${PKI}/admin.token")" \
      "https://127.0.0.1:${API_PORT}/readyz" >/dev/null 2>&1; then return 0; fi
    proc_alive kube-apiserver || log_fatal "kube-apiserver exited; see ${SF_STATE}/logs/kube-apiserver.log"
    sleep 0.1
  done
  log_fatal "kube-apiserver not ready after 60s; see ${SF_STATE}/logs/kube-apiserver.log"
}

cluster_up() {
  cluster_build
  mkdir -p "${SF_STATE}"/{etcd,logs,pids,flexvolume}
  if [[ ! -f ${PORTS_FILE} ]]; then
    printf 'API_PORT=%s\nETCD_PORT=%s\nETCD_PEER_PORT=%s\nCM_PORT=%s\nSCHED_PORT=%s\n' \
      "${API_PORT}" "${ETCD_PORT}" "${ETCD_PEER_PORT}" "${CM_PORT}" "${SCHED_PORT}" >"${PORTS_FILE}"
  fi
  cluster_pki
  cluster_kubeconfig "${KUBECONFIG_PATH}" "${PKI}/admin.token"
  cluster_kubeconfig "${PKI}/cm.kubeconfig" "${PKI}/cm.token"
  cluster_kubeconfig "${PKI}/sched.kubeconfig" "${PKI}/sched.token"
  local id
  for id in node proxy dns; do
    [[ -f "${PKI}/${id}.token" ]] && cluster_kubeconfig "${PKI}/${id}.kubeconfig" "${PKI}/${id}.token"
  done

  if ! proc_alive etcd; then
    log_info "starting etcd on 127.0.0.1:${ETCD_PORT}"
    proc_start etcd "${ETCD_BIN}" --name=dev --data-dir="${SF_STATE}/etcd" \
      --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
      --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
      --initial-cluster="dev=http://127.0.0.1:${ETCD_PEER_PORT}" --log-level=warn \
      --quota-backend-bytes=4294967296 --unsafe-no-fsync
    wait_for_port 127.0.0.1 "${ETCD_PORT}" 30 etcd
  fi
  if ! proc_alive kube-apiserver; then
    log_info "starting kube-apiserver ${KUBE_VERSION} on https://127.0.0.1:${API_PORT}"
    local net=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
    [[ -n ${ADVERTISE_ADDRESS} ]] &&
      # Kubelets by address: node names are not in this host's DNS.
      net=(--bind-address=0.0.0.0 --advertise-address="${ADVERTISE_ADDRESS}" --endpoint-reconciler-type=lease
        "--kubelet-preferred-address-types=InternalIP,Hostname")
    proc_start kube-apiserver "${KUBE_DIR}/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:${ETCD_PORT}" "${net[@]}" --secure-port="${API_PORT}" \
      --kubelet-client-certificate="${PKI}/kubelet-client.crt" --kubelet-client-key="${PKI}/kubelet-client.key" \
      --tls-cert-file="${PKI}/apiserver.crt" --tls-private-key-file="${PKI}/apiserver.key" \
      --client-ca-file="${PKI}/ca.crt" --token-auth-file="${PKI}/tokens.csv" \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="${PKI}/sa.pub" --service-account-signing-key-file="${PKI}/sa.key" \
      --api-audiences=https://kubernetes.default.svc.cluster.local \
      --service-cluster-ip-range="${SERVICE_CIDR}" --authorization-mode=Node,RBAC \
      --enable-admission-plugins=NodeRestriction \
      --allow-privileged=true --profiling=false --v=1
    cluster_api_ready
  fi
  if ! proc_alive kube-controller-manager; then
    log_info "starting kube-controller-manager"
    proc_start kube-controller-manager "${KUBE_DIR}/kube-controller-manager" \
      --kubeconfig="${PKI}/cm.kubeconfig" --authentication-kubeconfig="${PKI}/cm.kubeconfig" \
      --authorization-kubeconfig="${PKI}/cm.kubeconfig" \
      --leader-elect=false --bind-address=127.0.0.1 --secure-port="${CM_PORT}" \
      --service-account-private-key-file="${PKI}/sa.key" --root-ca-file="${PKI}/ca.crt" \
      --use-service-account-credentials=true \
      --flex-volume-plugin-dir="${SF_STATE}/flexvolume" \
      --controllers='*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ephemeral-volume' \
      --concurrent-job-syncs=20 --kube-api-qps=200 --kube-api-burst=400 --v=1
  fi
  if ! proc_alive kube-scheduler; then
    log_info "starting kube-scheduler"
    proc_start kube-scheduler "${KUBE_DIR}/kube-scheduler" \
      --kubeconfig="${PKI}/sched.kubeconfig" --authentication-kubeconfig="${PKI}/sched.kubeconfig" \
      --authorization-kubeconfig="${PKI}/sched.kubeconfig" \
      --leader-elect=false --bind-address=127.0.0.1 --secure-port="${SCHED_PORT}" \
      --kube-api-qps=200 --kube-api-burst=400 --v=1
  fi
  if [[ ${NODES} -gt 0 ]] && ! proc_alive node-agent; then
    "${PYTHON}" -c 'import spatialforge.devcluster' 2>/dev/null ||
      log_fatal "the node agent needs the project installed: pip install -e '.[all]'"
    log_info "starting node agent: ${NODES} nodes x ${GPUS_PER_NODE} nvidia.com/gpu"
    proc_start node-agent env KUBECONFIG="${KUBECONFIG_PATH}" SPATIALFORGE_STATE="${SF_STATE}" \
      "${PYTHON}" -m spatialforge.devcluster --nodes "${NODES}" --gpus "${GPUS_PER_NODE}"
  fi
  cluster_wait_nodes
  cluster_install_crds
  cluster_install_policy
  log_info "cluster up: export KUBECONFIG=${KUBECONFIG_PATH} PATH=${KUBE_DIR}:\$PATH"
}

# The plane is ready for SpatialForge: the generated CRDs installed, the operator's namespace there.
cluster_install_crds() {
  local kc=("${KUBE_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}")
  "${kc[@]}" apply --server-side --force-conflicts -f "${REPO_ROOT}/crds/spatialforge.io_depthbatches.yaml" \
    -f "${REPO_ROOT}/crds/spatialforge.io_reconstructionjobs.yaml" \
    -f "${REPO_ROOT}/crds/spatialforge.io_depthpools.yaml" >/dev/null
  "${kc[@]}" wait --for=condition=Established crd/depthbatches.spatialforge.io \
    crd/reconstructionjobs.spatialforge.io crd/depthpools.spatialforge.io --timeout=30s >/dev/null
  "${kc[@]}" create namespace spatialforge-system --dry-run=client -o yaml | "${kc[@]}" apply -f - >/dev/null
}

# The runner-status ValidatingAdmissionPolicy (generated: crds/policies/, make crds): a runner pod may
# change only its own shard's progress in the status of its own resource, as in the chart.
cluster_install_policy() {
  "${KUBE_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" apply --server-side --force-conflicts \
    -f "${REPO_ROOT}/crds/policies/" >/dev/null
}

cluster_wait_nodes() {
  local i ready
  for ((i = 0; i < 300; i++)); do
    ready=$("${KUBE_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" get nodes --no-headers 2>/dev/null | grep -c ' Ready' || true)
    [[ ${ready} -ge ${NODES} ]] && return 0
    proc_alive node-agent || log_fatal "node agent exited; see ${SF_STATE}/logs/node-agent.log"
    sleep 0.2
  done
  log_fatal "nodes not Ready after 60s; see ${SF_STATE}/logs/node-agent.log"
}

cluster_down() {
  local c
  for c in operator "${COMPONENTS[@]}"; do  # the demo's operator goes down with its plane
    if proc_alive "${c}"; then log_info "stopping ${c}"; fi
    proc_stop "${c}"
  done
}

cluster_status() {
  local c rc=0
  for c in "${COMPONENTS[@]}"; do
    if proc_alive "${c}"; then echo "${c}: running (pid $(cat "${SF_STATE}/pids/${c}.pid"))"; else echo "${c}: stopped"; rc=1; fi
  done
  if [[ -f ${KUBECONFIG_PATH} ]] && "${KUBE_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" get --raw /readyz >/dev/null 2>&1; then
    echo "api: ready at https://127.0.0.1:${API_PORT} (KUBECONFIG=${KUBECONFIG_PATH})"
  else
    echo "api: not ready"; rc=1
  fi
  return "${rc}"
}

case "${1:-}" in
  up) cluster_up ;;
  down) cluster_down ;;
  reset) cluster_down; rm -rf "${SF_STATE:?}/etcd" "${SF_STATE}/pki" "${SF_STATE}/logs" "${KUBECONFIG_PATH}" "${PORTS_FILE}" ;;
  status) cluster_status ;;
  build) cluster_build ;;
  env)
    # $PATH stays literal: it expands in the shell that evals these lines.
    # shellcheck disable=SC2016
    printf 'export KUBECONFIG=%q\nexport PATH=%q:$PATH\n' "${KUBECONFIG_PATH}" "${KUBE_DIR}" ;;
  *) echo "usage: $0 up|down|reset|status|build|env" >&2; exit 2 ;;
esac
