"""A GGUF model loaded through llama-cpp-python's low-level API: tokenizer, chat template, facts.

The model (weights + vocab) is shared; each engine creates its own context from it with
`context_params`. Nothing here decodes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from node.config import ModelSpec
from node.engine.chat_template import ChatTemplate
from node.engine.interface import ChatMessage, ModelInfo, Tool

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float], None]  # percent, 0..100

_KV_TYPES = {
    "f32": llama_cpp.GGML_TYPE_F32,
    "f16": llama_cpp.GGML_TYPE_F16,
    "bf16": 30,  # GGML_TYPE_BF16; not exported as a constant by llama-cpp-python
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
    "q4_1": llama_cpp.GGML_TYPE_Q4_1,
    "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL,
    "q5_0": llama_cpp.GGML_TYPE_Q5_0,
    "q5_1": llama_cpp.GGML_TYPE_Q5_1,
}

# `general.file_type` → "Q4_1", "Q5_K_M", ... derived from llama.cpp's own enum names.
_FTYPE_NAMES: dict[int, str] = {
    value: name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
    for name, value in vars(llama_cpp).items()
    if name.startswith(("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")) and isinstance(value, int)
}
_FTYPE_GUESSED = 1024

_FLASH_ATTN_TYPES: dict[bool | str, int] = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}

_backend_lock = threading.Lock()
_backend_ready = False


_GGML_LOG_WARN = 3  # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_GGML_LOG_ERROR = 4
_llama_log = logging.getLogger("llama.cpp")


def _forward_llama_log(level: int, text: bytes, _user_data: object) -> None:
    if level in (_GGML_LOG_WARN, _GGML_LOG_ERROR):
        message = text.decode("utf-8", errors="replace").rstrip()
        _llama_log.log(logging.ERROR if level == _GGML_LOG_ERROR else logging.WARNING, message)


_LLAMA_LOG_CALLBACK = llama_cpp.llama_log_callback(_forward_llama_log)


class ModelLoadError(RuntimeError):
    """The GGUF file could not be loaded or a context could not be created for it."""


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            # llama.cpp logs every load detail; route warnings and errors to Python logging.
            llama_cpp.llama_log_set(_LLAMA_LOG_CALLBACK, None)
            llama_cpp.llama_backend_init()
            _backend_ready = True


def physical_cores() -> int:
    """Physical cores usable by this process: more threads than that slow llama.cpp down."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    usable = usable or 1
    cores: set[tuple[str, str]] = set()
    try:
        physical = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def quant_type_name(file_type: int | None) -> str:
    """llama.cpp's name for a GGUF `general.file_type`, e.g. 3 → "Q4_1", 17 → "Q5_K_M"."""
    if file_type is None:
        return "unknown"
    return _FTYPE_NAMES.get(file_type & ~_FTYPE_GUESSED, f"ftype-{file_type}")


def kv_cache_type(name: str | None) -> int | None:
    return None if name is None else _KV_TYPES[name]


class LoadedModel:
    """Weights, vocab and chat template of one GGUF file. Thread-safe for reads."""

    def __init__(self, spec: ModelSpec, on_progress: ProgressCallback | None = None) -> None:
        _init_backend()
        self.spec = spec
        self.path = Path(spec.path)
        if not self.path.is_file():
            raise ModelLoadError(f"model {spec.id}: GGUF file not found: {self.path}")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = spec.n_gpu_layers if spec.n_gpu_layers >= 0 else 0x7FFFFFFF
        # Keep the ctypes callback referenced for the whole load, or it is freed mid-call.
        callback = _progress_callback(on_progress)
        if callback is not None:
            params.progress_callback = callback
        handle = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not handle:
            raise ModelLoadError(f"model {spec.id}: llama.cpp could not load {self.path}")
        self.handle = handle
        self.vocab = llama_cpp.llama_model_get_vocab(handle)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd: int = llama_cpp.llama_model_n_embd(handle)
        self.n_params: int = llama_cpp.llama_model_n_params(handle)
        self.size_bytes: int = llama_cpp.llama_model_size(handle)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(handle)
        self.bos: int = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos: int = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        file_type = self.metadata("general.file_type")
        self.quant_type = quant_type_name(int(file_type) if file_type else None)
        template = spec.chat_template or self.metadata("tokenizer.chat_template")
        self.chat_template: str | None = template or None
        try:
            self._template = (
                ChatTemplate(template, self._token_text(self.bos), self._token_text(self.eos))
                if template
                else None
            )
        except ValueError as exc:
            llama_cpp.llama_model_free(handle)  # nobody else will: the object never existed
            raise ModelLoadError(f"model {spec.id}: invalid chat template: {exc}") from None
        self._pieces: dict[int, bytes] = {}
        self._closed = False

    # -- metadata ------------------------------------------------------------------------------

    def metadata(self, key: str) -> str | None:
        """One GGUF metadata value as text, or None when the file lacks it."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self.handle, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    # -- text ----------------------------------------------------------------------------------

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Tool] = (),
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The chat template applied to `messages`, ending with the assistant's turn."""
        if self._template is None:
            raise ValueError(f"model {self.spec.id} has no chat template")
        return self._template.render(messages, tools=tools, template_kwargs=template_kwargs)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Tokens with special-token parsing; BOS prepended only when the model wants one
        (and `add_special`)."""
        data = text.encode("utf-8")
        capacity = len(data) + 2
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, False, True)
        if n < 0:
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, False, True)
            if n < 0:
                raise ValueError("text could not be tokenized")
        ids = list(tokens[:n])
        if add_special and self.add_bos and self.bos >= 0 and (not ids or ids[0] != self.bos):
            ids.insert(0, self.bos)
        return ids

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes a generated token adds to the text. Special (control) tokens add nothing
        unless `special`: then their text, e.g. `<|python_tag|>` for a tool-call parser."""
        key = -token - 1 if special else token
        cached = self._pieces.get(key)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        piece = buf.raw[: max(n, 0)]
        self._pieces[key] = piece
        return piece

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        """`special`: control tokens as their text (`/detokenize` round-trips them)."""
        pieces = (self.piece(t, special) for t in tokens)
        return b"".join(pieces).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # -- contexts ------------------------------------------------------------------------------

    def model_info(
        self, *, embeddings: bool, n_ctx: int, n_ctx_per_seq: int, parallel: int
    ) -> ModelInfo:
        """What clients are told about this model as served with these context settings."""
        return ModelInfo(
            id=self.spec.id,
            aliases=self.spec.alias,
            path=self.path,
            embeddings=embeddings,
            n_ctx=n_ctx,
            n_ctx_per_seq=n_ctx_per_seq,
            parallel=parallel,
            quant_type=self.quant_type,
            n_params=self.n_params,
            size_bytes=self.size_bytes,
            n_embd=self.n_embd,
            n_vocab=self.n_vocab,
            tool_format=self.spec.tool_format,
            reasoning_raw=self.spec.reasoning_format == "none",
        )

    def context_params(
        self,
        *,
        n_ctx: int,
        n_seq_max: int,
        n_batch: int,
        embeddings: bool = False,
        unified: bool = False,
    ) -> llama_cpp.llama_context_params:
        """Context parameters from the spec: threads, batch, flash attention, KV cache types."""
        spec = self.spec
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        threads = spec.n_threads or physical_cores()
        params.n_threads = threads
        params.n_threads_batch = threads
        # "auto" is off where results must not depend on batch mates: flash attention's f16
        # accumulation moves an embedding by more than 1e-4 between batched and alone, and
        # exact batching promises output bit-identical to llama-cpp-python's `Llama` alone.
        flash_attn = spec.flash_attn
        if flash_attn == "auto" and (embeddings or spec.batching == "exact"):
            flash_attn = False
        params.flash_attn_type = _FLASH_ATTN_TYPES[flash_attn]
        if spec.type_k is not None:
            params.type_k = _KV_TYPES[spec.type_k]
        if spec.type_v is not None:
            params.type_v = _KV_TYPES[spec.type_v]
        # Generation: one KV stream per sequence unless `unified`, so a sequence's attention
        # never sees (or pads over) another sequence's cells (see `steps`). Embeddings clear
        # the cache after every call, so their inputs share one stream.
        params.kv_unified = embeddings or unified
        params.no_perf = True
        if embeddings:
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        return params

    def new_context(self, params: llama_cpp.llama_context_params) -> llama_cpp.llama_context_p:
        ctx = llama_cpp.llama_init_from_model(self.handle, params)
        if not ctx:
            raise ModelLoadError(
                f"model {self.spec.id}: llama.cpp could not create a context "
                f"(n_ctx={params.n_ctx}, parallel={params.n_seq_max}; a quantized V cache "
                'needs flash_attn = true or "auto")'
            )
        return ctx

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            llama_cpp.llama_model_free(self.handle)


def _progress_callback(on_progress: ProgressCallback | None) -> object | None:
    if on_progress is None:
        return None

    last_decile = [-1]

    def report(progress: float, _user_data: object) -> bool:
        # llama.cpp calls this hundreds of times per load; pass on whole tens of percent only.
        percent = max(0.0, min(100.0, progress * 100.0))
        decile = int(percent // 10)
        if decile == last_decile[0]:
            return True
        last_decile[0] = decile
        try:
            on_progress(float(decile * 10))
        except Exception:  # a logging failure must not abort the load
            log.exception("load progress callback failed")
        return True

    return llama_cpp.llama_progress_callback(report)
