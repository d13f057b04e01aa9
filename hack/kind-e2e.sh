#!/usr/bin/env bash
# End to end on kind, on a machine WITH a Docker engine and a registry (kindest/node, the public
# base images). Where no registry answers, hack/e2e.sh runs the same install on a real kubelet
# joined to the project's own plane. This script: create a kind cluster with a simulated
# GPU node, build and load the three images, install MinIO and the chart, run both samples and
# the REST flow to completion, print where the results are, tear down.
#
#   hack/kind-e2e.sh            everything, then delete the cluster
#   KEEP=1 hack/kind-e2e.sh     keep the cluster for inspection
#
# Needs: docker (with a running engine), kind, kubectl, helm (hack/build-tools.sh helm), curl.
# Where there is no Docker engine it says so and exits 2; it never pretends.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER="${KIND_CLUSTER:-spatialforge-e2e}"
TAG="${TAG:-e2e}"
NS_SYSTEM="spatialforge-system"
NS_TENANT="demo"
BUCKET="spatialforge-demo"
MINIO_IMAGE="${MINIO_IMAGE:-minio/minio:RELEASE.2025-04-22T22-12-26Z}"
MINIO_MC_IMAGE="${MINIO_MC_IMAGE:-minio/mc:RELEASE.2025-04-16T18-13-26Z}"
TIMEOUT="${E2E_TIMEOUT:-900}"
# The REST flow (apiserver/api/routes/jobs.py): tenant "e2e" lives in namespace sf-e2e.
API_TENANT="e2e"
NS_API_TENANT="sf-${API_TENANT}"

e2e_require() {
  if ! command -v docker >/dev/null; then
    log_info "docker is not installed: kind needs a Docker engine. Nothing was run."
    exit 2
  fi
  if ! docker info >/dev/null 2>&1; then
    log_info "no Docker engine answers (docker info failed): kind needs one. Nothing was run."
    exit 2
  fi
  local tool
  for tool in kind kubectl curl; do
    command -v "${tool}" >/dev/null || log_fatal "${tool} is not on PATH"
  done
  HELM="$(command -v helm || true)"
  [[ -n ${HELM} ]] || HELM="$(tool_path helm "${HELM_VERSION}")"
  [[ -x ${HELM} ]] || log_fatal "helm missing: bash hack/build-tools.sh helm (or put helm on PATH)"
}

e2e_cluster() {
  if ! kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    kind create cluster --name "${CLUSTER}" --config "${HACK_DIR}/kind-cluster.yaml" --wait 120s
  fi
  kubectl config use-context "kind-${CLUSTER}" >/dev/null
  # Simulated GPUs: advertise 4 nvidia.com/gpu on the worker (no device plugin; CPU inference).
  local node
  node="$(kubectl get nodes -l spatialforge.io/pool=gpu -o jsonpath='{.items[0].metadata.name}')"
  kubectl patch node "${node}" --subresource=status --type=merge \
    -p '{"status":{"capacity":{"nvidia.com/gpu":"4"},"allocatable":{"nvidia.com/gpu":"4"}}}' >/dev/null
}

e2e_images() {
  log_info "building images (tag ${TAG})"
  docker build -f "${REPO_ROOT}/Dockerfile.operator" --target operator -t "spatialforge/operator:${TAG}" "${REPO_ROOT}"
  docker build -f "${REPO_ROOT}/Dockerfile.operator" --target apiserver -t "spatialforge/apiserver:${TAG}" "${REPO_ROOT}"
  docker build -f "${REPO_ROOT}/Dockerfile.runner" --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu \
    -t "spatialforge/runner:${TAG}" "${REPO_ROOT}"
  local img
  for img in operator apiserver runner; do
    kind load docker-image --name "${CLUSTER}" "spatialforge/${img}:${TAG}"
  done
}

e2e_minio() {
  log_info "installing MinIO and the demo bucket"
  kubectl create namespace "${NS_SYSTEM}" --dry-run=client -o yaml | kubectl apply -f -
  kubectl create namespace "${NS_TENANT}" --dry-run=client -o yaml | kubectl apply -f -
  local user=spatialforge pass
  pass="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
  local ns
  kubectl create namespace "${NS_API_TENANT}" --dry-run=client -o yaml | kubectl apply -f -
  for ns in "${NS_SYSTEM}" "${NS_TENANT}" "${NS_API_TENANT}"; do
    kubectl -n "${ns}" create secret generic spatialforge-objectstore \
      --from-literal=AWS_ACCESS_KEY_ID="${user}" --from-literal=AWS_SECRET_ACCESS_KEY="${pass}" \
      --from-literal=AWS_ENDPOINT_URL="http://minio.${NS_SYSTEM}:9000" --from-literal=AWS_DEFAULT_REGION=us-east-1 \
      --dry-run=client -o yaml | kubectl apply -f -
  done
  kubectl -n "${NS_SYSTEM}" apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio}
spec:
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
        - name: minio
          image: ${MINIO_IMAGE}
          args: [server, /data]
          env:
            - {name: MINIO_ROOT_USER, valueFrom: {secretKeyRef: {name: spatialforge-objectstore, key: AWS_ACCESS_KEY_ID}}}
            - {name: MINIO_ROOT_PASSWORD, valueFrom: {secretKeyRef: {name: spatialforge-objectstore, key: AWS_SECRET_ACCESS_KEY}}}
          ports: [{containerPort: 9000}]
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: minio}
spec:
  selector: {app: minio}
  ports: [{port: 9000}]
YAML
  kubectl -n "${NS_SYSTEM}" rollout status deployment/minio --timeout=180s
  # Demo inputs: rendered locally by hack/demo_inputs.py, uploaded through a port-forward.
  kubectl -n "${NS_SYSTEM}" port-forward svc/minio 19900:9000 >/dev/null 2>&1 &
  local pf=$!
  wait_for_port 127.0.0.1 19900 30 minio-port-forward
  AWS_ACCESS_KEY_ID="${user}" AWS_SECRET_ACCESS_KEY="${pass}" AWS_ENDPOINT_URL=http://127.0.0.1:19900 \
    AWS_DEFAULT_REGION=us-east-1 python3 "${HACK_DIR}/demo_inputs.py" "s3://${BUCKET}"
  kill "${pf}"
}

rnd() { head -c 24 /dev/urandom | base64 | tr -d '/+='; }

e2e_secrets() {
  # The front end's secrets, by reference only (random values for the test).
  kubectl -n "${NS_SYSTEM}" create secret generic spatialforge-stripe \
    --from-literal=api-key="sk_test_$(rnd)" --from-literal=webhook-secret="whsec_$(rnd)" \
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n "${NS_SYSTEM}" create secret generic spatialforge-api-keys \
    --from-literal=hmac-secret="$(rnd)$(rnd)" --dry-run=client -o yaml | kubectl apply -f -
}

e2e_install() {
  log_info "installing the chart"
  "${HELM}" upgrade --install spatialforge "${REPO_ROOT}/charts/spatialforge" -n "${NS_SYSTEM}" \
    --set operator.image.tag="${TAG}" --set apiserver.image.tag="${TAG}" --set runner.image.tag="${TAG}" \
    --set runner.envFromSecret=spatialforge-objectstore --set apiserver.objectStore.endpoint="http://minio.${NS_SYSTEM}:9000" \
    --set redis.enabled=true --set networkPolicy.enabled=false \
    --set-json "runner.tenantNamespaces=[\"${NS_TENANT}\",\"${NS_API_TENANT}\"]" --wait --timeout 10m
  "${HELM}" test spatialforge -n "${NS_SYSTEM}" --timeout 2m
}

e2e_wait_succeeded() {
  local kind=$1 name=$2 ns=${3:-${NS_TENANT}} phase="" deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    phase="$(kubectl -n "${ns}" get "${kind}" "${name}" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    case ${phase} in
      Succeeded) log_info "${kind}/${name}: Succeeded"; return 0 ;;
      Failed|Cancelled) kubectl -n "${ns}" describe "${kind}" "${name}" >&2; log_fatal "${kind}/${name}: ${phase}" ;;
    esac
    sleep 5
  done
  log_fatal "${kind}/${name} did not succeed within ${TIMEOUT}s (last phase: ${phase:-none})"
}

e2e_samples() {
  log_info "running both samples"
  kubectl -n "${NS_TENANT}" apply -f "${REPO_ROOT}/crds/samples/depthbatch.yaml" -f "${REPO_ROOT}/crds/samples/reconstructionjob.yaml"
  e2e_wait_succeeded depthbatch sample-depth
  e2e_wait_succeeded reconstructionjob "$(sample_name "${REPO_ROOT}/crds/samples/reconstructionjob.yaml")"
}

sample_name() { sed -n 's/^  name: //p' "$1" | head -n1; }

e2e_rest() {
  log_info "REST flow: an API key, a DepthBatch over REST, polled to Succeeded"
  kubectl -n "${NS_SYSTEM}" port-forward svc/spatialforge-apiserver 18000:80 >/dev/null 2>&1 &
  local pf=$! key body job name
  wait_for_port 127.0.0.1 18000 30 apiserver-port-forward
  key="$(kubectl -n "${NS_SYSTEM}" exec deploy/spatialforge-apiserver -- \
    python -m spatialforge.apiserver.cli keys create "${API_TENANT}" --test |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
  body="$(python3 -c 'import json,yaml,sys; print(json.dumps(yaml.safe_load(open(sys.argv[1]))["spec"]))' \
    "${REPO_ROOT}/crds/samples/depthbatch.yaml")"
  job="$(curl -fsS -X POST "http://127.0.0.1:18000/v1/depth-batches" -H "Authorization: Bearer ${key}" \
    -H 'Content-Type: application/json' -d "${body}")"
  kill "${pf}"
  name="$(printf '%s' "${job}" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j.get("name") or j["id"])')"
  e2e_wait_succeeded depthbatch "${name}" "${NS_API_TENANT}"
}

e2e_report() {
  log_info "results:"
  local ns
  for ns in "${NS_TENANT}" "${NS_API_TENANT}"; do
    kubectl -n "${ns}" get spatialforge -o custom-columns=KIND:.kind,NAME:.metadata.name,PHASE:.status.phase,MANIFEST:.status.manifestUri
  done
}

e2e_down() {
  if [[ -n ${KEEP:-} ]]; then
    log_info "KEEP set: cluster kind-${CLUSTER} kept (kind delete cluster --name ${CLUSTER})"
  else
    kind delete cluster --name "${CLUSTER}"
  fi
}

main() {
  e2e_require
  trap e2e_down EXIT
  e2e_cluster
  e2e_images
  e2e_minio
  e2e_secrets
  e2e_install
  e2e_samples
  e2e_rest
  e2e_report
}

main "$@"
