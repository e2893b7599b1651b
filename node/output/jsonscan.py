"""Incremental JSON primitives for the parser engine: a streamed value, a string, an envelope.

`json_value` validates structure as it goes and emits the value's raw text in pieces, so tool
arguments stream exactly as the model wrote them and their pieces join to the final string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator

from node.output.scanner import Cursor, Emit

_WS = " \t\r\n"
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")
_NUM_CHARS = frozenset("0123456789+-.eE")
_LITERALS = {"t": "true", "f": "false", "n": "null"}

# scanner states
_VALUE, _AFTER, _KEY, _COLON, _STRING, _NUMBER_ST, _LITERAL = range(7)


def json_value(cur: Cursor, emit: Emit) -> Generator[None, None, bool]:
    """Consume one JSON value (leading whitespace skipped, not emitted); False if malformed.

    On False the text read so far has been emitted and the offending character is unread.
    """
    yield from cur.skip_ws()
    stack: list[str] = []  # "{" or "["
    state = _VALUE
    first = False  # just after "{" or "[": a close is allowed
    esc = 0  # inside a string: 0 none, 1 after backslash, 2..5 reading \u hex digits
    lit = ""  # the literal (or number) being read
    while True:
        buf, i, end = cur.buf, cur.pos, len(cur.buf)
        start = i
        ok: bool | None = None
        while i < end:
            ch = buf[i]
            if state == _STRING:
                if esc == 1:
                    if ch == "u":
                        esc = 2
                    elif ch in '"\\/bfnrt':
                        esc = 0
                    else:
                        ok = False
                        break
                elif esc >= 2:
                    if ch not in "0123456789abcdefABCDEF":
                        ok = False
                        break
                    esc = 0 if esc == 5 else esc + 1
                elif ch == "\\":
                    esc = 1
                elif ch == '"':  # raw control characters pass: grammars' `char` allows them
                    state = _COLON if stack and stack[-1] == ":" else _AFTER
                    if state == _COLON:
                        stack.pop()
                i += 1
                continue
            if state == _NUMBER_ST:
                if ch in _NUM_CHARS:
                    lit += ch
                    i += 1
                    continue
                if not _NUMBER.match(lit):
                    ok = False
                    break
                state = _AFTER
            if state == _LITERAL:
                want = _LITERALS[lit[0]]
                if ch != want[len(lit)]:
                    ok = False
                    break
                lit += ch
                i += 1
                if lit == want:
                    state = _AFTER
                continue
            if state == _AFTER and not stack:
                ok = True
                break
            if ch in _WS:
                i += 1
                continue
            was_first, first = first, False
            if state == _VALUE:
                if ch == '"':
                    state, esc = _STRING, 0
                elif ch in "{[":
                    stack.append(ch)
                    state, first = (_KEY if ch == "{" else _VALUE), True
                elif ch in _LITERALS:
                    state, lit = _LITERAL, ch
                elif ch == "-" or ch.isdigit():
                    state, lit = _NUMBER_ST, ch
                elif ch == "]" and was_first and stack[-1] == "[":
                    stack.pop()
                    state = _AFTER
                else:
                    ok = False
                    break
            elif state == _KEY:
                if ch == '"':
                    stack.append(":")
                    state, esc = _STRING, 0
                elif ch == "}" and was_first:
                    stack.pop()
                    state = _AFTER
                else:
                    ok = False
                    break
            elif state == _COLON:
                if ch != ":":
                    ok = False
                    break
                state = _VALUE
            else:  # _AFTER inside a container
                top = stack[-1]
                if ch == ",":
                    state = _KEY if top == "{" else _VALUE
                elif (ch == "}" and top == "{") or (ch == "]" and top == "["):
                    stack.pop()
                else:
                    ok = False
                    break
            i += 1
        emit(buf[start:i])
        cur.pos = i
        if ok is not None:
            return ok
        if state == _AFTER and not stack:
            return True
        if cur.eof:
            return bool(state == _NUMBER_ST and not stack and _NUMBER.match(lit))
        yield


def json_string(cur: Cursor, limit: int = 4096) -> Generator[None, None, str | None]:
    """Consume one JSON string (after optional whitespace) and decode it; None if not one."""
    yield from cur.skip_ws()
    if not (yield from cur.peek('"')):
        return None
    raw: list[str] = []
    ok = yield from json_value(cur, raw.append)
    text = "".join(raw)
    if not ok or len(text) > limit:
        return None
    return str(json.loads(text))


def json_string_stream(cur: Cursor, emit: Emit) -> Generator[None, None, bool]:
    """Consume one JSON string, emitting its *decoded* text as it arrives."""
    if not (yield from cur.expect('"', ws=True)):
        return False
    while True:
        rest = cur.avail()
        i, safe = 0, 0
        closed = False
        while i < len(rest):
            ch = rest[i]
            if ch == '"':
                closed = True
                break
            if ch == "\\":
                if i + 1 >= len(rest):
                    break
                if rest[i + 1] == "u":
                    if i + 6 > len(rest):
                        break
                    code = rest[i + 2 : i + 6].upper()
                    if code[:2] in ("D8", "D9", "DA", "DB"):  # a high surrogate: wait for its pair
                        if i + 8 > len(rest):
                            break
                        if rest[i + 6 : i + 8] == "\\u":
                            if i + 12 > len(rest):
                                break
                            i += 6
                    i += 6
                else:
                    i += 2
            else:
                i += 1
            safe = i
        try:
            emit(json.loads('"' + rest[:safe] + '"'))
        except ValueError:
            return False
        cur.pos += safe + (1 if closed else 0)
        if closed:
            return True
        if cur.eof:
            return False
        yield


NameSink = Callable[[str], None]


def json_envelope(
    cur: Cursor,
    name_keys: tuple[str, ...],
    args_keys: tuple[str, ...],
    on_name: NameSink,
    on_args: Emit,
) -> Generator[None, None, str]:
    """Consume `{"name": ..., "arguments": {...}, ...}` calling back the name and arg pieces.

    Returns "ok", or "fail" when the text is not such an object (the caller may revert), or
    "broken" when it went wrong after the arguments began. A nested `"function": {...}` (the
    OpenAI shape) is read the same way.
    """
    if not (yield from cur.expect("{", ws=True)):
        return "fail"
    seen_args = False
    while True:
        if (yield from cur.expect("}", ws=True)):
            return "ok"
        key = yield from json_string(cur, limit=256)
        if key is None or not (yield from cur.expect(":", ws=True)):
            return "broken" if seen_args else "fail"
        yield from cur.skip_ws()
        if key in name_keys:
            name = yield from json_string(cur, limit=256)
            if name is None:
                return "broken" if seen_args else "fail"
            on_name(name)
        elif key in args_keys:
            seen_args = True
            if (yield from cur.peek('"')):  # arguments given as a JSON string of JSON
                decoded = yield from json_string(cur, limit=1 << 20)
                if decoded is None:
                    return "broken"
                on_args(decoded)
            elif not (yield from json_value(cur, on_args)):
                return "broken"
        elif key == "function" and (yield from cur.peek("{")):
            inner = yield from json_envelope(cur, name_keys, args_keys, on_name, on_args)
            if inner != "ok":
                return inner
            seen_args = True
        elif not (yield from json_value(cur, lambda _t: None)):
            return "broken" if seen_args else "fail"
        if (yield from cur.expect(",", ws=True)):
            continue
        if (yield from cur.expect("}", ws=True)):
            return "ok"
        return "broken" if seen_args else "fail"
