"""Every model the node serves, loaded from its `ModelSpec`, found by id or alias.

Implements `interface.ModelPool`."""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable

from node.config import ModelSpec
from node.engine.embeddings import EmbeddingModel
from node.engine.interface import (
    EmbeddingEngine,
    EngineStats,
    GenerationEngine,
    ModelInfo,
    PromptCacheStats,
)
from node.engine.model import LoadedModel
from node.engine.scheduler import Scheduler

log = logging.getLogger(__name__)


class ModelPool:
    """Loads models (blocking: call it in a thread), then hands out their engines."""

    def __init__(self) -> None:
        self._engines: list[Scheduler | EmbeddingModel] = []
        self._by_name: dict[str, Scheduler | EmbeddingModel] = {}
        # aliases with `*`, e.g. "claude-*": tried in registry order after the exact names
        self._patterns: list[tuple[str, Scheduler | EmbeddingModel]] = []
        self._lock = threading.Lock()
        self._ready = False

    @property
    def ready(self) -> bool:
        """True once every model given to `load` is loaded."""
        return self._ready

    def load(
        self,
        specs: list[ModelSpec],
        on_progress: Callable[[str, float], None] | None = None,
    ) -> None:
        """Load each spec in order; a failure raises `ModelLoadError` and leaves `ready` False."""
        self._ready = False
        for spec in specs:
            progress = None
            if on_progress is not None:

                def progress(percent: float, _name: str = spec.id) -> None:
                    on_progress(_name, percent)

            model = LoadedModel(spec, progress)
            try:
                engine = EmbeddingModel(model) if spec.embeddings else Scheduler(model)
            except BaseException:
                model.close()
                raise
            with self._lock:
                self._engines.append(engine)
                for name in spec.names:
                    if "*" in name:
                        self._patterns.append((name, engine))
                    else:
                        self._by_name[name] = engine
            log.info(
                "model %s loaded: %s, %s, n_ctx %d, parallel %d",
                spec.id,
                engine.info.quant_type,
                "embeddings" if spec.embeddings else "generation",
                engine.info.n_ctx,
                engine.info.parallel,
            )
        self._ready = True

    def _get(self, name: str) -> Scheduler | EmbeddingModel | None:
        with self._lock:
            engine = self._by_name.get(name)
            if engine is None:
                engine = next((e for p, e in self._patterns if fnmatch.fnmatchcase(name, p)), None)
        return engine

    def info(self, name: str) -> ModelInfo | None:
        engine = self._get(name)
        return None if engine is None else engine.info

    def generator(self, name: str) -> GenerationEngine | None:
        engine = self._get(name)
        return engine if isinstance(engine, Scheduler) else None

    def embedder(self, name: str) -> EmbeddingEngine | None:
        engine = self._get(name)
        return engine if isinstance(engine, EmbeddingModel) else None

    def infos(self) -> list[ModelInfo]:
        with self._lock:
            return [engine.info for engine in self._engines]

    def decode_calls(self) -> int:
        """llama_decode calls of every loaded model so far."""
        with self._lock:
            return sum(engine.decode_calls for engine in self._engines)

    def stats(self) -> EngineStats:
        with self._lock:
            engines = [e for e in self._engines if isinstance(e, Scheduler)]
        return EngineStats(
            decode_calls=sum(e.decode_calls for e in engines),
            busy_slot_decodes=sum(e.busy_slot_decodes for e in engines),
            n_tokens_max=max((e.n_tokens_max for e in engines), default=0),
            kv_tokens=sum(sum(e.slot_tokens()) for e in engines),
            kv_capacity=sum(e.info.n_ctx for e in engines),
            requests_waiting=sum(e.queued() for e in engines),
        )

    def prompt_cache_stats(self) -> dict[str, PromptCacheStats]:
        """Each generation model's prompt cache counters, by model id."""
        with self._lock:
            engines = list(self._engines)
        return {e.info.id: e.prompt_cache_stats() for e in engines if isinstance(e, Scheduler)}

    def close(self) -> None:
        self._ready = False
        with self._lock:
            engines, self._engines, self._by_name = self._engines, [], {}
            self._patterns = []
        for engine in engines:
            engine.close()
