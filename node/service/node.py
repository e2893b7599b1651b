"""The node's composition: models, meter and GPU, and the metered work done with them.

The one module family that imports both the engine and the meter. The HTTP layer calls this and
never sees SQLite; the engine and the meter never see each other. A meter row is opened
(durably) before the engine is asked for anything (see `metered` for the rest of its life).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING

from node.admission import Admitted, Gate
from node.config import ModelSpec
from node.engine.interface import (
    ContextOverflow,
    EmbeddingEngine,
    Embeddings,
    EngineStats,
    Generation,
    GenerationEngine,
    ModelInfo,
    ModelPool,
    SamplingParams,
    TokenCounts,
)
from node.meter import ApiKey, Bill, Meter, Price, RequestStart
from node.meter.limits import RateLimiter
from node.service.admission import Admission, UsageObserver
from node.service.errors import AuthenticationFailed, ModelNotFound, NotReady, RejectedByModel
from node.service.metered import DRAIN_TIMEOUT_S, MeteredGeneration, usage_of, wait_meter

if TYPE_CHECKING:
    from node.gpu import GpuInfo

log = logging.getLogger("node.service")


def check_token_ids(tokens: Sequence[int], info: ModelInfo, param: str) -> None:
    if info.n_vocab and any(not 0 <= t < info.n_vocab for t in tokens):
        raise RejectedByModel(
            f"{param}: token ids must be between 0 and {info.n_vocab - 1} (the vocabulary)", param
        )


class NodeService:
    """Models, meter and GPU of one node."""

    def __init__(
        self,
        specs: list[ModelSpec],
        pool: ModelPool,
        meter: Meter,
        gpu: GpuInfo,
        observer: UsageObserver,
        limiter: RateLimiter | None = None,
    ) -> None:
        """`limiter`: the per-key rate limits' live counts (tests pass one with their clock)."""
        self.specs = specs
        self.pool = pool
        self.meter = meter
        self.gpu = gpu
        self.observer = observer
        self.gate = Gate(meter, limiter or RateLimiter())
        self.load_error: str | None = None
        # Fleet mode: raises (a NodeError) while the local copy of the keys is too stale.
        self.keys_fresh: Callable[[], None] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover rows of a previous run, then load the models in the background."""
        recovered = await asyncio.to_thread(self.meter.recover_interrupted)
        if recovered:
            log.warning("marked %d request(s) of a previous run as interrupted", recovered)
        self._load_task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        last: dict[str, int] = {}

        def progress(model: str, percent: float) -> None:  # the pool reports 0..100
            whole = int(percent)
            if last.get(model) != whole:
                last[model] = whole
                log.info("loading %s: %d%%", model, whole)

        try:
            await asyncio.to_thread(self.pool.load, self.specs, progress)
        except Exception as exc:  # the node keeps answering 503 with the reason
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("loading models failed: %s", self.load_error)
            return
        log.info("all models loaded: %s", ", ".join(i.id for i in self.pool.infos()))

    async def close(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            with contextlib.suppress(BaseException):
                await self._load_task  # a load in flight cannot be interrupted; let it end
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, DRAIN_TIMEOUT_S)
        self.pool.close()

    @property
    def ready(self) -> bool:
        return self.load_error is None and self.pool.ready

    def check_ready(self) -> None:
        if self.load_error is not None:
            raise NotReady(f"The models failed to load: {self.load_error}")
        if not self.pool.ready:
            raise NotReady("The models are still loading; retry shortly.")

    # -- lookups ----------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> ApiKey:
        """`Authorization: Bearer <secret>` → the key; the meter knows deletions at once."""
        if not authorization:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                "(or 'x-api-key: <key>')."
            )
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise AuthenticationFailed("The Authorization header must be 'Bearer <key>'.")
        key = self.meter.verify_key(secret)
        if key is not None and self.keys_fresh is not None:
            self.keys_fresh()
        if key is None:
            raise AuthenticationFailed("Incorrect, deleted or expired API key provided.")
        return key

    def generator(self, name: str) -> GenerationEngine:
        self.check_ready()
        engine = self.pool.generator(name)
        if engine is None:
            other = self.pool.info(name) is not None
            kind = " for chat or completions (it serves embeddings)" if other else ""
            raise ModelNotFound(f"The model '{name}' does not exist{kind}.")
        return engine

    def embedder(self, name: str) -> EmbeddingEngine:
        self.check_ready()
        engine = self.pool.embedder(name)
        if engine is None:
            other = self.pool.info(name) is not None
            kind = " for embeddings (it serves generation)" if other else ""
            raise ModelNotFound(f"The model '{name}' does not exist{kind}.")
        return engine

    def models(self) -> list[ModelInfo]:
        self.check_ready()
        return self.pool.infos()

    def decode_calls(self) -> int:
        """llama_decode calls of every model so far (0 while loading)."""
        return self.pool.decode_calls()

    def engine_stats(self) -> EngineStats:
        """The generation engines' counters for /metrics (zeros while loading)."""
        return self.pool.stats()

    def model(self, name: str) -> ModelInfo:
        self.check_ready()
        info = self.pool.info(name)
        if info is None:
            raise ModelNotFound(f"The model '{name}' does not exist.")
        return info

    def price(self, model: str) -> Price | None:
        return self.meter.current_price(model, self.gpu.type)

    # -- metered work -----------------------------------------------------------------------

    async def _open(
        self, admission: Admission, info: ModelInfo, prompt_tokens: int, max_completion: int
    ) -> Admitted:
        """Limits, budgets and the durable meter row (RateLimited, BudgetExceeded)."""
        start = RequestStart(
            id=admission.request_id,
            key_id=admission.key.id,
            org=admission.key.org,
            endpoint=admission.endpoint,
            model=info.id,
            quant_type=info.quant_type,
            gpu_type=self.gpu.type,
            gpu_name=self.gpu.name,
            user=admission.user,
            prompt_tokens=prompt_tokens,  # a kill before the first checkpoint keeps the prompt
        )
        return await self.gate.admit(start, admission.key.limits, prompt_tokens, max_completion)

    def rate_headers(self, key: ApiKey) -> dict[str, str]:
        """`x-ratelimit-*` for a key with limits; empty for one without."""
        return self.gate.headers(key.id, key.limits)

    async def generate(
        self,
        admission: Admission,
        engine: GenerationEngine,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        n: int = 1,
    ) -> MeteredGeneration:
        """Open the meter row, then submit. The caller must drain or `aclose()` the result.

        Every prompt gets `n` choices, all in one row: choice `p * n + j` is prompt `p`'s
        `j`-th; each prompt is billed once. Choice `j` samples with seed `seed + j`, so a
        seeded request is reproducible and its choices still differ."""
        total = len(prompts) * n
        if not 1 <= total <= engine.info.parallel:
            raise RejectedByModel(
                f"n times the number of prompts must be between 1 and {engine.info.parallel} "
                "(the model's parallel sequences)",
                "n" if n > 1 else "prompt",
            )
        for prompt in prompts:
            engine.check_fits(len(prompt), params.max_tokens)
        try:
            engine.validate(params)  # the client's mistakes are refused before a meter row exists
        except ValueError as exc:
            raise RejectedByModel(str(exc)) from exc
        # The most completion tokens it can use: every choice's limit, or the context left.
        limit = engine.info.n_ctx_per_seq
        max_completion = n * sum(params.max_tokens or max(0, limit - len(p)) for p in prompts)
        # MeterUnavailable, RateLimited, BudgetExceeded: nothing generated. Each prompt is
        # billed once, whatever its n.
        admitted = await self._open(
            admission, engine.info, sum(len(p) for p in prompts), max_completion
        )

        def submitter(prompt: list[int], j: int) -> Callable[[], Generation]:
            seed = None if params.seed is None or j == 0 else params.seed + j
            choice = params if seed is None else replace(params, seed=seed)
            return lambda: engine.submit(prompt, choice)

        started: dict[int, Generation] = {}
        deferred: dict[int, tuple[int, Callable[[], Generation]]] = {}
        try:
            for p, prompt in enumerate(prompts):
                started[p * n] = submitter(prompt, 0)()
                for j in range(1, n):
                    deferred[p * n + j] = (p * n, submitter(prompt, j))
        except BaseException as exc:
            # Admitted but never run: the row says so, with zero tokens.
            for generation in started.values():
                generation.cancel()
            admitted.settle(0)
            await self._finish_quietly(admission.request_id, TokenCounts(), "error")
            if isinstance(exc, ValueError) and not isinstance(exc, ContextOverflow):
                raise RejectedByModel(str(exc)) from exc
            raise
        return MeteredGeneration(
            self, admission, engine.info.id, admitted, started, deferred, total
        )

    async def embed(
        self, admission: Admission, engine: EmbeddingEngine, texts: Sequence[str | list[int]]
    ) -> tuple[Embeddings, Bill]:
        """Embeddings are metered like generation: prompt tokens only. An input is text or
        token ids."""
        limit = engine.info.n_ctx_per_seq
        n_prompt = 0
        for text in texts:
            try:
                n = len(engine.tokenize(text)) if isinstance(text, str) else len(text)
            except ValueError as exc:
                raise RejectedByModel(str(exc), "input") from exc
            if not isinstance(text, str):
                check_token_ids(text, engine.info, "input")
            if n > limit:
                raise ContextOverflow(n, limit, param="input")
            n_prompt += n
        admitted = await self._open(admission, engine.info, n_prompt, 0)
        began = time.perf_counter()
        self.observer.started(engine.info.id)
        status, counts = "error", TokenCounts()
        try:
            result = await engine.embed(texts)
            status, counts = "ok", TokenCounts(prompt_tokens=result.prompt_tokens)
        finally:
            admitted.settle(counts.prompt_tokens)
            bill_future = self.meter.finish(admission.request_id, usage_of(counts), status)
            self.observer.finished(
                model=engine.info.id,
                key_id=admission.key.id,
                endpoint=admission.endpoint,
                status=status,
                counts=counts,
                seconds=time.perf_counter() - began,
                prefill_seconds=None,
            )
            if status != "ok":
                self._log_future(bill_future, admission.request_id)
        return result, await wait_meter(bill_future)

    def prompt_tokens(
        self, engine: GenerationEngine, prompt: str | list[int], param: str
    ) -> list[int]:
        """A prompt's tokens: text tokenized, or token ids checked against the vocabulary."""
        if isinstance(prompt, str):
            try:
                return engine.tokenize(prompt)
            except ValueError as exc:
                raise RejectedByModel(f"the {param} cannot be tokenized: {exc}", param) from None
        check_token_ids(prompt, engine.info, param)
        return list(prompt)

    async def _finish_quietly(self, request_id: str, counts: TokenCounts, status: str) -> None:
        try:
            await wait_meter(self.meter.finish(request_id, usage_of(counts), status))
        except Exception:
            log.exception("meter: cannot finish request %s as %s", request_id, status)

    def _log_future(self, future: Future[object], request_id: str) -> None:
        def done(f: Future[object]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("meter: write for request %s failed: %s", request_id, f.exception())

        future.add_done_callback(done)

    def keep(self, task: asyncio.Task[object]) -> None:
        """Hold a background task until it ends (asyncio keeps only weak references)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)
