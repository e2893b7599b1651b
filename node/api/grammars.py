"""`response_format` → a GBNF grammar for the engine (400 for a schema it cannot express)."""

from __future__ import annotations

from node.api.errors import invalid
from node.api.protocol import JsonObjectFormat, JsonSchemaFormat, ResponseFormat


def grammar_for(response_format: ResponseFormat | None) -> str | None:
    # The grammar module needs llama-cpp-python; imported here to keep the protocol light.
    from node.engine.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar

    if isinstance(response_format, JsonObjectFormat):
        return JSON_OBJECT_GRAMMAR
    if isinstance(response_format, JsonSchemaFormat):
        schema = response_format.json_schema.schema_
        if not schema:
            raise invalid(
                "response_format.json_schema.schema must be a non-empty JSON schema.",
                "response_format.json_schema.schema",
            )
        try:
            return json_schema_grammar(schema)
        except Exception as exc:  # a client's schema must never become a 500
            raise invalid(
                f"Invalid JSON schema in response_format: {exc}",
                "response_format.json_schema.schema",
            ) from None
    return None
