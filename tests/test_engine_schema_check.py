"""The JSON Schema subset for response_format: what is refused, bounded and normalised."""

from __future__ import annotations

import re

import pytest

from node.engine.grammar import json_schema_grammar
from node.engine.pattern import pattern_to_gbnf
from node.engine.schema_check import MAX_DEPTH, MAX_REPEAT, normalise


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"type": "string", "maxLength": 100_000}, "maxLength 100000"),
        ({"type": "string", "minLength": MAX_REPEAT + 1}, "minLength"),
        ({"type": "array", "items": {}, "maxItems": 10**9}, "maxItems"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems is greater"),
        ({"type": "string", "maxLength": -1}, "non-negative"),
        ({"type": "string", "maxLength": True}, "non-negative"),
        (nested(MAX_DEPTH + 1), "deeper"),
        ({"type": "object", "properties": {f"p{i}": {} for i in range(101)}}, "properties"),
        ({"type": "object", "maxProperties": 5}, "maxProperties is not supported"),
        ({"type": "integer", "minimum": 0}, "minimum is not supported"),
        ({"type": "string", "pattern": "a+"}, "anchored"),
        ({"type": "string", "pattern": "^(?=a)b$"}, "lookaround"),
        ({"type": "string", "pattern": "^(a{100}){100}$"}, "too complex"),
        ({"type": "string", "pattern": "^a{1001}$"}, "out of bounds"),
        ({"type": "string", "pattern": "^" + "(" * 17 + "a" + ")" * 17 + "$"}, "deeper"),
        ({"type": "string", "pattern": "^a" * 200 + "$"}, "longer"),
        ({"type": "string", "pattern": "^[a-$"}, "class"),
        ({"type": "string", "pattern": "^\\p{L}$"}, "\\p"),
        ({"type": "string", "pattern": "^a$", "maxLength": 3}, "pattern with"),
        ({"oneOf": [{"type": "string"}, {"type": "null"}]}, "oneOf"),
        ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
        ({"type": "string", "format": "email"}, "format 'email'"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "'b'"),
        ({"type": "object", "properties": {"": {}}}, "empty"),
        ({"$ref": "https://example.com/s.json"}, "local"),
        ({"type": "string", "enum": ["a", 1]}, "not of type string"),
        ({"enum": []}, "enum must list"),
        ({"type": "wat"}, "unknown type"),
        ({"type": ["string", "string"]}, "distinct"),
        ({"type": "object", "properties": {"a": False}}, "subschema"),
        ({"items": {}, "properties": {}}, "need a type"),
    ],
)
def test_refused_schemas_name_response_format_and_the_reason(schema, reason):
    with pytest.raises(ValueError, match="response_format") as info:
        json_schema_grammar(schema)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_normalising_keeps_what_the_grammar_enforces_and_drops_annotations():
    schema = {
        "title": "T",
        "type": "object",
        "description": "d",
        "properties": {
            "n": {"type": ["string", "null"], "maxLength": 4, "examples": ["x"]},
            "k": {"allOf": [{"$ref": "#/$defs/k"}]},
            "any": True,
        },
        "required": ["n", "n"],
        "$defs": {"k": {"enum": ["a", "b"], "title": "K"}},
    }
    assert normalise(schema) == {
        "$defs": {"k": {"enum": ["a", "b"]}},
        "type": "object",
        "properties": {
            "n": {"anyOf": [{"type": "string", "maxLength": 4}, {"type": "null"}]},
            "k": {"$ref": "#/$defs/k"},
            "any": {},
        },
        "required": ["n"],
    }


def test_bounds_become_gbnf_repetitions_not_nested_groups():
    grammar = json_schema_grammar({"type": "string", "maxLength": MAX_REPEAT})
    assert "{0,1000}" in grammar and grammar.count("(") < 10
    items = json_schema_grammar(
        {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 5}
    )
    assert '("," space boolean){1,4}' in items


def test_literals_with_quotes_backslashes_and_newlines_stay_json():
    grammar = json_schema_grammar({"enum": ['a"b', "c\\d", "e\nf"]})
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root == r'root ::= "\"a\\\"b\"" | "\"c\\\\d\"" | "\"e\\nf\""'


def class_ranges(gbnf: str) -> list[tuple[int, int]]:
    """Every code point range inside the [...] classes of a grammar we generated."""
    found = []
    for body in re.findall(r"\[([^\]]*)\]", gbnf):
        for lo, hi in re.findall(r"\\U([0-9A-F]{8})(?:-\\U([0-9A-F]{8}))?", body):
            found.append((int(lo, 16), int(hi or lo, 16)))
    return found


@pytest.mark.parametrize("pattern", ["^.*$", "^[^b]+$", "^\\D\\W\\S$", '^["\\\\a-z]$'])
def test_pattern_classes_never_emit_raw_quotes_backslashes_or_controls(pattern):
    ranges = class_ranges(pattern_to_gbnf(pattern))
    assert ranges
    for unsafe in [*range(0x20), 0x22, 0x5C, 0x7F]:
        assert not any(lo <= unsafe <= hi for lo, hi in ranges), (pattern, hex(unsafe))


def test_pattern_quotes_and_backslashes_become_their_json_escapes():
    assert pattern_to_gbnf('^"$') == r'"\\\""'  # GBNF for the two characters \"
    assert pattern_to_gbnf("^\\\\$") == r'"\\\\"'  # GBNF for the two characters \\
