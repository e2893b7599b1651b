"""`response_format` → a GBNF grammar for the engine (400 for a schema it cannot express)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.api.errors import invalid
from node.api.openai.protocol import JsonObjectFormat, JsonSchemaFormat, ResponseFormat


def grammar_for(response_format: ResponseFormat | None) -> str | None:
    # The grammar module needs llama-cpp-python; imported here to keep the protocol light.
    from node.engine.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar

    if isinstance(response_format, JsonObjectFormat):
        if not response_format.schema_:
            return JSON_OBJECT_GRAMMAR
        # llama-server's extension: a json_object with a schema is constrained to it.
        return _schema_grammar(json_schema_grammar, response_format.schema_, "schema")
    if isinstance(response_format, JsonSchemaFormat):
        schema = response_format.json_schema.schema_
        if not schema:
            raise invalid(
                "response_format.json_schema.schema must be a non-empty JSON schema.",
                "response_format.json_schema.schema",
            )
        return _schema_grammar(json_schema_grammar, schema, "json_schema.schema")
    return None


def _schema_grammar(convert: Callable[[dict[str, Any]], str], schema: dict[str, Any],
                    where: str) -> str:  # fmt: skip
    try:
        return convert(schema)
    except Exception as exc:  # a client's schema must never become a 500
        raise invalid(
            f"Invalid JSON schema in response_format: {exc}", f"response_format.{where}"
        ) from None
