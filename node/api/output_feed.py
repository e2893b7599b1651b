"""One choice's output processor as every message dialect feeds it: engine deltas in, typed
parts out, with the reasoning tokens counted (they are completion tokens, reported apart)."""

from __future__ import annotations

from node.api.openai.tools import OutputPlan
from node.engine.interface import TextDelta
from node.output import Part, ProcessedOutput


class OutputFeed:
    def __init__(self, plan: OutputPlan) -> None:
        self.processor = plan.processor()
        self.reasoning_tokens = 0
        self.result: ProcessedOutput | None = None

    def feed(self, delta: TextDelta) -> list[Part]:
        was_reasoning = self.processor.in_reasoning
        parts = self.processor.feed(delta.text)
        if was_reasoning or self.processor.in_reasoning:  # its closing tag counts too
            self.reasoning_tokens += len(delta.tokens)
        return parts

    def finish(self) -> ProcessedOutput:
        if self.result is None:
            self.result = self.processor.finish()
        return self.result
