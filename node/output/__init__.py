"""Per-request output processing: detokenized text in, typed parts out. No HTTP, no SQLite,
no llama-cpp-python (grammar building imports it lazily)."""

from node.output.parts import (
    ContentText,
    Part,
    ProcessedOutput,
    ReasoningText,
    ToolCall,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    merge_parts,
)
from node.output.processor import OutputProcessor, process_text
from node.output.reasoning import MISTRAL_THINK, QWEN35_THINK, THINK, ThinkTags
from node.output.tools.generic import system_prompt as generic_system_prompt
from node.output.tools.registry import FORMATS, detect_format, detect_think_tags, get_format
from node.output.tools.spec import ToolFormat

__all__ = [
    "FORMATS",
    "MISTRAL_THINK",
    "QWEN35_THINK",
    "THINK",
    "ContentText",
    "OutputProcessor",
    "Part",
    "ProcessedOutput",
    "ReasoningText",
    "ThinkTags",
    "ToolCall",
    "ToolCallArgs",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolFormat",
    "detect_format",
    "detect_think_tags",
    "generic_system_prompt",
    "get_format",
    "merge_parts",
    "process_text",
]
