"""The DepthPool CRD: status and scale subresources, its own printer columns.

Rendered by `spatialforge crds generate` next to the kinds of work (generate.py); the schema
comes from the pydantic models in v1alpha1/depthpool.py, as for every other kind.
"""

from __future__ import annotations

from typing import Any

from spatialforge.crds.constants import CATEGORY, GROUP, VERSION
from spatialforge.crds.schema import crd_schema
from spatialforge.crds.v1alpha1 import depthpool as dp

FILENAME = f"{GROUP}_{dp.PLURAL}.yaml"
CRD_NAME = f"{dp.PLURAL}.{GROUP}"


def render_pool_crd() -> dict[str, Any]:
    spec = crd_schema(dp.DepthPoolSpec)
    spec["x-kubernetes-validations"] = [
        {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}]
    schema = {
        "type": "object",
        "description": (dp.DepthPool.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": crd_schema(dp.DepthPoolStatus),
        },
    }
    columns = [
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Wanted", "type": "integer", "jsonPath": ".status.wantedReplicas", "priority": 1},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "Service", "type": "string", "jsonPath": ".status.service", "priority": 1},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": dp.KIND,
                "listKind": f"{dp.KIND}List",
                "plural": dp.PLURAL,
                "singular": dp.SINGULAR,
                "shortNames": list(dp.SHORT_NAMES),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }
