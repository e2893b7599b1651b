"""llm-node: a self-hosted LLM serving node with built-in per-token metering."""

__version__ = "0.1.0"
