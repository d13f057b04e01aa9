"""The chart's default DepthPool and its autoscaler (both off by default), and the operator's
rights over pools, rendered without a cluster."""

from __future__ import annotations

from typing import Any

from spatialforge.crds.v1alpha1.depthpool import DepthPool
from tests.chart.conftest import Helm, find, pod_spec


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def test_no_pool_and_no_autoscaler_by_default(helm: Helm) -> None:
    assert not {"DepthPool"} & kinds(helm.render())
    assert not [o for o in helm.render("--set", "pool.autoscaling.enabled=true")
                if o["kind"] == "HorizontalPodAutoscaler" and "pool" in o["metadata"]["name"]]


def test_default_pool_validates_and_the_autoscaler_targets_its_scale_subresource(helm: Helm) -> None:
    objects = helm.render("--set", "pool.enabled=true", "--set", "pool.replicas=2", "--set", "pool.gpusPerReplica=2")
    pool = DepthPool.model_validate(find(objects, "DepthPool"))
    assert (pool.metadata["name"], pool.spec.replicas, pool.spec.gpus_per_replica) == ("default", 2, 2)
    assert pool.metadata["namespace"] == "spatialforge-system"

    objects = helm.render("--set", "pool.enabled=true", "--set", "pool.autoscaling.enabled=true",
                          "--set", "pool.minReplicas=0", "--set", "pool.maxReplicas=6")
    hpa = find(objects, "HorizontalPodAutoscaler", "-pool-default")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthPool",
                                             "name": "default"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
    # The autoscaler owns spec.replicas: the chart leaves it out, so an upgrade does not reset it.
    assert "replicas" not in find(objects, "DepthPool")["spec"]


def test_operator_may_run_pools_in_its_own_namespace_only(helm: Helm) -> None:
    objects = helm.render()
    cluster_rules = find(objects, "ClusterRole", "-operator")["rules"]
    own_rules = find(objects, "Role", "-operator")["rules"]

    def may(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)

    assert may(cluster_rules, "spatialforge.io", "depthpools", "watch")
    assert may(cluster_rules, "spatialforge.io", "depthpools/status", "patch")
    assert may(cluster_rules, "discovery.k8s.io", "endpointslices", "watch")
    assert may(cluster_rules, "apps", "deployments", "watch") and not may(cluster_rules, "apps", "deployments", "create")
    assert not may(cluster_rules, "", "services", "create")
    assert may(own_rules, "apps", "deployments", "create") and may(own_rules, "apps", "deployments", "patch")
    assert may(own_rules, "", "services", "create")


# -- the front end and the pool -------------------------------------------------------------------
NS = "sf-pools"


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(obj)["containers"][0]  # type: ignore[index]


def _front_end_env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in _container(find(objects, "Deployment", "-apiserver"))["env"]}


def _pool_roles(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["namespace"]: o for o in objects
            if o["kind"] == "Role" and o["metadata"]["name"].endswith("-apiserver-pools")}


def test_front_end_is_pointed_at_the_chart_pool(helm: Helm, monkeypatch) -> None:
    """SPATIALFORGE_API_DEPTH_POOLS names the chart's DepthPool (release namespace, pool.name),
    then apiserver.depthPools; the front end's Settings parse it into those pools, and the
    Service it looks for is the one the operator makes."""
    from spatialforge.apiserver.core.config import Settings
    from spatialforge.apiserver.services.pool import PoolRef, service_name
    from spatialforge.operator.pool import child_name

    objects = helm.render("--set", "pool.enabled=true", "--set", "pool.name=warm",
                          "--set-json", 'apiserver.depthPools=["other-ns/big","sf-pools/warm"]', namespace=NS)
    pool = find(objects, "DepthPool")
    value = _front_end_env(objects)["SPATIALFORGE_API_DEPTH_POOLS"]
    monkeypatch.setenv("SPATIALFORGE_API_DEPTH_POOLS", value)
    refs = [PoolRef.parse(p) for p in Settings(dev_mode=True).depth_pools.split(",") if p.strip()]
    assert refs == [PoolRef(pool["metadata"]["namespace"], pool["metadata"]["name"]), PoolRef("other-ns", "big")]
    assert service_name("warm") == child_name("warm")

    assert "SPATIALFORGE_API_DEPTH_POOLS" not in _front_end_env(helm.render())
    assert not _pool_roles(helm.render())


class _Recorder:
    """Stands in for a kubernetes_asyncio API class: records each call, answers from `answers`."""

    def __init__(self, calls: list[tuple[str, tuple, dict]], answers: dict[str, Any]) -> None:
        self._calls, self._answers = calls, answers

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append((name, args, kwargs))
            assert name in self._answers, f"the front end makes a new API call {name}: grant it in pool-role.yaml"
            return self._answers[name]
        return call


def _as_rbac(name: str, args: tuple, kwargs: dict) -> tuple[str, str, str, str, str | None]:
    """(apiGroup, resource, verb, namespace, object name) of one kubernetes_asyncio call."""
    if name == "get_namespaced_custom_object":
        group, _version, namespace, plural, obj = args
        return group, plural, "get", namespace, obj
    if name == "list_namespaced_endpoint_slice":
        return "discovery.k8s.io", "endpointslices", "list", args[0], None
    raise AssertionError(f"unmapped API call {name}")


def test_front_end_pool_rbac_is_exactly_what_its_pool_client_calls(helm: Helm) -> None:
    """The calls apiserver/services/pool.py makes to read a pool, recorded, are each allowed
    by the chart's Role in the pool's namespace; and the Role grants nothing they do not use."""
    import asyncio
    import itertools
    from collections import Counter
    from types import SimpleNamespace

    from spatialforge.apiserver.services.pool import DepthPools, PoolRef

    objects = helm.render("--set", "pool.enabled=true", "--set-json", 'apiserver.depthPools=["other-ns/big"]',
                          namespace=NS)
    roles = _pool_roles(objects)
    assert set(roles) == {NS, "other-ns"}
    bindings = {o["metadata"]["namespace"]: o for o in objects
                if o["kind"] == "RoleBinding" and o["metadata"]["name"].endswith("-apiserver-pools")}
    front_end_sa = pod_spec(find(objects, "Deployment", "-apiserver"))["serviceAccountName"]  # type: ignore[index]
    for ns, binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": roles[ns]["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": front_end_sa, "namespace": NS}]

    spec = find(objects, "DepthPool")["spec"]
    calls: list[tuple[str, tuple, dict]] = []
    pools = DepthPools.__new__(DepthPools)
    refs = [PoolRef(NS, "default"), PoolRef("other-ns", "big")]
    pools.refs, pools.ttl, pools._views = refs, 2.0, {}
    pools._locks = {r: asyncio.Lock() for r in refs}
    pools._in_flight, pools._turn = Counter(), itertools.count()
    pools.custom = _Recorder(calls, {"get_namespaced_custom_object": {"spec": spec}})
    pools.discovery = _Recorder(calls, {"list_namespaced_endpoint_slice": SimpleNamespace(items=[])})

    async def read() -> None:
        for ref in refs:
            view = await pools.view(ref)
            assert view.max_in_flight_per_tenant == spec["maxInFlightPerTenant"]

    asyncio.run(read())
    used = [_as_rbac(*c) for c in calls]
    assert {u[2] for u in used} == {"get", "list"}

    def allows(rule: dict[str, Any], group: str, resource: str, verb: str, name: str | None) -> bool:
        return (group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
                and (not rule.get("resourceNames") or name in rule["resourceNames"]))

    for group, resource, verb, ns, name in used:
        assert any(allows(r, group, resource, verb, name) for r in roles[ns]["rules"]), (group, resource, verb, ns)
    granted = {(g, res, v) for role in roles.values() for r in role["rules"]
               for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    assert granted == {(g, res, v) for g, res, v, _, _ in used}, "the Role grants more than the front end uses"
    assert roles[NS]["rules"][0]["resourceNames"] == ["default"]
    assert roles["other-ns"]["rules"][0]["resourceNames"] == ["big"]


def _pool_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod template the operator makes for the chart's DepthPool."""
    from spatialforge.operator.pool import pod_template
    from spatialforge.operator.settings import OperatorSettings

    body = find(objects, "DepthPool")
    body["metadata"]["uid"] = "uid-1"
    return pod_template(DepthPool.model_validate(body), OperatorSettings())


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return not selector.get("matchExpressions") and \
        all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def test_network_policies_let_front_end_and_operator_reach_the_pool(helm: Helm) -> None:
    """With networkPolicy.enabled (the default): the front end may reach the pool's replicas on
    their serve port, the operator too (hand-offs), and the replicas accept exactly those."""
    from spatialforge.operator.pool import PORT, PORT_NAME

    objects = helm.render("--set", "pool.enabled=true", namespace=NS)
    pod = _pool_pod(objects)
    pod_labels = pod["metadata"]["labels"]
    assert [(p["name"], p["containerPort"]) for p in pod["spec"]["containers"][0]["ports"]] == [(PORT_NAME, PORT)]
    ns_labels = {"kubernetes.io/metadata.name": NS}

    def egress_to_pool(policy: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in policy["spec"]["egress"] for peer in r.get("to", [])
                if "podSelector" in peer and _selects(peer["podSelector"], pod_labels)
                and _selects(peer.get("namespaceSelector", {}), ns_labels)]

    for component in ("-apiserver", "-operator"):
        rules = egress_to_pool(find(objects, "NetworkPolicy", component))
        assert rules and all(r["ports"] == [{"port": PORT, "protocol": "TCP"}] for r in rules), component

    policy = find(objects, "NetworkPolicy", "-pool-default")
    assert _selects(policy["spec"]["podSelector"], pod_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": PORT, "protocol": "TCP"}]
    for component in ("-apiserver", "-operator"):
        template_labels = find(objects, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert any("podSelector" in p and "namespaceSelector" not in p and _selects(p["podSelector"], template_labels)
                   for p in ingress["from"]), component

    # No hand-off, no operator egress to pools; no pool, no pool policy nor front-end egress to one.
    no_handoff = helm.render("--set", "pool.enabled=true", "--set", "operator.poolHandoffMaxImages=0", namespace=NS)
    assert not egress_to_pool(find(no_handoff, "NetworkPolicy", "-operator"))
    plain = helm.render(namespace=NS)
    assert not [o for o in plain if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-pool-default")]
    assert not egress_to_pool(find(plain, "NetworkPolicy", "-apiserver"))


def test_pool_replicas_write_only_to_their_volumes(helm: Helm) -> None:
    """The operator's pod for the pool runs as the images' user on a read-only root: /tmp and the
    caches (HF_HOME, SPATIALFORGE_MODEL_CACHE, the backend cache) are on writable volumes."""
    from spatialforge.crds import constants as c

    pod = _pool_pod(helm.render("--set", "pool.enabled=true"))
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    env = {e["name"]: e.get("value") for e in container["env"]}
    for path in ("/tmp", env[c.ENV_HF_HOME], env[c.ENV_MODEL_CACHE], env[c.ENV_BACKEND_CACHE]):
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), f"{path} is not writable"
