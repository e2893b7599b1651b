"""How a chat request's prompt is rendered and its output processed and constrained: the
tool-call format (the registry's `tool_format`, else detected from the chat template), the
reasoning tags, and the grammar `tool_choice` asks for.

- `none` or no tools: text only (reasoning still split); the template is shown no tools.
- `auto`: free text; a call the model starts is parsed, and a lazy grammar (from the format's
  trigger patterns on) constrains it to valid calls, so text before it stays free.
- `required` / a named function: a grammar built from the tools' JSON schemas from the first
  token, so every emitted call parses and its arguments validate.
- A template without tool support (the `generic` format): the tools and a JSON reply envelope
  are described in a system message, and the envelope's grammar applies from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from node.api.errors import invalid
from node.api.openai.chat_protocol import ChatCompletionRequest, NamedToolChoice
from node.engine.interface import ChatMessage, GenerationEngine, SamplingParams
from node.output import (
    OutputProcessor,
    ThinkTags,
    ToolFormat,
    detect_format,
    detect_think_tags,
    generic_system_prompt,
    get_format,
)

GENERIC = "generic"


@dataclass(frozen=True)
class OutputPlan:
    tool_format: ToolFormat | None
    tools: tuple[dict[str, Any], ...]
    parallel: bool
    think: ThinkTags | None
    reasoning_raw: bool
    grammar: str | None  # applies from the first token
    lazy_grammar: str | None  # applies once a trigger pattern matched
    triggers: tuple[str, ...]
    logprobs: bool
    starts_in_reasoning: bool = False  # the rendered prompt leaves a think tag open

    def processor(self) -> OutputProcessor:
        return OutputProcessor(
            self.tool_format,
            tools=self.tools,
            think=self.think,
            starts_in_reasoning=self.starts_in_reasoning,
            reasoning_raw=self.reasoning_raw,
        )

    def sampling(self, params: SamplingParams) -> SamplingParams:
        # Markers such as `<|python_tag|>` are special tokens: the parser must see them.
        special = self.tool_format is not None or self.think is not None
        if self.grammar is not None:
            return replace(params, grammar=self.grammar, special_tokens=special)
        if self.lazy_grammar is not None and params.grammar is None:
            return replace(params, grammar=self.lazy_grammar, grammar_triggers=self.triggers,
                           special_tokens=special)  # fmt: skip
        return replace(params, special_tokens=special)


def _format_of(engine: GenerationEngine) -> ToolFormat:
    name = engine.info.tool_format
    if name:
        return get_format(name)  # checked when the registry was loaded
    return detect_format(engine.chat_template)


def plan_output(body: ChatCompletionRequest, engine: GenerationEngine) -> OutputPlan:
    use_tools = bool(body.tools) and body.tool_choice != "none"
    fmt = _format_of(engine) if use_tools else None
    tools = tuple(t.model_dump(exclude_none=True) for t in body.tools or ()) if use_tools else ()
    parallel = body.parallel_tool_calls is not False
    grammar = lazy = None
    if fmt is not None:
        choice = body.tool_choice or "auto"
        wanted = choice.function.name if isinstance(choice, NamedToolChoice) else choice
        try:
            built = fmt.grammar(list(tools), wanted, parallel)
        except Exception as exc:  # a schema the grammar converter cannot express
            raise invalid(f"The tools cannot be turned into a grammar: {exc}", "tools") from None
        formatted = body.response_format is not None and body.response_format.type != "text"
        if wanted != "auto":
            grammar = built  # with a response_format too: the route refuses the pair
        elif formatted:
            pass  # the response_format's grammar constrains the output; calls are still parsed
        elif fmt.triggers:
            lazy = built
        else:
            grammar = built  # the generic envelope is the whole output
    triggers = tuple(fmt.triggers) if fmt is not None and lazy is not None else ()
    if grammar is not None or lazy is not None:
        try:  # parsed once here; the engine keeps the parse for the request itself
            engine.validate(SamplingParams(grammar=grammar or lazy, grammar_triggers=triggers))
        except ValueError as exc:
            raise invalid(f"The tools cannot be turned into a grammar: {exc}", "tools") from None
    return OutputPlan(
        tool_format=fmt,
        tools=tools,
        parallel=parallel,
        think=detect_think_tags(engine.chat_template, fmt),
        reasoning_raw=body.reasoning_format == "none"
        or (body.reasoning_format is None and engine.info.reasoning_raw),
        grammar=grammar,
        lazy_grammar=lazy,
        triggers=triggers,
        logprobs=bool(body.logprobs),
    )


def _with_system(messages: list[ChatMessage], text: str) -> list[ChatMessage]:
    if messages and messages[0].role == "system":
        first = messages[0]
        return [replace(first, content=f"{first.content or ''}\n\n{text}"), *messages[1:]]
    return [ChatMessage("system", text), *messages]


def render_prompt(
    body: ChatCompletionRequest, engine: GenerationEngine, plan: OutputPlan
) -> tuple[str, OutputPlan]:
    """The prompt text, and the plan knowing whether the prompt opened a reasoning block."""
    messages = body.engine_messages()
    tools = body.engine_tools()
    if plan.tool_format is not None and plan.tool_format.name == GENERIC:
        messages = _with_system(messages, generic_system_prompt(plan.tools, plan.parallel))
        tools = []
    try:
        prompt = engine.render_chat(
            messages, tools=tools, template_kwargs=body.chat_template_kwargs
        )
    except ValueError as exc:
        param = "chat_template_kwargs" if "template variable" in str(exc) else "messages"
        raise invalid(f"The messages cannot be formatted for this model: {exc}", param) from None
    opens = plan.think is not None and plan.think.prompt_opens(prompt)
    return prompt, replace(plan, starts_in_reasoning=opens)
