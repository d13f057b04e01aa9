"""Where a resource's results live in the object store; shared by runner, operator, front end.

    <output uri>/<namespace>/<name>/shard-<index>/...        one folder per shard
    <output uri>/<namespace>/<name>/shard-<index>/manifest.json   written last
    <output uri>/<namespace>/<name>/.staging/shard-<index>/<attempt>/...   a running attempt's
        outputs, moved into shard-<index>/ when it succeeds; never a result
    <output uri>/<namespace>/.claims/<name>/<uid>/shard-<index>   who publishes the shard (the
        publish fence, runner/storage/staging.py): created once, never replaced
"""

from __future__ import annotations

MANIFEST = "manifest.json"
STAGING = ".staging"
CLAIMS = ".claims"  # no resource name starts with "."


def output_base(output_uri: str, namespace: str, name: str) -> str:
    """Prefix under which every result of one resource lives (no trailing slash)."""
    return f"{output_uri.rstrip('/')}/{namespace}/{name}"


def shard_prefix(output_uri: str, namespace: str, name: str, index: int) -> str:
    return f"{output_base(output_uri, namespace, name)}/shard-{index:05d}"


def staging_prefix(output_uri: str, namespace: str, name: str, index: int) -> str:
    """Where the attempts of one shard stage their outputs (no trailing slash)."""
    return f"{output_base(output_uri, namespace, name)}/{STAGING}/shard-{index:05d}"


def claim_uri(output_uri: str, namespace: str, name: str, uid: str, index: int) -> str:
    """The publish fence of one shard; under the resource's uid, so one re-created under the
    same name starts unclaimed, and outside its results, so deleting those keeps it."""
    return f"{output_uri.rstrip('/')}/{namespace}/{CLAIMS}/{name}/{uid}/shard-{index:05d}"


def manifest_uri(output_uri: str, namespace: str, name: str, index: int = 0) -> str:
    return f"{shard_prefix(output_uri, namespace, name, index)}/{MANIFEST}"


def shard_of(items: list[str], index: int, count: int) -> list[str]:
    """The inputs shard `index` of `count` handles: a stable, disjoint, covering split."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    return sorted(items)[index::count]
