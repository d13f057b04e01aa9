"""Could any current node take a runner pod? A pure check of GPUs, labels and taints.

It answers only what no node could ever do as the nodes stand (allocatable GPUs per pod, the
node selector, NoSchedule/NoExecute taints, cordons); whether a node has room right now is
the scheduler's business (the pod's PodScheduled condition).
"""

from __future__ import annotations

from typing import Any


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t.get("key") == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def misfit(node: dict[str, Any], *, gpus: int, gpu_resource: str, node_selector: dict[str, str],
           tolerations: list[dict[str, Any]]) -> str | None:
    """Why `node` can never take the pod; None when it could."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    if spec.get("unschedulable"):
        return "cordoned"
    labels = meta.get("labels") or {}
    wrong = sorted(k for k, v in node_selector.items() if labels.get(k) != v)
    if wrong:
        return "no label " + ", ".join(f"{k}={node_selector[k]}" for k in wrong)
    for taint in spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return f"untolerated taint {taint.get('key')}{'=' + taint['value'] if taint.get('value') else ''}:{taint.get('effect')}"
    if gpus:
        raw = ((node.get("status") or {}).get("allocatable") or {}).get(gpu_resource, "0")
        try:
            have = int(raw)
        except ValueError:
            have = 0
        if have < gpus:
            return f"{have} {gpu_resource} allocatable, {gpus} needed per pod"
    return None


def no_fit(nodes: list[dict[str, Any]], *, gpus: int, gpu_resource: str, node_selector: dict[str, str],
           tolerations: list[dict[str, Any]]) -> str | None:
    """None when some node could take the pod, else a message saying why none can."""
    if not nodes:
        return "there are no nodes"
    reasons: dict[str, int] = {}
    for node in nodes:
        why = misfit(node, gpus=gpus, gpu_resource=gpu_resource, node_selector=node_selector, tolerations=tolerations)
        if why is None:
            return None
        reasons[why] = reasons.get(why, 0) + 1
    detail = "; ".join(f"{n} node(s): {why}" for why, n in sorted(reasons.items(), key=lambda x: -x[1])[:3])
    return f"no node fits a runner pod ({detail})"
