"""Helpers of the observability tests: a deployment (its own Kafka prefix, databases and namespace) with an
in-process tailer and an order_view worker process, reading a topic, scraping an exporter."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from cdc.kafka import ensure_topics, kafka_config
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from cdc.tailer import Tailer
from sinks.order_view import OrderViewSink
from tests.helpers import free_port, unique, wait_for

REPO = Path(__file__).resolve().parent.parent

Document = dict[str, Any]


@dataclass
class Deployment:
    """One deployment of the pipeline sharing the broker: its prefix, tailer, order_view worker and read model."""

    prefix: str
    settings: Settings
    tailer: Tailer
    worker: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    sink: OrderViewSink

    @property
    def orders_topic(self) -> str:
        return self.settings.kafka_topic("orders")

    @property
    def database(self) -> str:
        return f"{self.prefix}_order_service"

    def writer(self, client: MongoClient[Document]) -> OutboxWriter:
        return OutboxWriter(client, self.database)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def deployment_settings(settings: Settings, prefix: str) -> Settings:
    """Settings of a deployment named `prefix`: Kafka names `<prefix>.…`, its own databases and namespace."""
    return settings.model_copy(update={
        "kafka_topic_prefix": f"{prefix}.", "kafka_group_prefix": None, "service_db_prefix": f"{prefix}_",
        "tailer_databases": [f"{prefix}_order_service"], "tailer_state_database": f"{prefix}_tailer",
        "sink_namespace": prefix,
    })


def spawn_worker(settings: Settings, read_model: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`cdcflow worker --read-model NAME` with only environment settings (no --topic/--group-id); stdout and
    stderr (the logs, and the spans of the console exporter) to `log_path`."""
    full_env = {**os.environ, "CDCFLOW_LOG_JSON": "true", "CDCFLOW_LOG_LEVEL": "INFO",
                "CDCFLOW_STREAM_BATCH_WITHIN": "0.2", "CDCFLOW_SINK_RETRY_MAX": "1.0",
                "CDCFLOW_WORKER_SESSION_TIMEOUT": "8", **env}
    # In the checkout: the settings read its `.env` (the servers' ports).
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "cli", "worker", "--read-model", read_model], cwd=REPO,
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)


def deploy(settings: Settings, client: MongoClient[Document], log_dir: Path, **env: str) -> Deployment:
    """Start a deployment: topics, an in-process tailer, an order_view worker configured by its environment."""
    prefix = unique("dep")
    s = deployment_settings(settings, prefix)
    ensure_topics(s, [s.kafka_topic("orders"), dlq_topic(s.kafka_topic("orders"))])
    tailer = Tailer(s, client=client).start()
    port = free_port()
    log_path = log_dir / f"worker-{prefix}.log"
    worker = spawn_worker(s, "order_view", log_path, {
        "CDCFLOW_KAFKA_TOPIC_PREFIX": s.kafka_topic_prefix, "CDCFLOW_SINK_NAMESPACE": prefix,
        "CDCFLOW_WORKER_METRICS_PORT": str(port), **env,
    })
    return Deployment(prefix, s, tailer, worker, port, log_path, OrderViewSink(s, prefix))


def undeploy(d: Deployment, client: MongoClient[Document]) -> None:
    d.tailer.stop(30)
    stop(d.worker)
    with contextlib.suppress(Exception):
        d.sink.drop()
    d.sink.close()
    for name in (d.database, d.settings.tailer_state_database):
        client.drop_database(name)
    # Faust leaves `<app id>-data` in its working directory (the checkout).
    shutil.rmtree(REPO / f"{d.settings.kafka_group('cdcflow.order_view')}-data", ignore_errors=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of `topic` now (to its high watermarks)."""
    consumer = Consumer(kafka_config(settings, **{"group.id": unique("read"), "enable.auto.commit": False,
                                                  "enable.partition.eof": True}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in meta.partitions}
        todo = {p for p, end in ends.items() if end > 0}
        if not todo:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        out = []
        while todo:
            for msg in consumer.consume(500, timeout=1.0):
                error, partition, offset = msg.error(), msg.partition(), msg.offset()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        todo.discard(partition)
                        continue
                    raise RuntimeError(str(error))
                out.append(msg)
                if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                    todo.discard(partition)
        return out
    finally:
        consumer.close()


def headers_of(msg: Any) -> dict[str, bytes]:
    return {k: v for k, v in msg.headers() or ()}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exporter: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`."""
    for (n, lbls), value in samples.items():
        if n == name and all(dict(lbls).get(k) == v for k, v in labels.items()):
            return value
    return None


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of `/healthz`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def failing_health(port: int, timeout: float) -> dict[str, Any]:
    """The body of `/healthz` once it answers 503 (fails the test at the deadline)."""

    def failing() -> dict[str, Any] | None:
        status, body = healthz(port)
        return body if status == 503 else None

    return wait_for(failing, timeout, what=f"/healthz on port {port} failing")


def console_spans(text: str) -> list[dict[str, Any]]:
    """The spans the console exporter printed (one JSON object per line) among a process's other output."""
    spans = []
    for line in text.splitlines():
        start = line.find('{"name"')
        if start < 0:
            continue
        try:
            data = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(data, dict) and "context" in data:
            spans.append(data)
    return spans


def exporter_up(port: int) -> bool:
    try:
        healthz(port)
        return True
    except (urllib.error.URLError, OSError):
        return False
