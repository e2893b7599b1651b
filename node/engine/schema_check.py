"""The JSON Schema subset `response_format` supports, checked and normalised in Python.

Every answer generated under a schema must validate against it, so a keyword the grammar
cannot enforce is refused (ValueError naming it) rather than ignored, and every count that
becomes a repetition in the grammar is bounded before llama.cpp sees it. The result is a
schema the grammar converter handles branch for branch: type lists become `anyOf`, one-element
`allOf` is unwrapped, annotations are dropped, boolean subschemas become `{}`.
"""

from __future__ import annotations

import math
from typing import Any

from node.engine.pattern import pattern_to_gbnf

MAX_DEPTH = 32  # nested subschemas
MAX_SUBSCHEMAS = 2000
MAX_REPEAT = 1000  # minLength / maxLength / minItems / maxItems
MAX_PROPERTIES = 100  # per object
MAX_ENUM = 500
MAX_ALTERNATIVES = 64  # anyOf branches

TYPES = frozenset({"string", "integer", "number", "boolean", "null", "object", "array"})
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid3", "uuid4", "uuid5"})
# Keywords that constrain a value but that the grammar cannot (yet) enforce.
UNSUPPORTED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "additionalItems",
        "unevaluatedProperties",
        "unevaluatedItems",
        "not",
        "if",
        "then",
        "else",
        "oneOf",
        "$dynamicRef",
        "$recursiveRef",
    }
)
# Everything else that is not structural is an annotation (title, description, default, ...)
# or unknown; JSON Schema ignores both, and so does the grammar.
STRUCTURAL = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "minLength",
        "maxLength",
        "format",
        "pattern",
    }
)


class SchemaError(ValueError):
    """A schema outside the supported subset; the message names the place and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"response_format json_schema at {path or '/'}: {reason}")


def normalise(schema: Any) -> dict[str, Any]:
    """The checked, normalised copy of a client's schema (see the module doc)."""
    if not isinstance(schema, dict):
        raise SchemaError("", "a schema must be a JSON object")
    walker = _Walker()
    result = walker.visit(schema, "", 0)
    assert isinstance(result, dict)
    return result


class _Walker:
    def __init__(self) -> None:
        self.count = 0

    def visit(self, schema: Any, path: str, depth: int) -> dict[str, Any]:
        self.count += 1
        if depth > MAX_DEPTH:
            raise SchemaError(path, f"subschemas are nested deeper than {MAX_DEPTH}")
        if self.count > MAX_SUBSCHEMAS:
            raise SchemaError(path, f"the schema has more than {MAX_SUBSCHEMAS} subschemas")
        if schema is True:
            return {}
        if schema is False or not isinstance(schema, dict):
            raise SchemaError(path, "a subschema must be a JSON object (or true)")
        for key in schema:
            if key in UNSUPPORTED:
                raise SchemaError(path, f"{key} is not supported")
        s = {k: v for k, v in schema.items() if k in STRUCTURAL}
        out: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            if key in s:
                defs = s.pop(key)
                if not isinstance(defs, dict):
                    raise SchemaError(path, f"{key} must be an object")
                out[key] = {
                    name: self.visit(sub, f"{path}/{key}/{name}", depth + 1)
                    for name, sub in defs.items()
                }
        if "$ref" in s:
            ref = self._ref(s, path)
            # The converter does not look beside a `$ref` for definitions: wrap it.
            return {**out, "anyOf": [ref]} if out else ref
        if isinstance(s.get("type"), list):
            return {**out, **self._type_list(s, path, depth)}
        if "allOf" in s:
            parts = s.pop("allOf")
            if not isinstance(parts, list) or len(parts) != 1 or s:
                raise SchemaError(path, "allOf is supported only with one subschema")
            return {**out, **self.visit(parts[0], f"{path}/allOf/0", depth + 1)}
        if "anyOf" in s:
            return {**out, **self._any_of(s, path, depth)}
        if "enum" in s or "const" in s:
            return {**out, **self._constants(s, path)}
        kind = s.get("type", _implied_type(s, path))
        if kind is None:
            return out  # no constraint: any JSON value
        if kind not in TYPES:
            raise SchemaError(path, f"unknown type {kind!r}")
        if kind == "string":
            out.update(self._string(s, path))
        elif kind == "object":
            out.update(self._object(s, path, depth))
        elif kind == "array":
            out.update(self._array(s, path, depth))
        out["type"] = kind
        return out

    def _ref(self, s: dict[str, Any], path: str) -> dict[str, Any]:
        ref = s.pop("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaError(path, "only local $ref ('#/...') is supported")
        if s:
            raise SchemaError(path, f"$ref with {', '.join(sorted(s))} beside it is not supported")
        return {"$ref": ref}

    def _type_list(self, s: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        kinds = s.pop("type")
        if not kinds or any(k not in TYPES for k in kinds) or len(set(kinds)) != len(kinds):
            raise SchemaError(path, f"type must list distinct types of {sorted(TYPES)}")
        if "enum" in s or "const" in s:
            out = self._constants(s, path)
            for value in out["enum"]:
                if not any(_has_type(value, kind) for kind in kinds):
                    raise SchemaError(path, f"enum value {value!r} is not of the types {kinds}")
            return out
        branches = [{**s, "type": kind} for kind in kinds]
        return self._any_of({"anyOf": branches}, path, depth)

    def _any_of(self, s: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        branches = s.pop("anyOf")
        if s:
            raise SchemaError(path, f"anyOf with {', '.join(sorted(s))} beside it is not supported")
        if not isinstance(branches, list) or not 0 < len(branches) <= MAX_ALTERNATIVES:
            raise SchemaError(path, f"anyOf must list 1 to {MAX_ALTERNATIVES} subschemas")
        return {
            "anyOf": [self.visit(b, f"{path}/anyOf/{i}", depth + 1) for i, b in enumerate(branches)]
        }

    def _constants(self, s: dict[str, Any], path: str) -> dict[str, Any]:
        kind = s.pop("type", None)
        if "const" in s and "enum" in s:
            raise SchemaError(path, "enum and const together are not supported")
        values = [s.pop("const")] if "const" in s else s.pop("enum")
        if s:
            raise SchemaError(path, f"enum/const with {', '.join(sorted(s))} is not supported")
        if not isinstance(values, list) or not 0 < len(values) <= MAX_ENUM:
            raise SchemaError(path, f"enum must list 1 to {MAX_ENUM} values")
        for value in values:
            _check_json_value(value, path)
            if kind is not None and not _has_type(value, kind):
                raise SchemaError(path, f"enum value {value!r} is not of type {kind}")
        return {"enum": values}

    def _string(self, s: dict[str, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        fmt = s.get("format")
        if fmt is not None and s.get("type") in (None, "string"):
            if fmt not in FORMATS:
                raise SchemaError(path, f"format {fmt!r} is not supported")
            if "minLength" in s or "maxLength" in s:
                raise SchemaError(path, "format with minLength/maxLength is not supported")
            out["format"] = fmt
        if "pattern" in s:
            if {"format", "minLength", "maxLength"} & set(s):
                raise SchemaError(path, "pattern with format/minLength/maxLength is not supported")
            try:
                pattern_to_gbnf(s["pattern"])
            except ValueError as exc:
                raise SchemaError(path, str(exc)) from None
            out["pattern"] = s["pattern"]
        low, high = _bounds(s, "minLength", "maxLength", path)
        if low:
            out["minLength"] = low
        if high is not None:
            out["maxLength"] = high
        return out

    def _object(self, s: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(path, "properties must be an object")
        if len(props) > MAX_PROPERTIES:
            raise SchemaError(path, f"more than {MAX_PROPERTIES} properties")
        for name in props:
            if not name:
                raise SchemaError(path, "a property name must not be empty")
        if "properties" in s:
            out["properties"] = {
                name: self.visit(sub, f"{path}/properties/{name}", depth + 1)
                for name, sub in props.items()
            }
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(path, "required must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing:
            raise SchemaError(path, f"required {missing[0]!r} is not among the properties")
        if required:
            out["required"] = list(dict.fromkeys(required))
        extra = s.get("additionalProperties")
        if isinstance(extra, bool):
            out["additionalProperties"] = extra
        elif extra is not None:
            out["additionalProperties"] = self.visit(
                extra, f"{path}/additionalProperties", depth + 1
            )
        return out

    def _array(self, s: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        items = s.get("items")
        prefix = s.get("prefixItems", items if isinstance(items, list) else None)
        if prefix is not None:
            if not isinstance(prefix, list) or not prefix or len(prefix) > MAX_PROPERTIES:
                raise SchemaError(path, f"prefixItems must list 1 to {MAX_PROPERTIES} schemas")
            if ("prefixItems" in s and items not in (None, False)) or {
                "minItems",
                "maxItems",
            } & set(s):
                raise SchemaError(path, "prefixItems with items/minItems/maxItems is not supported")
            out["prefixItems"] = [
                self.visit(sub, f"{path}/prefixItems/{i}", depth + 1)
                for i, sub in enumerate(prefix)
            ]
            return out
        if items is not None:
            out["items"] = self.visit(items, f"{path}/items", depth + 1)
        low, high = _bounds(s, "minItems", "maxItems", path)
        if low:
            out["minItems"] = low
        if high is not None:
            out["maxItems"] = high
        return out


_FAMILIES = {
    "string": {"minLength", "maxLength", "format", "pattern"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
}


def _implied_type(s: dict[str, Any], path: str) -> str | None:
    """The type a schema without `type` constrains: its keywords' one family, else None."""
    families = [kind for kind, keys in _FAMILIES.items() if keys & set(s)]
    if len(families) > 1:
        raise SchemaError(path, f"keywords of {' and '.join(families)} need a type")
    return families[0] if families else None


def _bounds(s: dict[str, Any], low_key: str, high_key: str, path: str) -> tuple[int, int | None]:
    low, high = s.get(low_key, 0), s.get(high_key)
    for key, value in ((low_key, low), (high_key, high)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(path, f"{key} must be a non-negative integer")
        if value > MAX_REPEAT:
            raise SchemaError(path, f"{key} {value} is above this node's limit of {MAX_REPEAT}")
    if high is not None and low > high:
        raise SchemaError(path, f"{low_key} is greater than {high_key}")
    return low, high


def _has_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    return {
        "string": lambda v: isinstance(v, str),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }[kind](value)


def _check_json_value(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(path, "enum values must be finite numbers")
