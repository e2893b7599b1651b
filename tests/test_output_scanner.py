"""The parser engine's primitives: marker hold-back, JSON values, strings and surrogates,
each fed whole and split at every boundary."""

from __future__ import annotations

import json

import pytest

from node.output.jsonscan import json_string_stream, json_value
from node.output.parts import ContentText
from node.output.scanner import Cursor, Gen, Machine, partial_suffix


def test_partial_suffix_is_the_longest_marker_prefix_at_the_end() -> None:
    markers = ("<tool_call>", "[TOOL_CALLS]")
    assert partial_suffix("abc <tool", markers) == 5
    assert partial_suffix("abc [TOOL", markers) == 5
    assert partial_suffix("abc <toolbox", markers) == 0
    assert partial_suffix("<<", markers) == 1
    assert partial_suffix("", markers) == 0


def _scan_json(chunks: list[str]) -> tuple[bool, str, str]:
    """(ok, emitted text, what was left unread) for one json_value over `chunks`."""
    out: list[str] = []
    verdict: list[bool] = []

    def program(cur: Cursor) -> Gen:
        verdict.append((yield from json_value(cur, out.append)))
        yield from cur.until((), cur.content)
        return None

    machine = Machine(program)
    rest: list[str] = []
    for chunk in chunks:
        rest += [p.text for p in machine.feed(chunk) if isinstance(p, ContentText)]
    rest += [p.text for p in machine.finish() if isinstance(p, ContentText)]
    return verdict[0], "".join(out), "".join(rest)


VALID = [
    '{"a": [1, -2.5e+3, true, false, null, {"b": "x\\"y\\u00e9"}], "c": {}}',
    "[]",
    '"just a string"',
    "-0.5",
    '{"nested": [[[]], [{}]]}',
]
INVALID = ['{"a" 1}', "[1,]", '{"a": tru}', "{,}", '"bad \\q escape"', "01x", "}"]


@pytest.mark.parametrize("text", VALID)
def test_a_valid_value_is_read_exactly_however_it_is_split(text: str) -> None:
    json.loads(text)  # the table itself is valid JSON
    for cut in range(len(text) + 1):
        ok, emitted, rest = _scan_json([text[:cut], text[cut:] + " tail"])
        assert (ok, emitted, rest) == (True, text, " tail"), cut


@pytest.mark.parametrize("text", INVALID)
def test_an_invalid_value_is_refused_however_it_is_split(text: str) -> None:
    for cut in range(len(text) + 1):
        ok, emitted, rest = _scan_json([text[:cut], text[cut:]])
        assert not ok and emitted + rest == text.lstrip(), cut


def test_a_value_cut_off_by_the_end_is_refused() -> None:
    assert _scan_json(['{"a": [1, 2'])[0] is False
    assert _scan_json(["12"])[:2] == (True, "12")  # a number ends with the output


def test_string_stream_decodes_escapes_and_surrogate_pairs_split_anywhere() -> None:
    text = '"a\\nb \\"q\\" \\u00e9 \\ud83d\\ude00 end" after'
    expected = 'a\nb "q" é 😀 end'
    for cut in range(len(text) + 1):
        out: list[str] = []

        def program(cur: Cursor, out: list[str] = out) -> Gen:
            assert (yield from json_string_stream(cur, out.append))
            return None

        machine = Machine(program)
        machine.feed(text[:cut])
        machine.feed(text[cut:])
        rest = "".join(p.text for p in machine.finish() if isinstance(p, ContentText))
        assert ("".join(out), rest) == (expected, " after"), cut
        assert all("\\" not in piece for piece in out)
