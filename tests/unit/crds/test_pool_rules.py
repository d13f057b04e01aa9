"""The DepthPool rules both sides share (crds/pool.py) and the typed pool status patch."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from spatialforge.crds.pool import ANNOTATION_HAND_OFF, BatchHandOff, HandOffRecord, service_name
from spatialforge.crds.v1alpha1.depthpool import DepthPoolStatus
from spatialforge.operator.status import model_patch

SPEC = {"inputs": ["s3://bkt/a.png"], "output": {"uri": "s3://bkt/out"}}


def test_service_name_is_a_dns_label() -> None:
    assert service_name("fast") == "spatialforge-pool-fast"
    long = service_name("a" * 44 + "-" + "b" * 20)
    assert len(long) <= 63 and not long.endswith("-")


def test_hand_off_record_round_trip_and_an_unreadable_one_is_failed() -> None:
    record = HandOffRecord(attempt="0123abcd", pool="sys/warm", url="http://198.18.0.1:8080", started="2026-01-01T00:00:00Z")
    obj = {"metadata": {"annotations": {ANNOTATION_HAND_OFF: record.dumps()}}}
    assert HandOffRecord.of(obj) == record and HandOffRecord.of({"metadata": {}}) is None
    broken = HandOffRecord.of({"metadata": {"annotations": {ANNOTATION_HAND_OFF: "{not json"}}})
    assert broken is not None and broken.failed  # never resumed: the batch runs as a Job


def test_a_hand_off_needs_an_attempt_id_of_its_own_shape() -> None:
    BatchHandOff.model_validate({"namespace": "t", "name": "b", "attempt": "abc-1", "spec": SPEC})
    for bad in ("", "UPPER", "x" * 64, "a/b"):
        with pytest.raises(ValidationError):
            BatchHandOff.model_validate({"namespace": "t", "name": "b", "attempt": bad, "spec": SPEC})


def test_typed_pool_status_patch_removes_what_the_model_leaves_out() -> None:
    stored = {"replicas": 2, "reason": "ClusterBudget", "message": "2 of 3", "backOffUntil": "2026-01-01T00:00:00Z"}
    patch = model_patch(stored, DepthPoolStatus(replicas=2, reason="WithinBudget", message="2 GPUs granted"))
    assert patch["backOffUntil"] is None and patch["reason"] == "WithinBudget" and "replicas" not in patch
    assert "wantedReplicas" not in patch  # None and absent: nothing to remove
    written = {k: v for k, v in {**stored, **patch}.items() if v is not None}  # a merge patch's None deletes
    written.update(readyReplicas=0, selector="", gpus=0, endpoints=0, service="", conditions=[], failedHandOffs=0)
    assert model_patch(written, DepthPoolStatus(replicas=2, reason="WithinBudget", message="2 GPUs granted")) == {}
