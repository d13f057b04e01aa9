"""What a runner pod may do, as data: the operator creates it, the chart renders it, the
admission policy (crds/policy.py) narrows it further. One source, so the copies cannot drift.
"""

from __future__ import annotations

from typing import Any, Final

from spatialforge.crds.constants import GROUP
from spatialforge.crds.kinds import PLURALS, STATUS_RESOURCES

# The runner's ServiceAccount in every tenant namespace (the operator's and the chart's default).
RUNNER_SERVICE_ACCOUNT: Final = "spatialforge-runner"


def runner_rules() -> list[dict[str, Any]]:
    """The runner Role's rules: read our resources, read and patch their status; nothing else.
    Which part of the status it may patch is the admission policy's business."""
    return [
        {"apiGroups": [GROUP], "resources": list(PLURALS), "verbs": ["get"]},
        {"apiGroups": [GROUP], "resources": list(STATUS_RESOURCES), "verbs": ["get", "patch"]},
    ]
