"""Plans: monthly units, per-minute rate, concurrent GPUs, concurrent jobs, allowed model
sizes and presets.

Units: a DepthBatch costs one unit per input entry (an object or a prefix); a
ReconstructionJob costs 5 (draft), 10 (standard) or 20 (high).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from spatialforge.crds import DepthBatchSpec, ReconstructionJobSpec


class Plan(BaseModel):
    name: str
    monthly_units: int = Field(ge=0)
    rate_per_minute: int = Field(ge=1)
    gpu_limit: int = Field(ge=0)
    """Concurrent GPUs: written to the tenant namespace's spatialforge.io/gpu-limit annotation."""
    concurrent_jobs: int = Field(ge=1)
    """Jobs not yet finished at once, whatever their GPU count (`placement.gpus: 0` included):
    CPU pods cost too. Enforced by the front end at submission."""
    model_sizes: tuple[str, ...]
    presets: tuple[str, ...]


PLANS: dict[str, Plan] = {
    "free": Plan(name="free", monthly_units=100, rate_per_minute=60, gpu_limit=1, concurrent_jobs=2,
                 model_sizes=("small",), presets=("draft", "standard")),
    "builder": Plan(name="builder", monthly_units=5_000, rate_per_minute=300, gpu_limit=4, concurrent_jobs=20,
                    model_sizes=("small", "base"), presets=("draft", "standard", "high")),
    "pro": Plan(name="pro", monthly_units=50_000, rate_per_minute=1_200, gpu_limit=16, concurrent_jobs=100,
                model_sizes=("small", "base", "large"), presets=("draft", "standard", "high")),
    # Enterprise quotas are by contract: set per tenant with `plans set --units/--rate/--gpus`
    # (and concurrent jobs through PUT /v1/admin/tenants/<tenant>/plan's `concurrent_jobs`).
    "enterprise": Plan(name="enterprise", monthly_units=1_000_000, rate_per_minute=6_000, gpu_limit=64, concurrent_jobs=5_000,
                       model_sizes=("small", "base", "large"), presets=("draft", "standard", "high")),
}
PRESET_UNITS = {"draft": 5, "standard": 10, "high": 20}
# Depth Anything V2 Small is Apache-2.0; Base and Large are CC-BY-NC-4.0 (non-commercial).
OPEN_MODEL_SIZES = frozenset({"small"})


def effective(plan_name: str, overrides: dict[str, str]) -> Plan:
    """The tenant's plan with its per-tenant overrides (units, rate, gpus) applied."""
    plan = PLANS.get(plan_name, PLANS["free"])
    update = {}
    for field, key in (("monthly_units", "units"), ("rate_per_minute", "rate"), ("gpu_limit", "gpus"),
                       ("concurrent_jobs", "jobs")):
        if overrides.get(key) not in (None, ""):
            update[field] = int(overrides[key])
    return plan.model_copy(update=update)


def units(spec: DepthBatchSpec | ReconstructionJobSpec) -> int:
    if isinstance(spec, DepthBatchSpec):
        return len(spec.inputs)
    return PRESET_UNITS[spec.quality.value]


def refusal(plan: Plan, spec: DepthBatchSpec | ReconstructionJobSpec) -> str | None:
    """Why the plan forbids this spec (403), or None."""
    why = size_refusal(plan, spec.model.size.value)
    if why:
        return why
    if isinstance(spec, ReconstructionJobSpec) and spec.quality.value not in plan.presets:
        return f"quality preset {spec.quality.value!r} is not in plan {plan.name!r} (allowed: {', '.join(plan.presets)})"
    gpus = spec.gpu_demand
    if gpus > plan.gpu_limit:
        return f"{gpus} GPUs exceed plan {plan.name!r}'s concurrent limit of {plan.gpu_limit}"
    return None


def size_refusal(plan: Plan, size: str) -> str | None:
    """Why the plan forbids this model size (403), or None (jobs and the synchronous endpoints)."""
    if size not in plan.model_sizes:
        return f"model size {size!r} is not in plan {plan.name!r} (allowed: {', '.join(plan.model_sizes)})"
    return None


def licence_refusal(spec: DepthBatchSpec | ReconstructionJobSpec, *, research_mode: bool) -> str | None:
    """Why the deployment may not run this model (403), or None."""
    return size_licence_refusal(spec.model.size.value, research_mode=research_mode)


def size_licence_refusal(size: str, *, research_mode: bool) -> str | None:
    """Why the deployment may not run this model size (403), or None: the non-commercial
    checkpoints run only where the operator of the deployment enabled research mode."""
    if size in OPEN_MODEL_SIZES or research_mode:
        return None
    return (f"model size {size!r} (Depth Anything V2 {size.capitalize()}) is licensed CC-BY-NC-4.0, for "
            "non-commercial use only; this deployment does not enable research mode, so only 'small' "
            "(Apache-2.0) is accepted")
