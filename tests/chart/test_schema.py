"""values.schema.json: the shipped values pass, wrong types and unknown keys are refused."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.chart.conftest import CHART, CI_VALUES, Helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


@pytest.mark.parametrize("values", [CHART / "values.yaml", *CI_VALUES], ids=lambda p: p.name)
def test_shipped_values_are_valid(values: Path) -> None:
    jsonschema.validate(yaml.safe_load(values.read_text()) or {}, SCHEMA)


def test_every_object_in_schema_refuses_unknown_keys() -> None:
    """additionalProperties is false wherever the chart defines the keys itself."""
    free_form = {"commonLabels", "podAnnotations", "nodeSelector", "annotations", "labels", "affinity",
                 "podSecurityContext", "containerSecurityContext"}

    def walk(node: dict, path: str) -> list[str]:
        bad = []
        if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
            bad.append(path)
        for key, sub in (node.get("properties") or {}).items():
            if key not in free_form:
                bad += walk(sub, f"{path}.{key}")
        return bad

    assert walk(SCHEMA, "") == []


BAD = [
    ("operator.replicas=two", "got string, want integer"),
    ("operator.bogus=1", "additional properties 'bogus' not allowed"),
    ("bogusTopLevel=1", "additional properties 'bogusTopLevel' not allowed"),
    ("operator.image.pullPolicy=Sometimes", "pullPolicy"),
    ("operator.healthPort=70000", "healthPort"),
    ("operator.quotas.gpuBudget=-1", "gpuBudget"),
    ("apiserver.service.type=Magic", "type"),
    ("networkPolicy.enabled=maybe", "got string, want boolean"),
    ("runner.tenantNamespaces[0]=Not_A_Namespace", "tenantNamespaces"),
    ("monitoring.prometheusRule.api5xxRatio=2", "api5xxRatio"),
    ("apiserver.envNames.redisUrl=lower-case", "redisUrl"),
    ("apiserver.depthPools[0]=no-namespace", "depthPools"),
    ("apiserver.resources.limits.gpu=1", "additional properties 'gpu' not allowed"),
]


@pytest.mark.parametrize("setting,message", BAD, ids=[b[0] for b in BAD])
def test_helm_refuses_bad_values(helm: Helm, setting: str, message: str) -> None:
    proc = helm.template("--set", setting, check=False)
    assert proc.returncode != 0, f"helm accepted --set {setting}"
    assert "schema" in proc.stderr and message in proc.stderr, proc.stderr


def test_two_replicas_without_leader_election_fail(helm: Helm) -> None:
    proc = helm.template("--set", "operator.leaderElection.enabled=false", check=False)
    assert proc.returncode != 0 and "leaderElection" in proc.stderr
    helm.template("--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=1")
