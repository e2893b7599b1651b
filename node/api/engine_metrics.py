"""`/metrics` gauges and counters the engines keep themselves: the host-memory prompt cache.

Read from the pool at every scrape, per generation model (`llm_node_prompt_cache_*`). Kept apart
from `node.api.metrics` (the request-level counters) so that either can change alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.engine.interface import PromptCacheStats

StatsSource = Callable[[], Mapping[str, PromptCacheStats]]

# (metric suffix, help, counter?, field)
_FIELDS = (
    ("lookups", "Admissions that searched the prompt cache.", True, "lookups"),
    ("hits", "Admissions whose KV was restored from the prompt cache.", True, "hits"),
    ("tokens_restored", "Prompt tokens restored from the prompt cache.", True, "tokens_restored"),
    ("evictions", "Prompt cache entries dropped to fit newer ones.", True, "evictions"),
    ("refused", "Restores llama.cpp refused for lack of KV room.", True, "refused"),
    ("bytes", "Bytes of KV state the prompt cache holds.", False, "bytes_held"),
    ("entries", "Token sequences the prompt cache holds.", False, "entries"),
    ("budget_bytes", "The prompt cache's byte budget (0: off).", False, "budget_bytes"),
)


class PromptCacheCollector(Collector):
    def __init__(self, source: StatsSource) -> None:
        self.source = source

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no scrape at registration (the pool may still be loading)

    def collect(self) -> Iterator[Metric]:
        stats = self.source()
        for suffix, text, counter, attr in _FIELDS:
            name = f"llm_node_prompt_cache_{suffix}"
            family = (
                CounterMetricFamily(name, text, labels=["model"])
                if counter
                else GaugeMetricFamily(name, text, labels=["model"])
            )
            for model, s in sorted(stats.items()):
                family.add_metric([model], getattr(s, attr))
            yield family


def watch_prompt_caches(registry: CollectorRegistry, source: StatsSource) -> None:
    """Register the engines' own metrics in `registry`, read from `source` when scraped."""
    registry.register(PromptCacheCollector(source))
