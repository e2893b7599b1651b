"""Token bytes → safe text deltas: incremental UTF-8 and stop strings held back until decided."""

from __future__ import annotations

import codecs


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
