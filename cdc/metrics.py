"""Prometheus metrics of the tailer; names shared with the stream workers (`cdcflow_events_total{stage}`)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from cdc.logs import get_logger

EVENTS = Counter(
    "cdcflow_events",
    "Events by pipeline stage (tailer: read, forwarded, catchup, dead_lettered, pruned).",
    ["stage", "source"],
)
BATCH_SIZE = Histogram(
    "cdcflow_tailer_batch_size",
    "Events acknowledged by Kafka per checkpoint commit.",
    ["source"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)


class BatchHistogram(Collector):
    """A histogram with one label, fed a batch of observations at a time.

    The tailer observes every event's latency; prometheus_client's Histogram takes a lock per observation
    and per bucket, which costs more than forwarding the event. This one bins a batch with bisect and
    merges it under one lock, and exports the same text format."""

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = sorted(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._series: dict[str, tuple[list[int], list[float]]] = {}
        REGISTRY.register(self)

    def observe_many(self, label_value: str, values: Iterable[float]) -> None:
        """Add every value of `values` to the series `label_value`."""
        bounds = self.bounds
        counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            series = self._series.setdefault(label_value, ([0] * len(counts), [0.0]))
            for i, count in enumerate(counts):
                series[0][i] += count
            series[1][0] += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            snapshot = {k: (list(c), s[0]) for k, (c, s) in self._series.items()}
        for label_value, (counts, total) in snapshot.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            family.add_metric([label_value], buckets, total)
        yield family


LATENCY = BatchHistogram(
    "cdcflow_outbox_to_kafka_latency_seconds",
    "Outbox commit (change-event wall time) to Kafka acknowledgement.",
    "source",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CHECKPOINT_TIME = Gauge(
    "cdcflow_tailer_checkpoint_timestamp_seconds", "Unix time of the last checkpoint write.", ["source"]
)
LAG = Gauge(
    "cdcflow_tailer_lag_seconds",
    "How far behind the outbox the tailer reads: now minus the commit time of the last change read (0 idle).",
    ["source"],
)
IN_FLIGHT = Gauge("cdcflow_tailer_in_flight", "Events sent to Kafka and not yet acknowledged.", ["source"])
LEADER = Gauge("cdcflow_tailer_leader", "1 while this tailer holds the outbox's lease.", ["source"])
RESTARTS = Counter(
    "cdcflow_tailer_stream_restarts", "Change-stream (re)opens by reason.", ["source", "reason"]
)

_server_lock = threading.Lock()
_server_port: int | None = None


def serve_metrics(port: int) -> None:
    """Start the Prometheus HTTP exporter on `port` (once per process; 0 disables it)."""
    global _server_port
    if port <= 0:
        return
    with _server_lock:
        if _server_port is not None:
            return
        start_http_server(port, addr="127.0.0.1")
        _server_port = port
    get_logger("cdc.metrics").info("metrics exporter listening", port=port)
