"""Per-plugin Prometheus metrics of the plugin runner, on the worker's registry."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PluginMetrics"]


class PluginMetrics:
    """Per-plugin metrics, on the worker's registry (so they appear on its /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.events = Counter(
            "emostream_plugin_events",
            "events handled per plugin, by outcome (delivered, dead_lettered, duplicate)",
            ["plugin", "outcome"],
            registry=r,
        )
        self.attempt_failures = Counter(
            "emostream_plugin_attempt_failures", "failed delivery attempts per plugin (retried or not)", ["plugin"], registry=r
        )
        self.delivery_seconds = Histogram(
            "emostream_plugin_delivery_seconds",
            "dispatch -> done per plugin, retries included",
            ["plugin"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.pending_events = Gauge(
            "emostream_plugin_pending_events", "events queued or in flight per plugin", ["plugin"], registry=r
        )
        self.invalid_records = Counter(
            "emostream_plugin_invalid_records", "records on the emotions topic that are not an EmotionEvent", registry=r
        )
