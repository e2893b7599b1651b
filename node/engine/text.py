"""Token bytes → safe text deltas: incremental UTF-8 and stop strings held back until decided."""

from __future__ import annotations

import codecs

from node.engine.interface import SampledLogprob, SamplingParams, TextDelta


class TextStream:
    """Feed token pieces, get text that is complete UTF-8 and free of any stop string.

    A multi-byte character split across tokens is emitted only once whole. Text that could be
    the start of a stop string is held back until it either completes the stop string (then
    generation stops and the stop string is never emitted) or diverges from it.
    """

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        self.stop_word: str | None = None  # the stop string that completed

    def feed(self, piece: bytes) -> str:
        """Text safe to emit after `piece`; sets `stopped` when a stop string completed."""
        text = self._decoder.decode(piece)
        if not self._stop:
            return text
        pending = self._held + text
        if not pending:
            return ""
        cut = -1
        for stop in self._stop:
            at = pending.find(stop)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
                self.stop_word = stop
        if cut != -1:
            self.stopped = True
            self._held = ""
            return pending[:cut]
        keep = self._partial_stop_suffix(pending)
        self._held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """Held-back text at the end of generation. An unfinished UTF-8 char is dropped."""
        held, self._held = self._held, ""
        return held

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


class DeltaStream:
    """One sequence's output: text through a `TextStream`, plus the tokens (and logprobs)
    sampled since the previous delta, so every `TextDelta` carries what produced it."""

    def __init__(self, params: SamplingParams | None = None) -> None:
        self.text = TextStream(params.stop if params is not None else ())
        self.with_logprobs = params is not None and params.logprobs is not None
        self._tokens: list[int] = []
        self._logprobs: list[SampledLogprob] = []

    @property
    def stopped(self) -> bool:
        return self.text.stopped

    @property
    def stop_word(self) -> str | None:
        return self.text.stop_word

    def feed(self, token: int, piece: bytes, logprob: SampledLogprob | None) -> TextDelta | None:
        """A delta when `token` completes some text safe to emit."""
        self._tokens.append(token)
        if logprob is not None:
            self._logprobs.append(logprob)
        text = self.text.feed(piece)
        return self._delta(text) if text else None

    def flush(self) -> TextDelta | None:
        """Held-back text and tokens at the end of generation."""
        tail = self.text.flush()
        return self._delta(tail) if tail or self._tokens else None

    def _delta(self, text: str) -> TextDelta:
        logprobs = tuple(self._logprobs) if self.with_logprobs else None
        delta = TextDelta(text, tuple(self._tokens), logprobs)
        self._tokens = []
        self._logprobs = []
        return delta
