"""Builders of test resources: defaults that validate, overrides by keyword."""

from __future__ import annotations

from typing import Any

from spatialforge.crds.constants import API_VERSION


def depth_batch(name: str, *, gpus: int = 1, parallelism: int = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": ["s3://spatialforge-test/inputs/images/"],
        "output": {"uri": "s3://spatialforge-test/results"},
        "parallelism": parallelism,
        "placement": {"gpus": gpus},
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "DepthBatch", "metadata": {"name": name}, "spec": body}


def reconstruction_job(name: str, *, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input": "s3://spatialforge-test/inputs/walk.mp4",
        "output": {"uri": "s3://spatialforge-test/results"},
        "quality": "draft",
        "placement": {"gpus": gpus},
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "ReconstructionJob", "metadata": {"name": name}, "spec": body}
