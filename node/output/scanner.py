"""The one incremental parser engine every output format runs on.

A format is a small *program*: a generator function over a `Cursor` that reads the model's text
with the primitives below and emits typed parts. The program yields whenever it needs more text;
`Machine.feed` appends a delta and resumes it, `Machine.finish` sets end-of-input and lets it
run to the end. Because a program decides only from the text it has consumed (never from how
that text was split), streaming output equals non-streaming output by construction.

Primitives hold back what could still become a marker (a partial `<tool_call` at the end of a
delta), so no part is ever emitted and later taken back. A program may `mark()` a position and
`revert()` to it while it has not emitted anything since (a false start of a call becomes
content again).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

from node.output.parts import (
    ContentText,
    Part,
    ReasoningText,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
)

Gen = Generator[None, None, object]  # a program step: yields for more input
Emit = Callable[[str], None]

_WS = " \t\r\n"


def partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for marker in markers:
        i = text.find(marker[0], max(0, len(text) - len(marker) + 1))
        while i != -1:
            if marker.startswith(text[i:]):
                best = max(best, len(text) - i)
                break
            i = text.find(marker[0], i + 1)
    return best


class Cursor:
    """The unread text of one output, plus the sink for the parts a program emits."""

    def __init__(self, make_id: Callable[[int], str]) -> None:
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.parts: list[Part] = []
        self._make_id = make_id
        self._marks: list[int] = []
        self.n_calls = 0
        self.trimmed = ""  # the whitespace `until` dropped before the marker it last found
        self.in_reasoning = False  # set by programs while they read a reasoning body
        self._open_call: int | None = None

    # -- input -----------------------------------------------------------------------------
    def append(self, text: str) -> None:
        keep = min([self.pos, *self._marks])
        if keep > 4096:  # drop consumed text now and then; marks index into the buffer
            self.buf = self.buf[keep:]
            self.pos -= keep
            self._marks = [m - keep for m in self._marks]
        self.buf += text

    def avail(self) -> str:
        return self.buf[self.pos :]

    def take(self, n: int) -> str:
        text = self.buf[self.pos : self.pos + n]
        self.pos += len(text)
        return text

    def mark(self) -> int:
        self._marks.append(self.pos)
        return self.pos

    def release(self, mark: int) -> None:
        self._marks.remove(mark)

    def revert(self, mark: int) -> None:
        self.pos = mark
        self.release(mark)

    # -- output ----------------------------------------------------------------------------
    def content(self, text: str) -> None:
        if text:
            self.parts.append(ContentText(text))

    def reasoning(self, text: str) -> None:
        if text:
            self.parts.append(ReasoningText(text))

    def start_call(self, name: str) -> int:
        index = self.n_calls
        self.n_calls += 1
        self._open_call = index
        self.parts.append(ToolCallStart(index, self._make_id(index), name))
        return index

    def args(self, fragment: str) -> None:
        if fragment and self._open_call is not None:
            self.parts.append(ToolCallArgs(self._open_call, fragment))

    def end_call(self, complete: bool = True) -> None:
        if self._open_call is not None:
            self.parts.append(ToolCallEnd(self._open_call, complete))
            self._open_call = None

    # -- primitives (use with `yield from`) ------------------------------------------------
    def need(self, n: int = 1) -> Generator[None, None, bool]:
        """Wait until `n` characters are unread; False at end of input with fewer."""
        while len(self.buf) - self.pos < n:
            if self.eof:
                return False
            yield
        return True

    def skip_ws(self) -> Generator[None, None, str]:
        """Consume whitespace; returns it. Waits until a non-space character or the end."""
        skipped = ""
        while True:
            rest = self.avail()
            stripped = rest.lstrip(_WS)
            skipped += rest[: len(rest) - len(stripped)]
            self.pos += len(rest) - len(stripped)
            if stripped or self.eof:
                return skipped
            yield

    def peek(self, literal: str) -> Generator[None, None, bool]:
        """Whether the unread text starts with `literal` (waits until that is decidable)."""
        while True:
            rest = self.avail()
            if rest.startswith(literal):
                return True
            if not literal.startswith(rest) or self.eof:
                return False
            yield

    def expect(self, literal: str, ws: bool = False) -> Generator[None, None, bool]:
        """Consume `literal` (after optional whitespace when `ws`) if it comes next."""
        if ws:
            yield from self.skip_ws()
        if (yield from self.peek(literal)):
            self.pos += len(literal)
            return True
        return False

    def peek_any(self, literals: Sequence[str]) -> Generator[None, None, str | None]:
        """The first of `literals` the unread text starts with, once decidable."""
        while True:
            rest = self.avail()
            undecided = False
            for lit in literals:
                if rest.startswith(lit):
                    return lit
                if lit.startswith(rest):
                    undecided = True
            if not undecided or self.eof:
                return None
            yield

    def until(
        self,
        markers: Sequence[str],
        emit: Emit,
        consume: bool = True,
        strip: bool = False,
        trim: bool = False,
    ) -> Generator[None, None, str | None]:
        """Emit text up to the first of `markers`; returns the marker (None: end of input).

        `consume=False` leaves the marker unread. `strip` drops leading whitespace and holds
        back trailing whitespace, so the emitted text is stripped however it was split.
        `trim` drops only the whitespace right before a marker (kept at the end of input).
        """
        started = not strip
        while True:
            rest = self.avail()
            if not started:
                stripped = rest.lstrip(_WS)
                self.pos += len(rest) - len(stripped)
                rest = stripped
                started = bool(rest)
            found, where = None, -1
            for marker in markers:
                i = rest.find(marker)
                if i != -1 and (where == -1 or i < where):
                    found, where = marker, i
            if found is not None:
                text = rest[:where]
                kept = text.rstrip(_WS) if strip or trim else text
                self.trimmed = text[len(kept) :]
                emit(kept)
                self.pos += where + (len(found) if consume else 0)
                return found
            if self.eof:
                emit(rest.rstrip(_WS) if strip else rest)
                self.pos += len(rest)
                return None
            hold = partial_suffix(rest, markers)
            text = rest[: len(rest) - hold]
            if strip or trim:  # a run of trailing spaces waits for what follows it
                text = text.rstrip(_WS)
            emit(text)
            self.pos += len(text)
            yield

    def read_until(
        self, markers: Sequence[str], limit: int
    ) -> Generator[None, None, tuple[str, str] | None]:
        """Buffer text up to one of `markers` (consumed); None past `limit` chars or at the end."""
        while True:
            rest = self.avail()
            found, where = None, -1
            for marker in markers:
                i = rest.find(marker, 0, limit + len(marker))
                if i != -1 and (where == -1 or i < where):
                    found, where = marker, i
            if found is not None:
                self.pos += where + len(found)
                return rest[:where], found
            if len(rest) > limit + max(len(m) for m in markers) or self.eof:
                return None
            yield


class Machine:
    """Drives one program over a stream of deltas; collects what it emits."""

    def __init__(
        self, program: Callable[[Cursor], Gen], make_id: Callable[[int], str] | None = None
    ) -> None:
        self.cursor = Cursor(make_id or (lambda i: f"call_{i}"))
        self._gen: Gen | None = program(self.cursor)
        self._resume()

    def feed(self, text: str) -> list[Part]:
        if text:
            self.cursor.append(text)
            self._resume()
        return self._drain()

    def finish(self) -> list[Part]:
        self.cursor.eof = True
        self._resume()
        cur = self.cursor
        cur.content(cur.avail())  # a program that stopped early leaves the rest as content
        cur.pos = len(cur.buf)
        cur.end_call(complete=False)
        return self._drain()

    def _resume(self) -> None:
        if self._gen is None:
            return
        try:
            next(self._gen)
        except StopIteration:
            self._gen = None

    def _drain(self) -> list[Part]:
        parts, self.cursor.parts = self.cursor.parts, []
        return parts
