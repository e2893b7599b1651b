"""`GET /metrics`: Prometheus text with llama-server's `llamacpp:*` names, so its dashboards
work, plus per-model / per-key token counters and latency histograms.

Each app has its own `CollectorRegistry` (several apps may live in one test process).
`llamacpp:n_decode_total` is read from the engines when scraped: their `llama_decode` calls, one
per batched step however many sequences it carries; so are `n_busy_slots_per_decode`,
`n_tokens_max` and the KV cache gauges. `llamacpp:prompt_tokens_total` counts the prompt tokens
actually decoded, as llama-server does; the ones reused from the KV cache are
`llamacpp:prompt_tokens_cached_total`. Every dialect's requests are counted per endpoint
(`chat.completions`, `completions`, `embeddings`, `responses`, `messages`).
`llamacpp:requests_deferred` counts the requests an engine holds back, waiting for a slot or (in
a unified KV) for room, as llama-server's deferred queue does. Approximation: prompt time is the
time to the first token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from node.engine.interface import EngineStats, TokenCounts
from node.fleet.status import ExportStatus

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class NodeMetrics:
    """Implements `node.service.UsageObserver`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.prompt_tokens = Counter(
            "llamacpp:prompt_tokens", "Number of prompt tokens processed.", registry=r
        )
        self.prompt_cached = Counter(
            "llamacpp:prompt_tokens_cached",
            "Number of prompt tokens reused from the KV cache (not processed).",
            registry=r,
        )
        self.prompt_seconds = Counter("llamacpp:prompt_seconds", "Prompt process time.", registry=r)
        self.tokens_predicted = Counter(
            "llamacpp:tokens_predicted", "Number of generation tokens processed.", registry=r
        )
        self.predicted_seconds = Counter(
            "llamacpp:tokens_predicted_seconds", "Predict process time.", registry=r
        )
        self._decodes = _DecodeCalls()
        r.register(self._decodes)
        self._engines = _EngineGauges()
        r.register(self._engines)
        self.prompt_tps = Gauge(
            "llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s.", registry=r
        )
        self.predicted_tps = Gauge(
            "llamacpp:predicted_tokens_seconds",
            "Average generation throughput in tokens/s.",
            registry=r,
        )
        self.processing = Gauge(
            "llamacpp:requests_processing", "Number of requests processing.", registry=r
        )
        labels = ["model", "key_id"]
        self.key_prompt = Counter(
            "llm_node_prompt_tokens", "Prompt tokens by model and API key id.", labels, registry=r
        )
        self.key_cached = Counter(
            "llm_node_cached_tokens",
            "Cached prompt tokens by model and key id.",
            labels,
            registry=r,
        )
        self.key_completion = Counter(
            "llm_node_completion_tokens",
            "Completion tokens by model and API key id.",
            labels,
            registry=r,
        )
        self.requests = Counter(
            "llm_node_requests",
            "Finished requests by model, endpoint and meter status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.endpoint_prompt = Counter(
            "llm_node_endpoint_prompt_tokens",
            "Prompt tokens by model and endpoint (each API dialect is its own endpoint).",
            ["model", "endpoint"],
            registry=r,
        )
        self.endpoint_completion = Counter(
            "llm_node_endpoint_completion_tokens",
            "Completion tokens by model and endpoint.",
            ["model", "endpoint"],
            registry=r,
        )
        self.ttft = Histogram(
            "llm_node_time_to_first_token_seconds",
            "Time from admission to the first completion text.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "llm_node_request_duration_seconds",
            "Time from admission to the last token (or embedding).",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._lock = threading.Lock()
        # running sums for the throughput gauges: tokens and seconds of prompt / generation
        self._prompt = [0, 0.0]
        self._predicted = [0, 0.0]

    def watch_export(self, source: Callable[[], ExportStatus]) -> None:
        """Fleet mode: the export's lag, last success and failures, read at every scrape."""
        self.registry.register(_ExportGauges(source))

    def count_decodes(self, source: Callable[[], int]) -> None:
        """Where `llamacpp:n_decode_total` comes from: the engines' llama_decode calls."""
        self._decodes.source = source

    def watch_engines(self, source: Callable[[], EngineStats]) -> None:
        """Where the slot and KV cache gauges come from."""
        self._engines.source = source

    # UsageObserver ---------------------------------------------------------------------------

    def started(self, model: str) -> None:
        self.processing.inc()

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

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
    ) -> None:
        self.processing.dec()
        self.prompt_tokens.inc(counts.prompt_tokens - counts.cached_tokens)
        self.prompt_cached.inc(counts.cached_tokens)
        self.endpoint_prompt.labels(model, endpoint).inc(counts.prompt_tokens)
        self.endpoint_completion.labels(model, endpoint).inc(counts.completion_tokens)
        self.tokens_predicted.inc(counts.completion_tokens)
        prefill = prefill_seconds if prefill_seconds is not None else seconds
        decode = max(seconds - prefill, 0.0) if counts.completion_tokens else 0.0
        self.prompt_seconds.inc(prefill)
        self.predicted_seconds.inc(decode)
        self.key_prompt.labels(model, key_id).inc(counts.prompt_tokens)
        self.key_cached.labels(model, key_id).inc(counts.cached_tokens)
        self.key_completion.labels(model, key_id).inc(counts.completion_tokens)
        self.requests.labels(model, endpoint, status).inc()
        self.latency.labels(model, endpoint).observe(seconds)
        with self._lock:
            self._prompt[0] += counts.prompt_tokens - counts.cached_tokens
            self._prompt[1] += prefill
            self._predicted[0] += counts.completion_tokens
            self._predicted[1] += decode
            if self._prompt[1] > 0:
                self.prompt_tps.set(self._prompt[0] / self._prompt[1])
            if self._predicted[1] > 0:
                self.predicted_tps.set(self._predicted[0] / self._predicted[1])

    # route -----------------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DecodeCalls(Collector):
    """`llamacpp:n_decode_total`, read from `source` at every scrape (0 until it is set)."""

    def __init__(self) -> None:
        self.source: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "llamacpp:n_decode", "Number of llama_decode() calls.", value=self.source()
        )


class _EngineGauges(Collector):
    """llama-server's slot and KV cache metrics, read from `source` at every scrape."""

    def __init__(self) -> None:
        self.source: Callable[[], EngineStats] = EngineStats

    def collect(self) -> Iterator[Metric]:
        s = self.source()
        per_decode = s.busy_slot_decodes / s.decode_calls if s.decode_calls else 0.0
        yield GaugeMetricFamily(
            "llamacpp:n_busy_slots_per_decode",
            "Average number of busy slots per llama_decode() call.",
            value=per_decode,
        )
        yield GaugeMetricFamily(
            "llamacpp:n_tokens_max", "Largest observed n_tokens.", value=s.n_tokens_max
        )
        yield GaugeMetricFamily(
            "llamacpp:requests_deferred",
            "Requests waiting for a slot or KV room.",
            value=s.requests_waiting,
        )
        yield GaugeMetricFamily(
            "llamacpp:kv_cache_tokens", "KV-cache tokens (every slot).", value=s.kv_tokens
        )
        ratio = s.kv_tokens / s.kv_capacity if s.kv_capacity else 0.0
        yield GaugeMetricFamily(
            "llamacpp:kv_cache_usage_ratio",
            "KV-cache usage. 1 means 100 percent usage.",
            value=ratio,
        )


class _ExportGauges(Collector):
    """`llm_node_fleet_*`: the fleet export as the exporter sees it now."""

    def __init__(self, source: Callable[[], ExportStatus]) -> None:
        self.source = source

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no scrape at registration

    def collect(self) -> Iterator[Metric]:
        s = self.source()
        yield GaugeMetricFamily(
            "llm_node_fleet_db_up", "1 while the fleet PostgreSQL answers.", value=int(s.up)
        )
        yield GaugeMetricFamily(
            "llm_node_fleet_export_lag_rows",
            "Final meter rows not yet in the fleet database.",
            value=s.lag_rows,
        )
        yield GaugeMetricFamily(
            "llm_node_fleet_export_lag_seconds",
            "How long the oldest row not yet exported has waited.",
            value=s.lag_seconds,
        )
        yield GaugeMetricFamily(
            "llm_node_fleet_export_last_success_timestamp_seconds",
            "Unix time of the last complete export pass (0: none yet).",
            value=s.last_success or 0,
        )
        yield CounterMetricFamily(
            "llm_node_fleet_export_failures",
            "Export passes that failed (each is retried).",
            value=s.failures,
        )


async def metrics(request: Request) -> Response:
    node_metrics: NodeMetrics = request.app.state.metrics
    return Response(node_metrics.render(), media_type=CONTENT_TYPE_LATEST)
