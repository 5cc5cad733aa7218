"""Turn a pydantic model's JSON schema into a structural OpenAPI v3 schema for a CRD.

Structural means: every node has a type (or x-kubernetes-int-or-string), no $ref, no nullable
anyOf, no additionalProperties beside properties. Every property must have a description, so
`kubectl explain` helps; a missing one is an error here, not a silent gap.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]

_DROP = {"title", "discriminator"}


class SchemaError(ValueError):
    pass


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline a $ref (or a single allOf) under the keys written beside it."""
    for key in ("$ref",):
        if key in node:
            target = defs[node[key].rsplit("/", 1)[-1]]
            rest = {k: v for k, v in node.items() if k != key}
            return {**target, **rest}
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return {**_resolve(node["allOf"][0], defs), **rest}
    return node


def _collapse_any_of(node: Schema, defs: dict[str, Schema]) -> Schema:
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if rest.get("default", ...) is None:
        del rest["default"]
    if len(options) == 1:
        merged = {**_resolve(options[0], defs), **rest}
        return _collapse_any_of(merged, defs) if "anyOf" in merged else merged
    types = {o.get("type") for o in options}
    if types == {"integer", "string"}:
        # The string form's constraints (a quantity's pattern, maxLength) apply to strings only,
        # beside x-kubernetes-int-or-string as much as inside an anyOf.
        rules = rest.pop("x-kubernetes-validations", None)
        for option in options:
            rest.update({k: v for k, v in option.items() if k not in ("type", "title")})
        rest["x-kubernetes-int-or-string"] = True
        if rules:
            rest["x-kubernetes-validations"] = rules
        return rest
    raise SchemaError(f"cannot express a union of {sorted(map(str, types))} structurally")


def structural(node: Schema, defs: dict[str, Schema], path: str = "") -> Schema:
    node = _resolve(node, defs)
    if "anyOf" in node:
        node = _collapse_any_of(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP or (key == "additionalProperties" and value is False):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema's numeric bound; OpenAPI v3.0 wants the bound plus a boolean flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out["properties"] = {
                name: structural(sub, defs, f"{path}.{name}") for name, sub in value.items()
            }
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs, f"{path}[]")
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if "x-kubernetes-int-or-string" in out:
        out.pop("type", None)
    elif "type" not in out:
        if "enum" in out:
            out["type"] = "string"
        else:
            raise SchemaError(f"{path or '<root>'}: no type in {sorted(node)}")
    if out.get("type") == "object" and "properties" in out:
        for name, sub in out["properties"].items():
            if not sub.get("description"):
                raise SchemaError(f"{path}.{name}: every field needs a description")
    return out


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    return structural(raw, defs)
