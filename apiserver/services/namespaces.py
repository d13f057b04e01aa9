"""A tenant's namespace and the GPU limit written on it (the annotation the operator reads).

One place applies a plan to a namespace: key creation, an admin or CLI plan change, a Stripe
event, the end of a payment grace period (Billing) and job submission (Jobs) all come here.
"""

from __future__ import annotations

from spatialforge.apiserver.services.kube import Kube
from spatialforge.apiserver.services.plans import Plan
from spatialforge.apiserver.services.tenants import Tenants


class Namespaces:
    def __init__(self, kube: Kube, tenants: Tenants, prefix: str) -> None:
        self._kube = kube
        self._tenants = tenants
        self._prefix = prefix

    def name(self, tenant: str) -> str:
        """Tenant namespace = prefix + tenant id."""
        return f"{self._prefix}{tenant}"

    async def ensure(self, tenant: str, gpu_limit: int) -> None:
        """Before a create: the namespace exists with this GPU limit (skipped when this process
        wrote the same limit already)."""
        await self._kube.ensure_namespace(self.name(tenant), tenant, gpu_limit)

    async def apply_plan(self, tenant: str) -> Plan:
        """Write the tenant's current GPU limit to its namespace now, whatever this process
        wrote before (another replica or kubectl may have changed it)."""
        plan = await self._tenants.plan(tenant)
        await self._kube.ensure_namespace(self.name(tenant), tenant, plan.gpu_limit, refresh=True)
        return plan
