"""Where a request meets the engine and the meter: the one module that imports both.

The HTTP layer calls this module and never sees SQLite; the engine and the meter never see each
other. Every generated token is counted by the engine and written by the meter: a meter row is
opened (durably) before the engine is asked for anything, checkpointed while tokens flow, and
finished with the engine's exact counts, also when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from node.admission import Admitted, BudgetExceeded, Gate, RateLimited
from node.config import ModelSpec
from node.engine.interface import (
    ContextOverflow,
    EmbeddingEngine,
    Embeddings,
    Finished,
    Generation,
    GenerationEngine,
    GenerationEvent,
    ModelInfo,
    SamplingParams,
    TextDelta,
    TokenCounts,
)
from node.meter import ApiKey, Bill, Meter, MeterUnavailable, Price, RequestStart, Usage
from node.meter.limits import RateLimiter

if TYPE_CHECKING:
    from node.gpu import GpuInfo

__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "MeterUnavailable",
    "MeteredGeneration",
    "ModelNotFound",
    "NodeService",
    "NotReady",
    "RateLimited",
    "RejectedByModel",
]

log = logging.getLogger("node.service")
T = TypeVar("T")

CHECKPOINT_EVERY = 16  # SPEC §4: a killed node loses at most this many counted tokens
DRAIN_TIMEOUT_S = 10.0  # how long a cancelled generation may take to report its final counts
_STATUS = {"stop": "ok", "length": "ok", "cancelled": "cancelled", "error": "error"}


class AuthenticationFailed(Exception):
    """Missing, unknown, deleted or expired API key."""


class ModelNotFound(LookupError):
    """No loaded model of the wanted kind has this name."""


class NotReady(RuntimeError):
    """Models are still loading (or failed to load)."""


class RejectedByModel(ValueError):
    """The engine refused the request's parameters (e.g. a logit_bias token not in the
    vocabulary, a grammar it cannot parse). The client's fault: HTTP 400."""


class ModelPool(Protocol):
    """`node.engine.pool.ModelPool`, as far as the service uses it."""

    @property
    def ready(self) -> bool: ...

    def load(
        self, specs: list[ModelSpec], on_progress: Callable[[str, float], None] | None = None
    ) -> None: ...

    def get(self, name: str) -> GenerationEngine | EmbeddingEngine | None: ...

    def infos(self) -> list[ModelInfo]: ...

    def decode_calls(self) -> int: ...

    def close(self) -> None: ...


class UsageObserver(Protocol):
    """Live statistics (Prometheus); told about every request the service runs."""

    def started(self, model: str) -> None: ...

    def first_token(self, model: str, seconds: float) -> None: ...

    def finished(
        self,
        *,
        model: str,
        key_id: str,
        endpoint: str,
        status: str,
        counts: TokenCounts,
        seconds: float,
        prefill_seconds: float | None,
    ) -> None: ...


@dataclass(frozen=True)
class Admission:
    """Who asks for what; enough to open the meter row."""

    request_id: str
    key: ApiKey
    endpoint: str  # "chat.completions" | "completions" | "embeddings"
    user: str | None


async def _wait(future: Future[T]) -> T:
    """Await a meter future; our caller being cancelled must not cancel a queued write."""
    return await asyncio.shield(asyncio.wrap_future(future))


def _usage(counts: TokenCounts) -> Usage:
    return Usage(counts.prompt_tokens, counts.cached_tokens, counts.completion_tokens)


def _is_generation(engine: object) -> bool:
    return hasattr(engine, "submit")


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
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise AuthenticationFailed("The Authorization header must be 'Bearer <key>'.")
        key = self.meter.verify_key(secret)
        if key is None:
            raise AuthenticationFailed("Incorrect, deleted or expired API key provided.")
        return key

    def generator(self, name: str) -> GenerationEngine:
        self.check_ready()
        engine = self.pool.get(name)
        if engine is None or not _is_generation(engine):
            kind = "" if engine is None else " for chat or completions (it serves embeddings)"
            raise ModelNotFound(f"The model '{name}' does not exist{kind}.")
        return engine  # type: ignore[return-value]

    def embedder(self, name: str) -> EmbeddingEngine:
        self.check_ready()
        engine = self.pool.get(name)
        if engine is None or _is_generation(engine):
            kind = "" if engine is None else " for embeddings (it serves generation)"
            raise ModelNotFound(f"The model '{name}' does not exist{kind}.")
        return engine  # type: ignore[return-value]

    def models(self) -> list[ModelInfo]:
        self.check_ready()
        return self.pool.infos()

    def decode_calls(self) -> int:
        """llama_decode calls of every model so far (0 while loading)."""
        return self.pool.decode_calls()

    def model(self, name: str) -> ModelInfo:
        self.check_ready()
        engine = self.pool.get(name)
        if engine is None:
            raise ModelNotFound(f"The model '{name}' does not exist.")
        return engine.info

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
        prompt_tokens: list[int],
        params: SamplingParams,
    ) -> MeteredGeneration:
        """Open the meter row, then submit. The caller must drain or `aclose()` the result."""
        engine.check_fits(len(prompt_tokens), params.max_tokens)
        try:
            engine.validate(params)  # the client's mistakes are refused before a meter row exists
        except ValueError as exc:
            raise RejectedByModel(str(exc)) from exc
        n_prompt = len(prompt_tokens)
        # The most tokens it can use: the limit asked for, or the context left.
        max_completion = params.max_tokens or max(0, engine.info.n_ctx_per_seq - n_prompt)
        # MeterUnavailable, RateLimited, BudgetExceeded: nothing generated
        admitted = await self._open(admission, engine.info, n_prompt, max_completion)
        try:
            generation = engine.submit(prompt_tokens, params)
        except BaseException as exc:
            # Admitted but never run: the row says so, with zero tokens.
            admitted.settle(0)
            await self._finish_quietly(admission.request_id, TokenCounts(), "error")
            if isinstance(exc, ValueError) and not isinstance(exc, ContextOverflow):
                raise RejectedByModel(str(exc)) from exc
            raise
        return MeteredGeneration(self, admission, engine.info.id, generation, admitted)

    async def embed(
        self, admission: Admission, engine: EmbeddingEngine, texts: Sequence[str]
    ) -> tuple[Embeddings, Bill]:
        """Embeddings are metered like generation: prompt tokens only."""
        limit = engine.info.n_ctx_per_seq
        total = 0
        for text in texts:
            try:
                n = len(engine.tokenize(text))
            except ValueError as exc:
                raise RejectedByModel(str(exc)) from exc
            if n > limit:
                raise ContextOverflow(n, limit)
            total += n
        admitted = await self._open(admission, engine.info, total, 0)
        began = time.perf_counter()
        self.observer.started(engine.info.id)
        status, counts = "error", TokenCounts()
        try:
            result = await engine.embed(texts)
            status, counts = "ok", TokenCounts(prompt_tokens=result.prompt_tokens)
        finally:
            admitted.settle(counts.prompt_tokens)
            bill_future = self.meter.finish(admission.request_id, _usage(counts), status)
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
        return result, await _wait(bill_future)

    async def _finish_quietly(self, request_id: str, counts: TokenCounts, status: str) -> None:
        try:
            await _wait(self.meter.finish(request_id, _usage(counts), status))
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


class MeteredGeneration:
    """A submitted generation tied to its meter row.

    Iterate `events()` for text; the last event is `Finished`, after which `bill` is set.
    Stopping early (client gone, error) must go through `aclose()`, which cancels the engine,
    waits for its final counts and finishes the row as `cancelled`.
    """

    def __init__(
        self,
        service: NodeService,
        admission: Admission,
        model: str,
        generation: Generation,
        admitted: Admitted,
    ) -> None:
        self._service = service
        self._admission = admission
        self.model = model
        self._generation = generation
        self._admitted = admitted
        self.price = admitted.price
        self.bill: Bill | None = None
        self.finished: Finished | None = None
        # The engine's iterator is drained by its own task into a queue, so cancelling our
        # caller never tears the iterator down: `aclose()` can still read the final counts.
        self._queue: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()
        self._held: GenerationEvent | BaseException | None = None  # read, not yet returned
        self._pump = asyncio.ensure_future(self._drain_engine())
        self._checkpointed = 0
        self._meter_error: BaseException | None = None
        self._began = time.perf_counter()
        self._first_token_s: float | None = None
        self._closing: asyncio.Task[None] | None = None
        service.observer.started(model)

    @property
    def request_id(self) -> str:
        return self._admission.request_id

    async def _drain_engine(self) -> None:
        try:
            async for event in self._generation:
                self._queue.put_nowait(event)
                if isinstance(event, Finished):
                    return
            self._queue.put_nowait(RuntimeError("the engine ended without Finished"))
        except Exception as exc:
            self._queue.put_nowait(exc)

    async def _next(self) -> GenerationEvent:
        if self._held is not None:
            item, self._held = self._held, None
        else:
            item = await self._queue.get()
        if isinstance(item, BaseException):
            self._held = item  # every later read fails the same way
            raise item
        return item

    def _join_ready(self, delta: TextDelta) -> TextDelta:
        """Text already waiting behind `delta` goes out with it: when the event loop lags
        behind the engine, fewer and larger chunks cost less per token."""
        parts = [delta.text]
        while self._held is None and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, TextDelta):
                parts.append(item.text)
            else:
                self._held = item
        return delta if len(parts) == 1 else TextDelta("".join(parts))

    async def events(self) -> AsyncIterator[GenerationEvent]:
        while self.finished is None:
            if self._meter_error is not None:
                await self.aclose(status="error")
                raise MeterUnavailable(f"meter checkpoint failed: {self._meter_error}")
            event = await self._next()
            if isinstance(event, TextDelta):
                event = self._join_ready(event)
                if self._first_token_s is None:
                    self._first_token_s = time.perf_counter() - self._began
                    self._service.observer.first_token(self.model, self._first_token_s)
                self._maybe_checkpoint()
                yield event
            else:
                self.finished = event
                self.bill = await self._finish(event.counts, _STATUS[event.reason])
                yield event

    def _maybe_checkpoint(self) -> None:
        counts = self._generation.counts
        if counts.completion_tokens - self._checkpointed < CHECKPOINT_EVERY:
            return
        self._checkpointed = counts.completion_tokens
        future = self._service.meter.checkpoint(self.request_id, _usage(counts))

        def done(f: Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:
                self._meter_error = f.exception()
                log.error("meter: checkpoint of %s failed: %s", self.request_id, f.exception())

        future.add_done_callback(done)

    async def _finish(self, counts: TokenCounts, status: str) -> Bill:
        ad = self._admission
        self._admitted.settle(counts.prompt_tokens + counts.completion_tokens)
        self._service.observer.finished(
            model=self.model,
            key_id=ad.key.id,
            endpoint=ad.endpoint,
            status=status,
            counts=counts,
            seconds=time.perf_counter() - self._began,
            prefill_seconds=self._first_token_s,
        )
        return await _wait(self._service.meter.finish(self.request_id, _usage(counts), status))

    async def aclose(self, status: str = "cancelled") -> None:
        """Cancel if still running and meter what was generated; safe to call repeatedly."""
        if self.finished is not None:
            return
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._cancel_and_finish(status))
            self._service.keep(self._closing)  # type: ignore[arg-type]
        await asyncio.shield(self._closing)

    async def _cancel_and_finish(self, status: str) -> None:
        self._generation.cancel()
        counts: TokenCounts | None = None
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while True:
                    event = await self._next()
                    if isinstance(event, Finished):
                        counts = event.counts
                        break
        except TimeoutError:
            log.error("engine did not finish cancelled request %s in time", self.request_id)
        except Exception:
            log.exception("engine failed while cancelling request %s", self.request_id)
        if counts is None:
            counts = self._generation.counts.copy()
        self.finished = Finished("cancelled", counts)
        try:
            self.bill = await self._finish(counts, status)
        except Exception:
            log.exception("meter: cannot finish request %s as %s", self.request_id, status)
