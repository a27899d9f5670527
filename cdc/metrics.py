"""Prometheus metrics of the tailer; names shared with the stream workers (`cdcflow_events_total{stage}`)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from cdc.logs import get_logger

EVENTS = Counter(
    "cdcflow_events",
    "Events by pipeline stage (tailer: read, forwarded, catchup, dead_lettered).",
    ["stage", "source"],
)
BATCH_SIZE = Histogram(
    "cdcflow_tailer_batch_size",
    "Events acknowledged by Kafka per checkpoint commit.",
    ["source"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
LATENCY = Histogram(
    "cdcflow_outbox_to_kafka_latency_seconds",
    "Outbox commit (change-event wall time) to Kafka acknowledgement.",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CHECKPOINT_AGE = Gauge(
    "cdcflow_tailer_checkpoint_age_seconds", "Seconds since the last checkpoint write.", ["source"]
)
CHECKPOINT_TIME = Gauge(
    "cdcflow_tailer_checkpoint_timestamp_seconds", "Unix time of the last checkpoint write.", ["source"]
)
BACKLOG = Gauge("cdcflow_outbox_unpublished", "Unpublished outbox events (backlog).", ["source"])
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
