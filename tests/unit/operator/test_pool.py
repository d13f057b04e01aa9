"""DepthPool, pure parts: the budget grant, the Deployment and Service, the CRD."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from spatialforge.crds.generate import render_pool_crd
from spatialforge.crds.v1alpha1 import depthpool as dp
from spatialforge.crds.v1alpha1.depthpool import DepthPool, DepthPoolSpec
from spatialforge.operator import pool
from spatialforge.operator.settings import OperatorSettings


def ask(name: str, wanted: int, per: int = 1, ns: str = "sys", created: str = "2026-01-01T00:00:00Z") -> pool.Ask:
    return pool.Ask((dp.KIND, ns, name), ns, created, wanted, per)


def test_pool_gets_what_running_jobs_leave_and_says_why_when_clamped() -> None:
    g = pool.grant([ask("a", 4, per=2)], global_budget=6, namespace_limits={}, jobs_in_use=1, jobs_ns_use={})
    got = g[(dp.KIND, "sys", "a")]
    assert (got.replicas, got.wanted, got.reason, got.limited) == (2, 4, dp.REASON_CLUSTER_BUDGET, True)
    assert "5 GPUs" in got.message and "2 of 4 replicas" in got.message


def test_older_pool_first_then_namespace_limit() -> None:
    asks = [ask("young", 3, created="2026-01-02T00:00:00Z"), ask("old", 3, created="2026-01-01T00:00:00Z"),
            ask("other", 3, ns="team", created="2026-01-03T00:00:00Z")]
    g = pool.grant(asks, global_budget=8, namespace_limits={"team": 1}, jobs_in_use=0, jobs_ns_use={})
    assert g[(dp.KIND, "sys", "old")].replicas == 3
    assert g[(dp.KIND, "sys", "young")].replicas == 3
    other = g[(dp.KIND, "team", "other")]
    assert other.replicas == 1 and other.reason == dp.REASON_NAMESPACE_LIMIT


def test_unlimited_and_cpu_pools_get_all_they_want() -> None:
    g = pool.grant([ask("a", 5), ask("cpu", 7, per=0)], global_budget=None, namespace_limits={},
                   jobs_in_use=100, jobs_ns_use={})
    assert [g[(dp.KIND, "sys", n)].replicas for n in ("a", "cpu")] == [5, 7]
    g = pool.grant([ask("cpu", 7, per=0)], global_budget=0, namespace_limits={}, jobs_in_use=3, jobs_ns_use={})
    assert not g[(dp.KIND, "sys", "cpu")].limited


def test_wanted_replicas_within_min_and_max() -> None:
    assert DepthPoolSpec(replicas=10, max_replicas=3).wanted_replicas == 3
    assert DepthPoolSpec(replicas=0, min_replicas=2).wanted_replicas == 2
    with pytest.raises(ValidationError, match="minReplicas"):
        DepthPoolSpec(min_replicas=5, max_replicas=2)


def _pool(**spec: object) -> DepthPool:
    return DepthPool.model_validate({"apiVersion": "spatialforge.io/v1alpha1", "kind": "DepthPool",
                                     "metadata": {"name": "fast", "namespace": "sys", "uid": "u-1"}, "spec": spec})


def test_deployment_serves_on_the_pod_ip_with_gpus_and_readiness() -> None:
    settings = OperatorSettings(runner_env_from_secret="store")
    res = _pool(gpusPerReplica=2, maxBatch=16, maxWaitMs=5, backend="onnxruntime", maxInFlightPerTenant=3,
                model={"size": "small", "variant": "metric-indoor"})
    d = pool.deployment(res, settings, replicas=3)
    assert d["metadata"]["name"] == "spatialforge-pool-fast" and d["spec"]["replicas"] == 3
    assert d["metadata"]["ownerReferences"][0]["kind"] == "DepthPool"
    assert d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    pod = d["spec"]["template"]
    assert pod["metadata"]["labels"][pool.LABEL_POOL] == "fast"
    ctr = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in ctr["env"]}
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert ctr["args"] == ["--host", "$(POD_IP)", "--port", "8080"] and ctr["command"][-1] == "serve"
    assert env["SPATIALFORGE_SERVE_MAX_BATCH"] == "16" and env["SPATIALFORGE_SERVE_MAX_WAIT_MS"] == "5"
    assert env["SPATIALFORGE_SERVE_MODEL_VARIANT"] == "metric-indoor"
    assert env["SPATIALFORGE_DEPTH_BACKEND"] == "onnxruntime"
    assert not [k for k in env if "IN_FLIGHT" in k]  # the front end enforces it, across its replicas
    assert ctr["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert ctr["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert ctr["envFrom"] == [{"secretRef": {"name": "store"}}]
    # The hash moves with the pod template, not with the replica count.
    same = pool.deployment(res, settings, replicas=1)["metadata"]["annotations"]
    other = pool.deployment(_pool(gpusPerReplica=1), settings, replicas=3)["metadata"]["annotations"]
    assert same == d["metadata"]["annotations"] != other


def test_service_and_selector() -> None:
    svc = pool.service(_pool(maxInFlightPerTenant=7))
    assert svc["metadata"]["name"] == "spatialforge-pool-fast"
    assert svc["spec"]["ports"][0]["name"] == "http" and svc["spec"]["selector"] == pool.selector_labels("fast")
    assert pool.selector("fast") == "app.kubernetes.io/component=depth-pool,spatialforge.io/pool=fast"


def test_ready_endpoints_counts_ready_addresses_once() -> None:
    from kubernetes_asyncio import client as k

    from spatialforge.crds.pool import ready_urls

    def model(s: dict) -> k.V1EndpointSlice:
        return k.V1EndpointSlice(address_type="IPv4", ports=[k.DiscoveryV1EndpointPort(**p) for p in s.get("ports", [])],
                                 endpoints=[k.V1Endpoint(addresses=e["addresses"], conditions=None if "conditions" not in e
                                                         else k.V1EndpointConditions(**e["conditions"]))
                                            for e in s.get("endpoints", [])])

    port = [{"name": "http", "port": 8080}]
    slices = [{"ports": port, "endpoints": [{"addresses": ["127.1.0.1"], "conditions": {"ready": True}},
                                            {"addresses": ["127.1.0.2"], "conditions": {"ready": False}},
                                            {"addresses": ["127.1.0.3"], "conditions": {"terminating": True}},
                                            {"addresses": ["127.1.0.4"]}]},  # ready unknown (nil): ready
              {"ports": port, "endpoints": [{"addresses": ["127.1.0.1"], "conditions": {"ready": True}}]},
              {"endpoints": [{"addresses": ["127.1.0.5"]}]}, {}]  # no http port: not reachable
    assert pool.ready_endpoints(slices) == 2
    # The front end reads the same slices as kubernetes client models and finds the same endpoints.
    models = [model(s) for s in slices]
    assert ready_urls(models) == ready_urls(slices) == ["http://127.1.0.1:8080", "http://127.1.0.4:8080"]


def test_crd_has_scale_and_status_subresources_and_columns() -> None:
    crd = render_pool_crd()
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    assert [col["name"] for col in version["additionalPrinterColumns"][:4]] == ["Ready", "Replicas", "GPUs", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert {"gpusPerReplica", "replicas", "minReplicas", "maxReplicas", "maxBatch", "maxWaitMs",
            "maxInFlightPerTenant", "backend", "model"} <= set(spec["properties"])
    assert yaml.safe_dump(crd)


def test_only_small_listed_one_shard_batches_are_handed_off() -> None:
    from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
    from spatialforge.operator.handoff import eligible

    def spec(**kw: object) -> DepthBatchSpec:
        return DepthBatchSpec.model_validate({"inputs": ["s3://bkt/a.png", "s3://bkt/b.png"],
                                              "output": {"uri": "s3://bkt/out"}, **kw})

    assert eligible(spec(), 4) and not eligible(spec(), 1) and not eligible(spec(), 0)
    assert not eligible(spec(inputs=["s3://bkt/in/"]), 4)  # a prefix: its size is unknown
    assert not eligible(spec(parallelism=2), 4) and not eligible(spec(queueName="q"), 4)
    assert not eligible(spec(suspend=True), 4)
