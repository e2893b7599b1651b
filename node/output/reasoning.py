"""Reasoning in tags: `<think>...</think>` (Qwen3, DeepSeek-R1 distills), `[THINK]` (Magistral).

Only a block at the very start of the output is reasoning. Templates that open the tag in the
prompt (DeepSeek-R1 distills, Qwen3.5) make the output start inside it: `prompt_opens` tells.
Raw mode keeps the block verbatim (tags included) but still reports it as reasoning parts, so
the processor can pass it on as content without parsing tool calls inside it.
gpt-oss's analysis channel is split by the harmony format itself (`tools/harmony.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.output.scanner import Cursor, Gen


@dataclass(frozen=True)
class ThinkTags:
    open: str = "<think>"
    close: str = "</think>"
    also_ends: tuple[str, ...] = ()  # markers that end reasoning unclosed (kept as content)

    def prompt_opens(self, prompt: str) -> bool:
        """Whether the rendered prompt leaves a reasoning block open for the output."""
        return prompt.rfind(self.open) > prompt.rfind(self.close)


THINK = ThinkTags()
QWEN35_THINK = ThinkTags(also_ends=("<tool_call>",))  # Qwen3.5 may start a call unclosed
MISTRAL_THINK = ThinkTags("[THINK]", "[/THINK]", ("[TOOL_CALLS]",))


def think_program(tags: ThinkTags, inside: bool, raw: bool) -> Callable[[Cursor], Gen]:
    """A program splitting a leading reasoning block from the content after it."""

    def program(cur: Cursor) -> Gen:
        if not inside:
            lead = yield from cur.skip_ws()
            if not (yield from cur.peek(tags.open)):
                cur.content(lead)
                yield from cur.until((), cur.content)
                return None
            cur.pos += len(tags.open)
            if raw:
                cur.reasoning(lead + tags.open)
        cur.in_reasoning = True
        end = yield from cur.until(
            (tags.close, *tags.also_ends), cur.reasoning, consume=False, strip=not raw
        )
        cur.in_reasoning = False
        if end is None:
            return None
        if end == tags.close:
            cur.pos += len(end)
            if raw:
                cur.reasoning(end)
        if not raw:
            yield from cur.skip_ws()
        yield from cur.until((), cur.content)
        return None

    return program
