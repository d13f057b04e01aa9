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

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

log = logging.getLogger(__name__)


def _micro(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class LeaderElector:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str, duration: float) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity, self.duration = namespace, name, identity, duration

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease; True when we hold it afterwards."""
        now = dt.datetime.now(dt.UTC)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.duration),
                "renewTime": _micro(now)}
        try:
            lease = await self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": _micro(now), "leaseTransitions": 0}}
            try:
                await self.coord.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
        holder = lease.spec.holder_identity
        renewed = _parse(lease.spec.renew_time) or dt.datetime.fromtimestamp(0, dt.UTC)
        expired = (now - renewed).total_seconds() > (lease.spec.lease_duration_seconds or self.duration)
        if holder not in (None, "", self.identity) and not expired:
            return False
        if holder != self.identity:
            spec["acquireTime"] = _micro(now)
            spec["leaseTransitions"] = (lease.spec.lease_transitions or 0) + 1
        else:
            spec["acquireTime"] = _micro(_parse(lease.spec.acquire_time) or now)
        lease_body = {"metadata": {"name": self.name, "namespace": self.namespace,
                                   "resourceVersion": lease.metadata.resource_version}, "spec": spec}
        try:
            await self.coord.replace_namespaced_lease(self.name, self.namespace, lease_body)
        except ApiException as exc:
            if exc.status == 409:
                return False  # someone else renewed or took it first
            raise
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
            lease = await self.coord.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.identity:
                await self.coord.patch_namespaced_lease(self.name, self.namespace, {"spec": {"holderIdentity": None}})
        except Exception:
            log.warning("could not release the leader lease", exc_info=True)
