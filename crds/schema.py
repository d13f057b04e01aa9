"""Turn a pydantic model's JSON Schema into a structural OpenAPI v3 schema a CRD accepts.

The API server rejects `$ref`/`$defs`, `type: null`, `const`, draft-2020 numeric
`exclusiveMinimum`, and `additionalProperties: false` next to `properties`, so those are
rewritten here; everything else pydantic emits passes through unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

_DROP = {"title", "examples"}


def crd_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation schema, by alias, inlined and made structural."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs)


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        # Siblings of $ref (descriptions, CEL rules) win over the referenced schema's own.
        node = {**target, **node}
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"only X | None unions are supported in CRDs, got {any_of!r}")
        nullable = len(options) != len(any_of)
        merged = {**_convert(options[0], defs), **{k: v for k, v in node.items()}}
        node = merged
        if nullable:
            node["nullable"] = True
            if node.get("default", ...) is None:
                del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            node[bound] = node[key]
            node[key] = True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "allOf", "oneOf"):
            out[key] = _convert(value, defs)
        else:
            out[key] = value
    if "allOf" in out and len(out["allOf"]) == 1:
        out = {**out.pop("allOf")[0], **out}
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    return out


def _enum_type(values: list[Any]) -> str:
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, int) for v in values):
        return "integer"
    raise ValueError(f"mixed enum {values!r}")
