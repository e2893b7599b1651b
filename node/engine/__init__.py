"""The engine: GGUF models through llama-cpp-python, continuous batching, embeddings.

`ModelPool` and `ModelLoadError` load llama-cpp-python lazily, so code that only needs the
interface types (the HTTP layer, fake engines in tests) never imports the native library.
"""

from typing import Any

from node.engine.interface import (
    ContextOverflow,
    EmbeddingEngine,
    Embeddings,
    EngineBusy,
    Finished,
    FinishReason,
    Generation,
    GenerationEngine,
    GenerationEvent,
    ModelInfo,
    SamplingParams,
    TextDelta,
    TokenCounts,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from node.engine.model import ModelLoadError
    from node.engine.pool import ModelPool

__all__ = [
    "ContextOverflow",
    "EmbeddingEngine",
    "Embeddings",
    "EngineBusy",
    "FinishReason",
    "Finished",
    "Generation",
    "GenerationEngine",
    "GenerationEvent",
    "ModelInfo",
    "ModelLoadError",
    "ModelPool",
    "SamplingParams",
    "TextDelta",
    "TokenCounts",
]


def __getattr__(name: str) -> Any:
    if name == "ModelPool":
        from node.engine.pool import ModelPool

        return ModelPool
    if name == "ModelLoadError":
        from node.engine.model import ModelLoadError

        return ModelLoadError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
