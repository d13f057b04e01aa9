"""Fixtures for the runner suite: a real MinIO (hack/minio.sh), tiny models, a clean env."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spatialforge.devcluster.ports import free_port

REPO = Path(__file__).resolve().parents[2]
MINIO_SH = REPO / "hack" / "minio.sh"


def _minio_binary() -> Path:
    out = subprocess.run(
        ["bash", "-c", f'source "{REPO}/hack/lib.sh"; tool_path minio "$MINIO_VERSION"'],
        capture_output=True, text=True, check=True,
    )
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def minio_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A MinIO server for the session, started by hack/minio.sh; the env a client needs."""
    binary = _minio_binary()
    if not binary.is_file():
        pytest.fail(f"MinIO binary not found at {binary}. Build it once with: bash hack/build-tools.sh minio", pytrace=False)
    state = tmp_path_factory.mktemp("sf-state")
    env = {**os.environ, "SPATIALFORGE_STATE": str(state), "MINIO_PORT": str(free_port())}
    up = subprocess.run(["bash", str(MINIO_SH), "up"], env=env, capture_output=True, text=True, timeout=120)
    if up.returncode != 0:
        pytest.fail(f"hack/minio.sh up failed:\n{up.stderr}\n{up.stdout}", pytrace=False)
    client_env = {}
    for line in up.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            client_env[key] = value
    try:
        yield client_env
    finally:
        subprocess.run(["bash", str(MINIO_SH), "down"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def s3(minio_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the session's MinIO, with the client env set; returns its name."""
    import boto3

    for key, value in minio_env.items():
        monkeypatch.setenv(key, value)
    bucket = f"sf-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=minio_env["SPATIALFORGE_S3_ENDPOINT"],
        aws_access_key_id=minio_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=minio_env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SPATIALFORGE_MODEL_DIR of tiny checkpoints: small x every variant, plus base relative."""
    from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
    from spatialforge.runner.models.tiny import build_tiny_model_dir

    root = tmp_path_factory.mktemp("models")
    build_tiny_model_dir(root, sizes=(ModelSize.small,))
    build_tiny_model_dir(root, sizes=(ModelSize.base,), variants=(ModelVariant.relative,))
    return root


@pytest.fixture(autouse=True)
def runner_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Each test: no research mode, CPU, hub offline, a private termination-log file."""
    for key in ("SPATIALFORGE_RESEARCH_MODE", "SPATIALFORGE_MODEL_DIR", "KUBECONFIG", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SPATIALFORGE_DEVICE", "cpu")
    log = tmp_path / "termination-log"
    monkeypatch.setenv("SPATIALFORGE_TERMINATION_LOG", str(log))
    if "model_dir" in request.fixturenames:
        monkeypatch.setenv("SPATIALFORGE_MODEL_DIR", str(request.getfixturevalue("model_dir")))
    return log


@pytest.fixture
def make_manifest(tmp_path: Path):
    """Write a DepthBatch / ReconstructionJob manifest YAML; returns its path."""
    import yaml

    def make(kind: str, spec: dict, *, name: str = "job", namespace: str = "team-a", filename: str = "job.yaml") -> Path:
        doc = {
            "apiVersion": "spatialforge.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(doc))
        return path

    return make


@pytest.fixture
def rgb_image():
    """A textured RGB test image (H, W, 3) uint8."""
    import numpy as np

    def make(height: int = 48, width: int = 64, seed: int = 0) -> "np.ndarray":
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=-1)
        return np.clip(base + rng.integers(0, 40, size=base.shape), 0, 255).astype(np.uint8)

    return make
