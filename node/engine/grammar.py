"""GBNF grammars for `response_format`: any JSON object, or JSON matching a schema.

Schemas go through `schema_check.normalise` (the supported subset, bounded) and then through
llama-cpp-python's converter with three fixes: a string character is what JSON allows (no raw
control characters), literals are escaped for GBNF (a backslash or newline in an enum value or
property name stays JSON), length / item bounds become GBNF `{m,n}` repetitions instead of
one nested group per allowed character, and `pattern` has its own JSON-safe translation.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import (
    PRIMITIVE_RULES,
    RESERVED_NAMES,
    BuiltinRule,
    SchemaConverter,
)

from node.engine.grammar_cache import check_grammar_text
from node.engine.pattern import pattern_to_gbnf
from node.engine.schema_check import normalise

# Like llama.cpp's json.gbnf, but the root must be an object (OpenAI's `json_object` mode) and
# whitespace between tokens is bounded so a model cannot loop on blank lines forever.
JSON_OBJECT_GRAMMAR = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4})
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

ws ::= | " " | "\n" [ \t]{0,20}
"""


# A JSON string character: not a quote, backslash or control character, or an escape.
_JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_ANNOTATION_FREE_ANY: dict[str, Any] = {}


class _Converter(SchemaConverter):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def _format_literal(self, literal: str) -> str:
        escaped = (
            literal.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\t", "\\t")
        )
        return f'"{escaped}"'

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        if name == "char":
            rule = BuiltinRule(_JSON_CHAR, [])
        return super()._add_primitive(name, rule)

    def visit(self, schema: dict[str, Any], name: str) -> str:
        rule_name = name + "-" if name in _RESERVED else name or "root"
        kind = schema.get("type")
        if not schema or (set(schema) <= {"$defs", "definitions"}):
            return self._add_rule(rule_name, self._add_primitive("value", PRIMITIVE_RULES["value"]))
        if kind == "string" and "pattern" in schema:
            inside = pattern_to_gbnf(schema["pattern"])
            return self._add_rule(rule_name, f'"\\"" ({inside}) "\\"" space')
        if kind == "string" and "format" not in schema:
            char = self._add_primitive("char", PRIMITIVE_RULES["char"])
            body = _repeat(char, schema.get("minLength", 0), schema.get("maxLength"))
            return self._add_rule(rule_name, f'"\\"" {body} "\\"" space')
        if kind == "array" and "prefixItems" not in schema:
            items = schema.get("items", _ANNOTATION_FREE_ANY)
            item = self.visit(items, f"{name}{'-' if name else ''}item")
            low, high = schema.get("minItems", 0), schema.get("maxItems")
            if high == 0:
                body = ""
            elif low == 0:
                rest = _repeat(f'"," space {item}', 0, None if high is None else high - 1)
                body = f"( {item} {rest} )?"
            else:
                rest = _repeat(f'"," space {item}', low - 1, None if high is None else high - 1)
                body = f"{item} {rest}"
            return self._add_rule(rule_name, f'"[" space {body} "]" space')
        return super().visit(schema, name)


_RESERVED = RESERVED_NAMES


def _repeat(item: str, low: int, high: int | None) -> str:
    """`item` repeated low..high times (None: no upper bound) as one GBNF repetition."""
    if high == 0:
        return ""
    if high is None:
        return f"({item}){{{low},}}" if low else f"({item})*"
    return f"({item}){{{low},{high}}}"


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF text constraining output to JSON valid under `schema`.

    Raises ValueError with a one-line reason naming response_format when the schema is outside
    the supported subset or its bounds.
    """
    checked = normalise(schema)  # SchemaError (a ValueError) names the place and the reason
    converter = _Converter()
    try:
        # The converter mutates `$ref`s in place: give it a private copy.
        resolved = converter.resolve_refs(json.loads(json.dumps(checked)), "input")
        converter.visit(resolved, "")
        grammar = converter.format_grammar()
    except RecursionError:
        raise ValueError("response_format json_schema is nested too deeply") from None
    except Exception as exc:  # the converter raises bare Exception/KeyError/etc. on bad schemas
        reason = " ".join((str(exc) or type(exc).__name__).split())
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise ValueError(f"unsupported response_format json_schema: {reason}") from None
    if "root ::=" not in grammar:
        raise ValueError("unsupported response_format json_schema: no grammar could be derived")
    check_grammar_text(grammar)
    return grammar
