"""Child Job names stay valid for an Indexed Job of any allowed size, whatever the resource's name."""

import re

import pytest

from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec
from spatialforge.operator.children import job_name

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("length", [1, 40, 51, 52, 60, 63, 120, 253])
def test_every_pod_hostname_of_the_job_is_a_dns_label(length: int) -> None:
    name = ("a" * length)[:length]
    max_index = next(m.le for m in DepthBatchSpec.model_fields["parallelism"].metadata if hasattr(m, "le")) - 1
    for kind in ("DepthBatch", "ReconstructionJob"):
        job = job_name(kind, name, "0b6e1c52-6f3a-4c55-9d1e-2a7c1f0e9b11")
        hostname = f"{job}-{max_index}"  # what the API server checks when it admits an Indexed Job
        assert len(hostname) <= 63 and DNS_LABEL.match(hostname), (length, job)
