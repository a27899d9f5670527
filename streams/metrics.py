"""Prometheus metrics of the stream workers (exported by `cdcflow worker` when `CDCFLOW_WORKER_METRICS_PORT` is set).

`cdcflow_events_total{stage="consumed"|"applied"|"dead_lettered", source=<read model>}` shares its name with the
tailer's (`stage="read"|"forwarded"|...`, `source=<outbox>`), so one query follows events across the pipeline.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from cdc.metrics import EVENTS

__all__ = [
    "BATCH_SIZE", "EVENTS", "LAG", "LAG_SECONDS", "SINK_RETRIES", "SINK_WAITING", "SINK_WAIT_SECONDS",
    "SINK_WRITE_SECONDS",
]

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
SINK_WAIT_SECONDS = Gauge(
    "cdcflow_sink_wait_seconds",
    "How long the read model's writes have been retried without success (0: not waiting).",
    ["read_model"],
)
SINK_WRITE_SECONDS = Histogram(
    "cdcflow_sink_write_seconds",
    "Duration of one sink write call (a batch, or one event while a rejected batch is isolated), failed or not.",
    ["read_model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "cdcflow_worker_batch_size",
    "Records per batch handed to the sink (written or dead-lettered, then committed).",
    ["read_model"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
LAG = Gauge(
    "cdcflow_worker_lag",
    "Records of an assigned partition not applied yet: its end offset minus the next offset to apply.",
    ["read_model", "partition"],
)
LAG_SECONDS = Gauge(
    "cdcflow_worker_lag_seconds",
    "Now minus the Kafka timestamp of the last record applied (the tailer's send time); 0 when caught up.",
    ["read_model"],
)
