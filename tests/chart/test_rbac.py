"""Least privilege, proven by the API server's authorizer: the chart's RBAC is applied to the
local plane and each component's service account is asked `kubectl auth can-i`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import yaml

from spatialforge.devcluster.plane import Cluster
from tests.chart.conftest import CHART, Helm, ns, tenants_args

pytestmark = pytest.mark.integration

NS = ns("sf-rbac")
TENANT = ns("rbac-tenant-a")  # listed in runner.tenantNamespaces: the chart pre-creates the runner identity
OTHER = ns("rbac-tenant-b")
FRESH = ns("rbac-tenant-c")  # not listed: the operator itself must be able to create the identity
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
OPERATOR = f"system:serviceaccount:{NS}:rbac-spatialforge-operator"
APISERVER = f"system:serviceaccount:{NS}:rbac-spatialforge-apiserver"
RUNNER = f"system:serviceaccount:{TENANT}:spatialforge-runner"
DB = "depthbatches.spatialforge.io"
RJ = "reconstructionjobs.spatialforge.io"


@pytest.fixture(scope="module")
def rbac(helm: Helm, cluster: Cluster) -> Iterator[Cluster]:
    for ns in (NS, TENANT, OTHER, FRESH):
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # With the chart's DepthPool and one in another namespace the front end serves from.
    objs = [o for o in helm.render("-f", str(CHART / "ci" / "full-values.yaml"), *tenants_args(TENANT, OTHER),
                                 "--set", "pool.enabled=true", "--set-json", f'apiserver.depthPools=["{OTHER}/big"]',
                                 namespace=NS, release="rbac")
            if o["kind"] in RBAC_KINDS]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))
    yield cluster
    cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=yaml.safe_dump_all(objs),
                    check=False)
    cluster.kubectl("delete", "namespace", NS, TENANT, OTHER, FRESH, "--wait=false", check=False)


def can(cluster: Cluster, who: str, verb: str, what: str, ns: str | None, sub: str | None = None) -> bool:
    args = ["auth", "can-i", verb, what, f"--as={who}"]
    args += ["-n", ns] if ns else ["--all-namespaces"]
    if sub:
        args.append(f"--subresource={sub}")
    proc = cluster.kubectl(*args, check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


# (verb, resource, namespace or None for all namespaces, subresource)
OPERATOR_MAY = [
    ("list", DB, None, None), ("watch", RJ, None, None), ("get", DB, TENANT, None), ("patch", DB, TENANT, None),
    ("delete", RJ, TENANT, None), ("patch", DB, TENANT, "status"), ("get", RJ, TENANT, "status"),
    ("list", "jobs.batch", None, None), ("watch", "jobs.batch", None, None), ("create", "jobs.batch", TENANT, None),
    ("patch", "jobs.batch", TENANT, None), ("delete", "jobs.batch", TENANT, None), ("get", "jobs.batch", TENANT, None),
    ("list", "pods", None, None), ("watch", "pods", None, None), ("list", "pods", TENANT, None),
    ("list", "namespaces", None, None), ("watch", "namespaces", None, None),
    ("list", "nodes", None, None), ("watch", "nodes", None, None),
    ("create", "events", TENANT, None), ("list", "events", TENANT, None),
    ("get", "configmaps/spatialforge-quotas", NS, None), ("watch", "configmaps/spatialforge-quotas", NS, None),
    ("list", "configmaps/spatialforge-quotas", NS, None),
    ("create", "leases.coordination.k8s.io", NS, None), ("get", "leases.coordination.k8s.io/spatialforge-operator", NS, None),
    ("update", "leases.coordination.k8s.io/spatialforge-operator", NS, None),
    ("patch", "leases.coordination.k8s.io/spatialforge-operator", NS, None),
    ("create", "serviceaccounts", FRESH, None), ("create", "roles.rbac.authorization.k8s.io", FRESH, None),
    ("create", "rolebindings.rbac.authorization.k8s.io", FRESH, None),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    # DepthPools: followed everywhere, run (Deployment, Service) in the operator's namespace only.
    ("watch", "depthpools.spatialforge.io", None, None), ("patch", "depthpools.spatialforge.io", NS, "status"),
    ("list", "deployments.apps", None, None), ("create", "deployments.apps", NS, None),
    ("patch", "deployments.apps", NS, None), ("create", "services", NS, None),
    ("watch", "endpointslices.discovery.k8s.io", None, None),
]
OPERATOR_MAY_NOT = [
    ("get", "secrets", None, None), ("list", "secrets", NS, None), ("get", "configmaps", TENANT, None),
    ("get", "configmaps/other", NS, None), ("list", "configmaps", NS, None), ("watch", "configmaps", NS, None),
    ("create", "pods", TENANT, None), ("delete", "pods", TENANT, None),
    ("patch", "pods", TENANT, None), ("update", "leases.coordination.k8s.io/other", NS, None),
    ("get", "leases.coordination.k8s.io", TENANT, None), ("patch", "namespaces", None, None),
    ("create", "clusterroles.rbac.authorization.k8s.io", None, None), ("create", "deployments.apps", TENANT, None),
    ("update", DB, TENANT, None), ("create", DB, TENANT, None), ("delete", "roles.rbac.authorization.k8s.io", FRESH, None),
    ("create", "pods", TENANT, "exec"), ("create", "serviceaccounts", TENANT, "token"),
    ("create", "services", TENANT, None), ("patch", "deployments.apps", TENANT, None),
]
APISERVER_MAY = [
    ("create", DB, TENANT, None), ("create", RJ, TENANT, None), ("get", DB, TENANT, None), ("list", RJ, None, None),
    ("watch", DB, None, None), ("get", RJ, TENANT, "status"),
    ("create", "namespaces", None, None),  # full values: rbac.manageTenantNamespaces
    # Synchronous depth (apiserver/services/pool.py): the served pools by name, their EndpointSlices.
    ("get", "depthpools.spatialforge.io/default", NS, None), ("list", "endpointslices.discovery.k8s.io", NS, None),
    ("get", "depthpools.spatialforge.io/big", OTHER, None), ("list", "endpointslices.discovery.k8s.io", OTHER, None),
]
APISERVER_MAY_NOT = [
    ("delete", DB, TENANT, None), ("patch", DB, TENANT, None), ("update", RJ, TENANT, None),
    ("patch", DB, TENANT, "status"), ("get", "secrets", NS, None), ("get", "secrets", TENANT, None),
    ("create", "jobs.batch", TENANT, None), ("create", "pods", TENANT, None), ("list", "configmaps", NS, None),
    ("delete", "namespaces", None, None),
    ("get", "depthpools.spatialforge.io/other", NS, None), ("list", "depthpools.spatialforge.io", NS, None),
    ("patch", "depthpools.spatialforge.io/default", NS, None), ("watch", "endpointslices.discovery.k8s.io", NS, None),
    ("list", "endpointslices.discovery.k8s.io", TENANT, None), ("list", "endpointslices.discovery.k8s.io", None, None),
]
RUNNER_MAY = [
    ("get", DB, TENANT, None), ("get", RJ, TENANT, None), ("patch", DB, TENANT, "status"),
    ("patch", RJ, TENANT, "status"), ("get", DB, TENANT, "status"),
]
RUNNER_MAY_NOT = [
    ("patch", DB, TENANT, None), ("update", DB, TENANT, None), ("delete", DB, TENANT, None),
    ("create", DB, TENANT, None), ("list", DB, TENANT, None), ("update", DB, TENANT, "status"),
    ("get", DB, OTHER, None), ("patch", DB, OTHER, "status"),
    ("create", "pods", TENANT, None), ("get", "pods", TENANT, None), ("get", "secrets", TENANT, None),
    ("list", "secrets", TENANT, None), ("create", "jobs.batch", TENANT, None), ("get", "configmaps", TENANT, None),
]


def _ids(cases: list[tuple]) -> list[str]:
    return [f"{v}-{r}{'/' + s if s else ''}-{n or 'all'}" for v, r, n, s in cases]


@pytest.mark.parametrize("case", OPERATOR_MAY, ids=_ids(OPERATOR_MAY))
def test_operator_may(rbac: Cluster, case: tuple) -> None:
    assert can(rbac, OPERATOR, *case), f"the operator needs {case}"


@pytest.mark.parametrize("case", OPERATOR_MAY_NOT, ids=_ids(OPERATOR_MAY_NOT))
def test_operator_may_not(rbac: Cluster, case: tuple) -> None:
    assert not can(rbac, OPERATOR, *case), f"the operator must not have {case}"


@pytest.mark.parametrize("case", APISERVER_MAY, ids=_ids(APISERVER_MAY))
def test_apiserver_may(rbac: Cluster, case: tuple) -> None:
    assert can(rbac, APISERVER, *case)


@pytest.mark.parametrize("case", APISERVER_MAY_NOT, ids=_ids(APISERVER_MAY_NOT))
def test_apiserver_may_not(rbac: Cluster, case: tuple) -> None:
    assert not can(rbac, APISERVER, *case)


@pytest.mark.parametrize("case", RUNNER_MAY, ids=_ids(RUNNER_MAY))
def test_runner_may(rbac: Cluster, case: tuple) -> None:
    assert can(rbac, RUNNER, *case)


@pytest.mark.parametrize("case", RUNNER_MAY_NOT, ids=_ids(RUNNER_MAY_NOT))
def test_runner_may_not(rbac: Cluster, case: tuple) -> None:
    assert not can(rbac, RUNNER, *case)


def test_operator_can_create_the_runner_identity(rbac: Cluster) -> None:
    """RBAC refuses a Role granting more than its creator holds; the operator's Role for the
    runner (operator/kube.py ensure_runner_identity) must pass that check for real."""
    objs = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "spatialforge-runner", "namespace": FRESH}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "spatialforge-runner", "namespace": FRESH},
         "rules": [{"apiGroups": ["spatialforge.io"], "resources": ["depthbatches", "reconstructionjobs"], "verbs": ["get"]},
                   {"apiGroups": ["spatialforge.io"], "resources": ["depthbatches/status", "reconstructionjobs/status"],
                    "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "spatialforge-runner", "namespace": FRESH},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "spatialforge-runner"},
         "subjects": [{"kind": "ServiceAccount", "name": "spatialforge-runner", "namespace": FRESH}]},
    ]
    rbac.kubectl("create", f"--as={OPERATOR}", "-f", "-", input=yaml.safe_dump_all(objs))
    assert can(rbac, f"system:serviceaccount:{FRESH}:spatialforge-runner", "patch", DB, FRESH, "status")
    # ...but a Role granting what the operator lacks (secrets) is refused.
    greedy = {**objs[1], "metadata": {"name": "greedy", "namespace": FRESH},
              "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
    proc = rbac.kubectl("create", f"--as={OPERATOR}", "-f", "-", input=yaml.safe_dump(greedy), check=False)
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower()


def test_front_end_writes_only_tenant_namespaces(helm: Helm, cluster: Cluster) -> None:
    """RBAC lets the front end create and patch any namespace (it cannot name ones that do not
    exist yet); the chart's admission policy, enforced by the real API server, confines it to
    `namespacePrefix`* (the default values turn both on: the front end writes the plan's GPU
    limit on a tenant's namespace before each job)."""
    import time
    import uuid

    release = f"nsp{uuid.uuid4().hex[:5]}"
    objs = [o for o in helm.render(namespace=NS, release=release)
            if o["kind"] in RBAC_KINDS | {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}]
    assert [o for o in objs if o["kind"] == "ValidatingAdmissionPolicy" and o["metadata"]["name"].endswith("-namespaces")]
    cluster.kubectl("create", "namespace", NS, check=False)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))
    who = f"system:serviceaccount:{NS}:{release}-spatialforge-apiserver"
    tenant = f"sf-{uuid.uuid4().hex[:8]}"
    tried: list[str] = []
    try:
        assert can(cluster, who, "create", "namespaces", None) and can(cluster, who, "patch", "namespaces", None)
        deadline = time.monotonic() + 30  # the API server loads a new policy within a second or so
        while True:  # a fresh name each try: one made before the policy loaded may still be terminating
            other = f"team-{uuid.uuid4().hex[:8]}"
            tried.append(other)
            refused = cluster.kubectl("create", "namespace", other, f"--as={who}", check=False)
            if refused.returncode != 0 or time.monotonic() > deadline:
                break
            cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
            time.sleep(0.5)
        assert refused.returncode != 0 and "may only create or change tenant namespaces" in refused.stderr, refused
        made = cluster.kubectl("create", "namespace", tenant, f"--as={who}", check=False)
        assert made.returncode == 0, made.stderr
        patched = cluster.kubectl("label", "namespace", "default", "owner=front-end", f"--as={who}", check=False)
        assert patched.returncode != 0 and "may only create or change tenant namespaces" in patched.stderr
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=yaml.safe_dump_all(objs),
                        check=False)
        cluster.kubectl("delete", "namespace", tenant, *tried, "--ignore-not-found", "--wait=false", check=False)
