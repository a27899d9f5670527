"""Prometheus metrics of the tailer, names shared with the stream workers (`cdcflow_events_total{stage}`), and
the HTTP exporter of every long-running process (`/metrics`, `/healthz`)."""

from __future__ import annotations

import json
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
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

#: What a process answers `/healthz` from: the reasons it is unhealthy (none: healthy).
HealthCheck = Callable[[], list[str]]


class Exporter:
    """The HTTP endpoint of a long-running process: Prometheus `/metrics` (every other path too, as
    prometheus_client serves it) and `/healthz`: 200 `{"status": "ok"}`, or 503 `{"status": "failing",
    "reasons": [...]}` when `health()` names reasons (or fails itself)."""

    def __init__(self, host: str, port: int, health: HealthCheck | None = None) -> None:
        self.health = health
        metrics = make_wsgi_app(REGISTRY)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                status, body = self._healthz()
                start_response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                                        ("Content-Length", str(len(body)))])
                return [body]
            result: Iterable[bytes] = metrics(environ, start_response)
            return result

        self.server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
        self.port = int(self.server.server_port)
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-exporter", daemon=True)
        self._thread.start()
        get_logger("cdc.metrics").info("metrics_exporter_listening", host=host, port=self.port)

    def _healthz(self) -> tuple[str, bytes]:
        try:
            reasons = self.health() if self.health is not None else []
        except Exception as exc:  # a check that cannot tell is a failing check
            reasons = [f"health check failed: {type(exc).__name__}: {exc}"]
        if not reasons:
            return "200 OK", b'{"status": "ok"}'
        return "503 Service Unavailable", json.dumps({"status": "failing", "reasons": reasons}).encode()

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def start_exporter(port: int, host: str = "127.0.0.1", health: HealthCheck | None = None) -> Exporter | None:
    """Serve `/metrics` and `/healthz` on `host:port` (0: no exporter, None)."""
    if port <= 0:
        return None
    return Exporter(host, port, health)
