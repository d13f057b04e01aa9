#!/usr/bin/env bash
# The whole product on this machine, for real: the local control plane, MinIO, Redis,
# stripe-mock, the operator and the REST front end with its web console. A demo tenant gets an
# API key; both samples (crds/samples/) are submitted as that tenant through the public REST
# API (inputs uploaded through signed forms), run by the runner as local processes (through the
# node agent), watched to Succeeded and their result files listed, as the console shows them.
# Ends by printing the console's URL, the key, and which result to open first.
#   hack/demo.sh        run it (make demo)
#   hack/demo.sh down   stop everything it started
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PYTHON="${PYTHON:-python3}"
TENANT="${DEMO_TENANT:-demo}"
TNS="sf-${TENANT}"  # the front end's namespace_prefix + tenant
BUCKET=spatialforge-demo
API_PORT="${DEMO_API_PORT:-8000}"
API="http://127.0.0.1:${API_PORT}"

if [[ ${1:-} == down ]]; then
  proc_stop demo-api
  "${HACK_DIR}/cluster.sh" down  # the operator goes down with its plane
  "${HACK_DIR}/minio.sh" down
  "${HACK_DIR}/redis.sh" down
  "${HACK_DIR}/stripe-mock.sh" down
  exit 0
fi

"${HACK_DIR}/cluster.sh" up
eval "$("${HACK_DIR}/cluster.sh" env)"
eval "$("${HACK_DIR}/minio.sh" up)"
eval "$("${HACK_DIR}/redis.sh" up)"
eval "$("${HACK_DIR}/stripe-mock.sh" up)"

MODELS="${SF_STATE}/models"
if [[ ! -d ${MODELS} ]]; then
  log_info "building tiny Depth Anything checkpoints into ${MODELS} (random weights, the real loading path)"
  "${PYTHON}" -m spatialforge.runner.models.tiny "${MODELS}" >/dev/null
fi

kubectl apply --server-side -f "${REPO_ROOT}/crds/spatialforge.io_depthbatches.yaml" \
  -f "${REPO_ROOT}/crds/spatialforge.io_reconstructionjobs.yaml" \
  -f "${REPO_ROOT}/crds/spatialforge.io_depthpools.yaml" >/dev/null
kubectl wait --for=condition=Established crd/depthbatches.spatialforge.io crd/reconstructionjobs.spatialforge.io \
  crd/depthpools.spatialforge.io >/dev/null
for ns in spatialforge-system spatialforge-devcluster; do
  kubectl create namespace "${ns}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done

# The front end's settings: dev mode (no production secrets), billing against stripe-mock, one
# bucket for every tenant (tenants/<tenant>/...), the control plane's kubeconfig. The secret
# key is kept in the state folder so keys made by an earlier run still work.
SECRET_FILE="${SF_STATE}/demo-api-secret"
[[ -s ${SECRET_FILE} ]] || "${PYTHON}" -c 'import secrets; print(secrets.token_urlsafe(48))' >"${SECRET_FILE}"
SPATIALFORGE_API_SECRET_KEY=$(cat "${SECRET_FILE}")
export SPATIALFORGE_API_DEV_MODE=1 SPATIALFORGE_API_SECRET_KEY
export SPATIALFORGE_API_S3_ENDPOINT="${SPATIALFORGE_S3_ENDPOINT}" SPATIALFORGE_API_S3_REGION="${AWS_REGION}"
export SPATIALFORGE_API_S3_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID}" SPATIALFORGE_API_S3_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY}"
export SPATIALFORGE_API_BUCKET="${BUCKET}" SPATIALFORGE_API_STRIPE_API_KEY=sk_test_demo_stripe_mock
export SPATIALFORGE_API_PUBLIC_URL="${API}" SPATIALFORGE_API_METRICS_PORT=0 SPATIALFORGE_API_LOG_JSON=0

# The demo tenant: a plan (creates its namespace with the GPU limit the operator reads), the
# runner's object-store settings there (envFrom), and its pods run as real local processes.
spatialforge api plans set "${TENANT}" pro >/dev/null
kubectl -n "${TNS}" create secret generic spatialforge-objectstore --dry-run=client -o yaml \
  --from-literal=SPATIALFORGE_S3_ENDPOINT="${SPATIALFORGE_S3_ENDPOINT}" \
  --from-literal=AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID}" \
  --from-literal=AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY}" \
  --from-literal=AWS_REGION="${AWS_REGION}" \
  --from-literal=SPATIALFORGE_MODEL_DIR="${MODELS}" | kubectl apply -f - >/dev/null
kubectl -n spatialforge-devcluster create configmap behaviour --dry-run=client -o yaml \
  --from-literal="${TNS}"='{"mode": "process"}' | kubectl apply -f - >/dev/null

if ! proc_alive operator; then
  log_info "starting the operator (log: ${SF_STATE}/logs/operator.log)"
  proc_start operator env SPATIALFORGE_RUNNER_ENV_FROM_SECRET=spatialforge-objectstore \
    SPATIALFORGE_HEALTH_PORT=0 SPATIALFORGE_METRICS_PORT=0 "${PYTHON}" -m spatialforge.operator
fi

proc_stop demo-api  # a rerun serves with this run's settings
if (echo >"/dev/tcp/127.0.0.1/${API_PORT}") 2>/dev/null; then
  log_fatal "port ${API_PORT} is already in use; set DEMO_API_PORT to a free port"
fi
log_info "starting the front end and console on ${API} (log: ${SF_STATE}/logs/demo-api.log)"
proc_start demo-api spatialforge api serve --host 127.0.0.1 --port "${API_PORT}"
for ((i = 0; i < 600; i++)); do
  if [[ $(curl -s -o /dev/null -w '%{http_code}' "${API}/readyz") == 200 ]]; then break; fi
  proc_alive demo-api || log_fatal "the front end exited; see ${SF_STATE}/logs/demo-api.log"
  ((i < 599)) || log_fatal "the front end was not ready within 60 s; see ${SF_STATE}/logs/demo-api.log"
  sleep 0.1
done

KEY=$(spatialforge api keys create "${TENANT}" --test --name demo | "${PYTHON}" -c 'import json,sys; print(json.load(sys.stdin)["key"])')
log_info "submitting both samples as tenant ${TENANT} through ${API}/v1 (watch: kubectl get spatialforge -n ${TNS})"
status=0
"${PYTHON}" "${HACK_DIR}/demo_submit.py" --api "${API}" --key "${KEY}" --timeout "${DEMO_TIMEOUT:-900}" \
  | tee "${SF_STATE}/demo-submit.log" || status=$?
kubectl get spatialforge -n "${TNS}" -o wide
((status == 0)) || log_fatal "a sample did not succeed: kubectl describe spatialforge -n ${TNS}; logs in ${SF_STATE}/logs/"

RECON=$(tail -n 1 "${SF_STATE}/demo-submit.log" | "${PYTHON}" -c 'import json,sys; print(json.load(sys.stdin)["sample-reconstruction"]["id"])')
DEPTH=$(tail -n 1 "${SF_STATE}/demo-submit.log" | "${PYTHON}" -c 'import json,sys; print(json.load(sys.stdin)["sample-depth"]["id"])')
cat <<EOF

  Console:  ${API}/console
  API key:  ${KEY}   (tenant ${TENANT}; paste it into the console's key form)
  Open first: job ${RECON} (the reconstruction): its web mesh, shard-00000/mesh.web.ply, in the
            3D viewer; then job ${DEPTH}'s depth previews (*.preview.jpg).
  (The demo's depth model has random weights, so the shapes are noise; the path is the real one.)

  Stop everything with: hack/demo.sh down
EOF
