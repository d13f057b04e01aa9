"""Session-wide real servers: the local control plane (hack/cluster.sh) and the operator.

A missing server fails the test with instructions; nothing is skipped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spatialforge.devcluster.plane import BEHAVIOUR_NAMESPACE as BEHAVIOUR_NS
from spatialforge.devcluster.plane import SYSTEM_NAMESPACE  # noqa: F401  (re-exported for the tests)
from spatialforge.devcluster.operator_process import OperatorProcess
from spatialforge.devcluster.plane import STATE, Cluster, HowToGetIt, isolate_environment, start_cluster, stop_cluster

RUNNER_SECRET = "spatialforge-objectstore"  # runner pods take their object-store env from it


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    try:
        plane, started = start_cluster()
    except HowToGetIt as exc:
        pytest.fail(str(exc), pytrace=False)
    yield plane
    if started:
        stop_cluster()


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[OperatorProcess]:
    log_dir = STATE / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    op = OperatorProcess(cluster.kubeconfig, log_dir, name="test-operator",
                         SPATIALFORGE_RUNNER_ENV_FROM_SECRET=RUNNER_SECRET,
                         # Small DepthBatches go to a ready DepthPool of their namespace, if any
                         # (only tests/runner/test_pool_cluster.py creates pools).
                         SPATIALFORGE_POOL_HANDOFF_MAX_IMAGES="4")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test (the operator creates the runner identity); deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


class Behaviour:
    """Steer the dev node agent: what pods of a resource (or namespace) do."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def set(self, key: str, **rule: object) -> None:
        patch = {"data": {key: json.dumps(rule)}}
        cm = self.cluster.get("configmap", "behaviour", BEHAVIOUR_NS)
        if cm is None:
            self.cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "behaviour", "namespace": BEHAVIOUR_NS}, **patch})
        else:
            self.cluster.kubectl("patch", "configmap", "behaviour", "-n", BEHAVIOUR_NS, "--type=merge",
                                 "-p", json.dumps(patch))


@pytest.fixture
def behaviour(cluster: Cluster) -> Behaviour:
    return Behaviour(cluster)


def pytest_configure(config: pytest.Config) -> None:
    Path(STATE).mkdir(parents=True, exist_ok=True)
    isolate_environment()
