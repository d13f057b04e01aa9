#!/usr/bin/env bash
# The whole product on this machine, for real: the local control plane, MinIO, the operator,
# and both samples applied with kubectl, run by the runner as local processes (through the
# node agent), watched to Succeeded, and their results listed from MinIO.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PYTHON="${PYTHON:-python3}"
NS=spatialforge-demo
BUCKET=spatialforge-demo

"${HACK_DIR}/cluster.sh" up
eval "$("${HACK_DIR}/cluster.sh" env)"
eval "$("${HACK_DIR}/minio.sh" up)"

MODELS="${SF_STATE}/models"
if [[ ! -d ${MODELS} ]]; then
  log_info "building tiny Depth Anything checkpoints into ${MODELS} (random weights, the real loading path)"
  "${PYTHON}" -m spatialforge.runner.models.tiny "${MODELS}" >/dev/null
fi
log_info "rendering demo inputs into s3://${BUCKET}/inputs/"
"${PYTHON}" "${HACK_DIR}/demo_inputs.py" "s3://${BUCKET}"

kubectl apply --server-side -f "${REPO_ROOT}/crds/spatialforge.io_depthbatches.yaml" \
  -f "${REPO_ROOT}/crds/spatialforge.io_reconstructionjobs.yaml" \
  -f "${REPO_ROOT}/crds/spatialforge.io_depthpools.yaml" >/dev/null
kubectl wait --for=condition=Established crd/depthbatches.spatialforge.io crd/reconstructionjobs.spatialforge.io \
  crd/depthpools.spatialforge.io >/dev/null
for ns in spatialforge-system spatialforge-devcluster "${NS}"; do
  kubectl create namespace "${ns}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
# The runner's object-store settings, by reference from the pods (envFrom).
kubectl -n "${NS}" create secret generic spatialforge-objectstore --dry-run=client -o yaml \
  --from-literal=SPATIALFORGE_S3_ENDPOINT="${SPATIALFORGE_S3_ENDPOINT}" \
  --from-literal=AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID}" \
  --from-literal=AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY}" \
  --from-literal=AWS_REGION="${AWS_REGION}" \
  --from-literal=SPATIALFORGE_MODEL_DIR="${MODELS}" | kubectl apply -f - >/dev/null
# Pods in the demo namespace run as real local processes.
kubectl -n spatialforge-devcluster create configmap behaviour --dry-run=client -o yaml \
  --from-literal="${NS}"='{"mode": "process"}' | kubectl apply -f - >/dev/null

if ! proc_alive operator; then
  log_info "starting the operator (log: ${SF_STATE}/logs/operator.log)"
  proc_start operator env SPATIALFORGE_RUNNER_ENV_FROM_SECRET=spatialforge-objectstore \
    SPATIALFORGE_HEALTH_PORT=0 SPATIALFORGE_METRICS_PORT=0 "${PYTHON}" -m spatialforge.operator
fi

kubectl -n "${NS}" delete depthbatch,reconstructionjob --all --wait=true >/dev/null 2>&1 || true
kubectl -n "${NS}" apply -f "${REPO_ROOT}/crds/samples/depthbatch.yaml" -f "${REPO_ROOT}/crds/samples/reconstructionjob.yaml"

log_info "watching: kubectl get spatialforge -n ${NS}"
deadline=$((SECONDS + ${DEMO_TIMEOUT:-900}))
while :; do
  kubectl get spatialforge -n "${NS}" -o wide
  phases=$(kubectl get spatialforge -n "${NS}" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}')
  if ! grep -qvE '^(Succeeded|Failed|Cancelled)$' <<<"${phases}" && [[ $(wc -l <<<"${phases}") -eq 2 ]]; then break; fi
  ((SECONDS < deadline)) || log_fatal "the samples did not finish in time; see ${SF_STATE}/logs/"
  sleep 5
  echo
done

log_info "results in s3://${BUCKET}/results/${NS}/:"
"${PYTHON}" - "${BUCKET}" "${NS}" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["SPATIALFORGE_S3_ENDPOINT"], region_name=os.environ["AWS_REGION"])
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix=f"results/{sys.argv[2]}/")
for page in pages:
    for obj in page.get("Contents", []):
        print(f"  {obj['Size']:>10}  s3://{sys.argv[1]}/{obj['Key']}")
PY
if grep -q Failed <<<"${phases}"; then log_fatal "a sample failed: kubectl describe spatialforge -n ${NS}"; fi
log_info "done. Stop everything with: make cluster-down && hack/minio.sh down (the operator stops with the cluster)"
