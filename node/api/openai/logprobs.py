"""The engine's log-probabilities in OpenAI's two shapes: chat's `content` list and the legacy
completions' parallel lists."""

from __future__ import annotations

from collections.abc import Sequence

from node.api.openai.responses import (
    ChoiceLogprobs,
    CompletionLogprobs,
    TokenLogprob,
    TopLogprob,
)
from node.engine.interface import SampledLogprob


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(items: Sequence[SampledLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=_text(lp.piece),
                logprob=lp.logprob,
                bytes=list(lp.piece),
                top_logprobs=[
                    TopLogprob(token=_text(t.piece), logprob=t.logprob, bytes=list(t.piece))
                    for t in lp.top
                ],
            )
            for lp in items
        ]
    )


class CompletionLogprobsBuilder:
    """Offsets run on across chunks of one choice, so it is kept per choice."""

    def __init__(self) -> None:
        self.offset = 0

    def build(self, items: Sequence[SampledLogprob]) -> CompletionLogprobs:
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for lp in items:
            text = _text(lp.piece)
            out.tokens.append(text)
            out.token_logprobs.append(lp.logprob)
            top: dict[str, float] = {}
            for t in lp.top:
                top.setdefault(_text(t.piece), t.logprob)  # two ids may print alike
            out.top_logprobs.append(top)
            out.text_offset.append(self.offset)
            self.offset += len(text)
        return out


def merge_completion(parts: Sequence[CompletionLogprobs]) -> CompletionLogprobs:
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for part in parts:
        out.tokens += part.tokens
        out.token_logprobs += part.token_logprobs
        out.top_logprobs += part.top_logprobs
        out.text_offset += part.text_offset
    return out
