"""A JSON Schema `pattern` as a GBNF expression for the inside of a JSON string.

Only a bounded, anchored subset is translated (`^...$` with literals, escapes like `\\d`,
character classes, groups, `|` and quantifiers); everything else is a ValueError. The output
never emits a raw quote, backslash or control character, so the string stays JSON: a literal
quote or backslash becomes its JSON escape, and classes (`.`, `[^...]`, `\\D`, ...) lose those
characters. Each string generated is matched by the pattern, which is what validation needs.
"""

from __future__ import annotations

MAX_PATTERN_CHARS = 256
MAX_PATTERN_DEPTH = 16  # nested groups
MAX_PATTERN_COST = 2000  # grammar symbols after repetitions are expanded
MAX_PATTERN_REPEAT = 1000

# Characters a JSON string cannot hold raw: never produced by a class.
_UNSAFE = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
_MAX_CHAR = 0x10FFFF
_SHORTHANDS = {
    "d": [(0x30, 0x39)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "s": [(0x20, 0x20)],  # a space only: a subset of \s is still matched by \s
}
_META = set("^$.|?*+()[]{}\\/-")
_Ranges = list[tuple[int, int]]


def pattern_to_gbnf(pattern: str) -> str:
    """The GBNF for the characters between a JSON string's quotes; ValueError if unsupported."""
    if not isinstance(pattern, str):
        raise ValueError("pattern must be a string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"pattern is longer than {MAX_PATTERN_CHARS} characters")
    body = pattern[1:-1]
    escaped_end = (len(body) - len(body.rstrip("\\"))) % 2 == 1  # `\$` is a literal dollar
    if len(pattern) < 2 or not (pattern[0] == "^" and pattern[-1] == "$") or escaped_end:
        raise ValueError("pattern must be anchored with ^ and $")
    parser = _Parser(body)
    text, cost = parser.alternation(0)
    if parser.i != len(parser.s):
        raise ValueError(f"pattern has an unmatched {parser.s[parser.i]!r}")
    if cost > MAX_PATTERN_COST:
        raise ValueError("pattern is too complex (its repetitions expand too far)")
    return text or '""'


class _Parser:
    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def peek(self) -> str | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def alternation(self, depth: int) -> tuple[str, int]:
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence(depth))
        texts = [t or '""' for t, _ in branches]
        return " | ".join(texts), sum(c for _, c in branches)

    def sequence(self, depth: int) -> tuple[str, int]:
        parts, cost = [], 0
        while self.peek() not in (None, "|", ")"):
            text, atom_cost = self.atom(depth)
            text, atom_cost = self.quantified(text, atom_cost)
            parts.append(text)
            cost += atom_cost
        return " ".join(parts), cost

    def atom(self, depth: int) -> tuple[str, int]:
        c = self.s[self.i]
        self.i += 1
        if c == "(":
            if depth + 1 > MAX_PATTERN_DEPTH:
                raise ValueError(f"pattern nests groups deeper than {MAX_PATTERN_DEPTH}")
            if self.s.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise ValueError("pattern lookarounds and named groups are not supported")
            text, cost = self.alternation(depth + 1)
            if self.peek() != ")":
                raise ValueError("pattern has an unclosed group")
            self.i += 1
            return f"({text or chr(34) * 2})", cost
        if c == "[":
            return _class(self.char_class()), 1
        if c == ".":
            return _class([(0, _MAX_CHAR)]), 1  # minus line breaks: all controls go
        if c == "\\":
            return self.escape()
        if c in "*+?{})]|^$":
            raise ValueError(f"pattern has an unexpected {c!r}")
        return _literal(c), 1

    def escape(self) -> tuple[str, int]:
        c = self.peek()
        if c is None:
            raise ValueError("pattern ends with a backslash")
        self.i += 1
        if c.lower() in _SHORTHANDS:
            ranges = _SHORTHANDS[c.lower()]
            return _class(_negate(ranges) if c.isupper() else ranges), 1
        if c in _META:
            return _literal(c), 1
        raise ValueError(f"pattern escape \\{c} is not supported")

    def char_class(self) -> _Ranges:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        ranges: _Ranges = []
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise ValueError("pattern has an unclosed character class")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            low = self.class_char(ranges)
            if low is None:
                continue
            if self.peek() == "-" and self.s[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                high = self.class_char(ranges)
                if high is None or high < low:
                    raise ValueError("pattern has a bad character range")
                ranges.append((low, high))
            else:
                ranges.append((low, low))
        return _negate(ranges) if negated else ranges

    def class_char(self, ranges: _Ranges) -> int | None:
        """One class member's code point, or None after adding a shorthand like \\d."""
        c = self.s[self.i]
        self.i += 1
        if c != "\\":
            if c == "[":
                raise ValueError("pattern nested classes are not supported")
            return ord(c)
        e = self.peek()
        if e is None:
            raise ValueError("pattern ends with a backslash")
        self.i += 1
        if e.lower() in _SHORTHANDS:
            short = _SHORTHANDS[e.lower()]
            ranges.extend(_negate(short) if e.isupper() else short)
            return None
        if e in _META or e == "]":
            return ord(e)
        raise ValueError(f"pattern escape \\{e} is not supported")

    def quantified(self, text: str, cost: int) -> tuple[str, int]:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            return f"{text}{c}", cost * 2
        if c != "{":
            return text, cost
        end = self.s.find("}", self.i)
        if end < 0:
            raise ValueError("pattern has an unclosed {")
        body = self.s[self.i + 1 : end]
        self.i = end + 1
        low_text, comma, high_text = body.partition(",")
        if not low_text.isascii() or not low_text.isdigit() or len(low_text) > 6:
            raise ValueError(f"pattern has a bad repetition {{{body}}}")
        if high_text and (not high_text.isascii() or not high_text.isdigit() or len(high_text) > 6):
            raise ValueError(f"pattern has a bad repetition {{{body}}}")
        low = int(low_text)
        high = int(high_text) if high_text else (None if comma else low)
        if max(low, high or 0) > MAX_PATTERN_REPEAT or (high is not None and high < low):
            raise ValueError(f"pattern repetition {{{body}}} is out of bounds")
        if high == 0:
            return '""', 0
        if high is None:
            return f"{text}{{{low},}}", cost * (low + 1)
        return f"{text}{{{low},{high}}}", cost * high


def _literal(c: str) -> str:
    code = ord(c)
    if c in '"\\':  # the JSON escape of the character, as a GBNF literal
        return '"\\\\\\""' if c == '"' else '"\\\\\\\\"'
    if any(lo <= code <= hi for lo, hi in _UNSAFE):
        raise ValueError("pattern control characters are not supported")
    return f'"\\U{code:08X}"'


def _negate(ranges: _Ranges) -> _Ranges:
    out, start = [], 0
    for lo, hi in sorted(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= _MAX_CHAR:
        out.append((start, _MAX_CHAR))
    return out


def _safe(ranges: _Ranges) -> _Ranges:
    """`ranges` without the characters a JSON string cannot hold raw."""
    keep = _negate(_UNSAFE)
    out = []
    for lo, hi in ranges:
        for klo, khi in keep:
            a, b = max(lo, klo), min(hi, khi)
            if a <= b:
                out.append((a, b))
    return out


def _class(ranges: _Ranges) -> str:
    safe = _safe(ranges)
    if not safe:
        raise ValueError("pattern has a character class with no usable character")
    items = "".join(f"\\U{lo:08X}" if lo == hi else f"\\U{lo:08X}-\\U{hi:08X}" for lo, hi in safe)
    return f"[{items}]"
