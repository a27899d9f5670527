"""Prometheus metrics of the stream workers (exported by `cdcflow worker` when `CDCFLOW_WORKER_METRICS_PORT` is set).

`cdcflow_events_total{stage="applied"|"dead_lettered", source=<read model>}` shares its name with the tailer's.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from cdc.metrics import EVENTS

__all__ = ["EVENTS", "SINK_RETRIES", "SINK_WAITING"]

SINK_RETRIES = Counter(
    "cdcflow_sink_retries",
    "Sink calls that failed and are retried, by read model and cause (unavailable, refused, unexpected).",
    ["read_model", "cause"],
)
SINK_WAITING = Gauge(
    "cdcflow_sink_waiting",
    "1 while the read model's writes wait on its sink for this cause (unavailable, refused, unexpected).",
    ["read_model", "cause"],
)
