"""The cache recognises an event that carries the very version it holds (the watch echo of the
operator's own write), so the handlers can skip it; anything newer or another object is news."""

from __future__ import annotations

from typing import Any

from spatialforge.crds import constants as c
from spatialforge.operator.cache import Cache


def resource(rv: str, uid: str = "u1") -> dict[str, Any]:
    return {"kind": "DepthBatch", "metadata": {"name": "d", "namespace": "ns", "uid": uid, "resourceVersion": rv},
            "spec": {}}


def child(kind: str, rv: str, uid: str) -> dict[str, Any]:
    labels = {c.LABEL_KIND: "DepthBatch", c.LABEL_NAME: "d", c.LABEL_UID: "u1"}
    return {"kind": kind, "metadata": {"name": f"{kind.lower()}-{uid}", "namespace": "ns", "uid": uid,
                                       "resourceVersion": rv, "labels": labels}}


def test_the_same_version_is_held_a_newer_one_or_another_object_is_not() -> None:
    cache = Cache()
    assert not cache.holds_resource(resource("5"))
    cache.put_resource(resource("5"))
    assert cache.holds_resource(resource("5"))
    assert not cache.holds_resource(resource("6"))
    assert not cache.holds_resource(resource("5", uid="u2"))  # re-created under the same name
    no_rv = resource("5")
    del no_rv["metadata"]["resourceVersion"]
    assert not cache.holds_resource(no_rv)

    cache.put_job(child("Job", "7", "j1"))
    assert cache.holds_job(child("Job", "7", "j1")) and not cache.holds_job(child("Job", "8", "j1"))
    assert not cache.holds_job(child("Job", "7", "j2"))
    cache.put_pod(child("Pod", "9", "p1"))
    assert cache.holds_pod(child("Pod", "9", "p1")) and not cache.holds_pod(child("Pod", "9", "p2"))
    unlabelled = child("Pod", "9", "p1")
    unlabelled["metadata"]["labels"] = {}
    assert not cache.holds_pod(unlabelled)
