"""Leader election on a coordination.k8s.io Lease, around the whole Kopf operator.

Kopf's peering pauses replicas of equal priority against each other rather than electing
one, so replicas compete for a Lease instead: the holder runs Kopf, the others wait warm.
A holder that cannot renew before its lease expires stops (and is restarted by its
Deployment), so two replicas never act at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from spatialforge.operator import metrics
from spatialforge.operator.kube import AlreadyExists, ConflictError, Kube

log = logging.getLogger(__name__)


def _micro(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def next_spec(current: dict[str, Any] | None, identity: str, duration: float, now: dt.datetime) -> dict[str, Any] | None:
    """The Lease spec after our attempt to take or renew it; None when another holder's lease
    is still valid. `leaseTransitions` is kept on renewal and counts every change of holder."""
    spec = {"holderIdentity": identity, "leaseDurationSeconds": int(duration), "renewTime": _micro(now)}
    if current is None:
        return {**spec, "acquireTime": _micro(now), "leaseTransitions": 0}
    holder = current.get("holderIdentity")
    renewed = _parse(current.get("renewTime")) or dt.datetime.fromtimestamp(0, dt.UTC)
    expired = (now - renewed).total_seconds() > (current.get("leaseDurationSeconds") or duration)
    if holder not in (None, "", identity) and not expired:
        return None
    transitions = int(current.get("leaseTransitions") or 0)
    if holder == identity:
        return {**spec, "acquireTime": current.get("acquireTime") or _micro(now), "leaseTransitions": transitions}
    # A change of holder (also from a released, empty holder) counts as a transition.
    return {**spec, "acquireTime": _micro(now), "leaseTransitions": transitions + 1}


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, duration: float) -> None:
        self.kube = kube
        self.namespace, self.name, self.identity, self.duration = namespace, name, identity, duration

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True when we hold it afterwards."""
        now = dt.datetime.now(dt.UTC)
        lease = await self.kube.get_lease(self.namespace, self.name)
        current = None if lease is None else lease.get("spec") or {}
        spec = next_spec(current, self.identity, self.duration, now)
        if spec is None:
            return False
        meta = {"name": self.name, "namespace": self.namespace}
        try:
            if lease is None:
                await self.kube.create_lease({"metadata": meta, "spec": spec})
            else:
                meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
                await self.kube.replace_lease({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                               "metadata": meta, "spec": spec})
        except (AlreadyExists, ConflictError):
            return False  # someone else renewed or took it first
        if current is not None and current.get("holderIdentity") not in (None, "", self.identity):
            metrics.LEASE_TAKEOVERS.inc()
            log.info("took lease %s/%s over from %s (transition %d)", self.namespace, self.name,
                     current.get("holderIdentity"), spec["leaseTransitions"])
        return True

    async def acquire(self) -> None:
        """Wait until we hold the lease."""
        logged = False
        while True:
            try:
                if await self.try_acquire():
                    log.info("acquired leader lease %s/%s as %s", self.namespace, self.name, self.identity)
                    return
            except Exception:
                log.exception("leader election attempt failed")
            if not logged:
                log.info("standing by: another replica holds lease %s/%s", self.namespace, self.name)
                logged = True
            await asyncio.sleep(max(1.0, self.duration / 5))

    async def hold(self, lost: asyncio.Event) -> None:
        """Renew every duration/3; set `lost` if the lease cannot be renewed in time."""
        last_ok = asyncio.get_running_loop().time()
        while not lost.is_set():
            await asyncio.sleep(self.duration / 3)
            try:
                if await self.try_acquire():
                    last_ok = asyncio.get_running_loop().time()
                    continue
                log.error("leader lease taken by another replica")
                lost.set()
            except Exception:
                log.exception("lease renewal failed")
                if asyncio.get_running_loop().time() - last_ok > self.duration * 2 / 3:
                    lost.set()

    async def release(self) -> None:
        """Give the lease up on a clean shutdown so a standby takes over at once."""
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                await self.kube.replace_lease(lease)
        except Exception:
            log.warning("could not release the leader lease", exc_info=True)
