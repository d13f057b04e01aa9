"""The leader Lease: renewals keep leaseTransitions, takeovers count, a stuck leader gives up."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

from spatialforge.operator.kube import ConflictError
from spatialforge.operator.leader import LeaderElector, next_spec

NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)


def test_renewal_keeps_transitions_and_acquire_time() -> None:
    mine = {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2026-01-01T11:59:55.000000Z",
            "acquireTime": "2026-01-01T11:00:00.000000Z", "leaseTransitions": 3}
    spec = next_spec(mine, "a", 15, NOW)
    assert spec["leaseTransitions"] == 3 and spec["acquireTime"] == mine["acquireTime"]
    assert spec["renewTime"] == "2026-01-01T12:00:00.000000Z"


def test_takeover_counts_only_after_expiry() -> None:
    theirs = {"holderIdentity": "b", "leaseDurationSeconds": 15, "renewTime": "2026-01-01T11:59:55.000000Z",
              "leaseTransitions": 3}
    assert next_spec(theirs, "a", 15, NOW) is None
    expired = {**theirs, "renewTime": "2026-01-01T11:59:40.000000Z"}
    spec = next_spec(expired, "a", 15, NOW)
    assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 4
    assert next_spec({**theirs, "holderIdentity": None}, "a", 15, NOW)["leaseTransitions"] == 4
    assert next_spec(None, "a", 15, NOW)["leaseTransitions"] == 0


class FakeLeases:
    """Stands in for Kube's Lease calls: an in-memory Lease with resourceVersions."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.fail = False

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.fail:
            raise OSError("API server unreachable")
        return copy.deepcopy(self.lease)

    async def create_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        self.lease = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": "1"}}
        return self.lease

    async def replace_lease(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ConflictError("modified")
        rv = str(int(self.lease["metadata"]["resourceVersion"]) + 1)
        self.lease = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": rv}}
        return self.lease


def test_renewals_through_the_api_keep_the_transition_count() -> None:
    leases = FakeLeases()
    a = LeaderElector(leases, "sys", "lease", "a", 15)  # type: ignore[arg-type]
    b = LeaderElector(leases, "sys", "lease", "b", 15)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await a.try_acquire() and await a.try_acquire() and await a.try_acquire()
        assert leases.lease["spec"]["leaseTransitions"] == 0
        assert not await b.try_acquire()
        await a.release()
        assert await b.try_acquire() and await b.try_acquire()
        assert leases.lease["spec"]["leaseTransitions"] == 1 and leases.lease["spec"]["holderIdentity"] == "b"

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_reports_the_lease_lost() -> None:
    leases = FakeLeases()
    a = LeaderElector(leases, "sys", "lease", "a", 0.3)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await a.try_acquire()
        leases.fail = True
        lost = asyncio.Event()
        await asyncio.wait_for(a.hold(lost), timeout=5)  # returns once lost is set
        assert lost.is_set()

    asyncio.run(scenario())
