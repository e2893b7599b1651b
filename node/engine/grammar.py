"""GBNF grammars for `response_format`: any JSON object, or JSON matching a schema."""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

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


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF text constraining output to JSON valid under `schema`.

    Raises ValueError with a one-line reason when the schema cannot be turned into a grammar.
    """
    if not isinstance(schema, dict):
        raise ValueError("json_schema must be a JSON object")
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"json_schema is not serialisable JSON: {exc}") from None
    try:
        grammar = json_schema_to_gbnf(text)
    except RecursionError:
        raise ValueError("json_schema is nested too deeply") from None
    except Exception as exc:  # the converter raises bare Exception/KeyError/etc. on bad schemas
        reason = " ".join((str(exc) or type(exc).__name__).split())
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise ValueError(f"unsupported json_schema: {reason}") from None
    if "root ::=" not in grammar:
        raise ValueError("unsupported json_schema: no grammar could be derived from it")
    return grammar
