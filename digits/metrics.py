"""Prometheus metrics of one service instance (its own registry, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Counters the worker loop and responders update; rendered at /metrics."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        labels = ["service", "consumer"]
        self.handled = Counter(
            "digits_messages_handled",
            "Messages handled and acked",
            labels,
            registry=self.registry,
        )
        self.failed = Counter(
            "digits_messages_failed",
            "Messages whose handler failed, by outcome (nak or term)",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self.redelivered = Counter(
            "digits_messages_redelivered",
            "Messages received with a delivery count above one",
            labels,
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "digits_messages_dead_lettered",
            "Messages sent to the dead-letter stream",
            labels,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "digits_messages_in_flight",
            "Messages being handled now",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "digits_handler_seconds",
            "Handler latency in seconds",
            labels,
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600),
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def total(self, counter: Counter | Gauge) -> int:
        """Sum of a counter or gauge over all its label sets (for heartbeats)."""
        total = 0.0
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_created"):
                    continue
                total += sample.value
        return int(total)
