"""The Faust side: one app (= one consumer group) per read model, one agent that batches into the sink.

Faust gives each App a single consumer group (its id), so each read model runs in its own app and, from the
command line, its own process (`cdcflow worker` without `--read-model` starts one process per read model).

Commit discipline: the agent iterates `stream.noack_take(...)`, which never acks by itself; it acks the events
of a batch only after `BatchProcessor.process` returned, i.e. after every event was written to the sink or to
the dead-letter topic. Faust commits only acked offsets, so nothing is committed past an unwritten event, even
when the worker is stopped or killed mid-retry (a plain `take()` acks in a `finally`, on the way out too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import faust

from cdc.kafka import ensure_topics, faust_credentials
from cdc.logs import get_logger
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from sinks.registry import read_model
from streams.dlq import dead_letter_headers
from streams.processor import Backoff, BatchProcessor, DeadLetter, RawRecord

log = get_logger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Which read model a worker keeps, from which topic, in which consumer group and sink namespace."""

    read_model: str
    topic: str
    group_id: str
    namespace: str

    @classmethod
    def of(
        cls,
        settings: Settings,
        name: str,
        *,
        topic: str | None = None,
        group_id: str | None = None,
        namespace: str | None = None,
    ) -> WorkerSpec:
        """The spec of read model `name`, defaults from the registry and settings."""
        rm = read_model(name)
        return cls(
            name, topic or rm.topic, group_id or rm.consumer_group(), namespace or settings.sink_namespace
        )


class FaustDeadLetterPublisher:
    """Publishes dead letters with the app's producer and waits for the broker's acknowledgement."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        producer = await self.app.maybe_start_producer()
        futures = []
        for letter in letters:
            r = letter.record
            headers = dead_letter_headers(letter)
            fut = await producer.send(dlq_topic(r.topic), r.key, r.value, None, None, headers)
            futures.append(fut)
        await asyncio.gather(*futures)


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    if not raw:
        return ()
    items = raw.items() if isinstance(raw, Mapping) else raw
    return tuple((str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in items)


def raw_record(event: Any) -> RawRecord:
    """A Faust event's message as a RawRecord (bytes untouched)."""
    m = event.message
    return RawRecord(
        topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, value=m.value,
        headers=_headers(m.headers), timestamp=m.timestamp,
    )


def broker_urls(settings: Settings) -> list[str]:
    """Faust broker URLs from the bootstrap servers."""
    return [f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap_servers.split(",") if hp.strip()]


def create_app(settings: Settings, spec: WorkerSpec) -> tuple[faust.App, BatchProcessor]:
    """The Faust app of one read model (its consumer group), with its agent and processor."""
    app = faust.App(
        spec.group_id,
        broker=broker_urls(settings),
        broker_credentials=faust_credentials(settings),
        store="memory://",
        autodiscover=False,
        web_enabled=settings.worker_web_port is not None,
        web_port=settings.worker_web_port or 6066,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        broker_session_timeout=settings.worker_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout / 4),
        broker_commit_interval=1.0,
        # On stop/rebalance, do not wait for a stuck batch (not acked: the next owner redoes it).
        stream_wait_empty=False,
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
    )
    sink = read_model(spec.read_model).sink(settings, spec.namespace)
    processor = BatchProcessor(
        sink,
        FaustDeadLetterPublisher(app),
        Backoff(settings.sink_retry_initial, settings.sink_retry_max),
    )
    source = app.topic(spec.topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    bound = log.bind(read_model=spec.read_model, topic=spec.topic, group_id=spec.group_id)

    async def consume(stream: Any) -> None:
        batches = stream.noack_take(settings.stream_batch_size, within=settings.stream_batch_within)
        async for events in batches:
            records = [raw_record(e) for e in events]
            result = await processor.process(records)
            for event in events:
                await stream.ack(event)
            bound.debug("batch_acked", events=len(events), written=result.written, dead=len(result.dead),
                        last_offset=records[-1].offset, partition=records[-1].partition)

    app.agent(source, name=f"{spec.read_model}_agent")(consume)

    return app, processor


def prepare_topics(settings: Settings, spec: WorkerSpec, attempts: int = 10) -> None:
    """Create the source and dead-letter topics (Faust does not create source topics), retrying briefly."""
    for attempt in range(1, attempts + 1):
        try:
            ensure_topics(settings, [spec.topic, dlq_topic(spec.topic)])
            return
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning("ensure_topics_failed", error=str(exc), attempt=attempt)
            time.sleep(min(0.5 * attempt, 3.0))


def run_worker(settings: Settings, spec: WorkerSpec) -> NoReturn:
    """Run one read model's worker in this process until stopped (SIGTERM/SIGINT)."""
    prepare_topics(settings, spec)
    app, processor = create_app(settings, spec)
    log.info("worker_starting", read_model=spec.read_model, topic=spec.topic, group_id=spec.group_id,
             namespace=spec.namespace)
    worker = faust.Worker(
        app, loglevel=settings.log_level, override_logging=False, redirect_stdouts=False, quiet=True
    )
    try:
        worker.execute_from_commandline()
    finally:
        processor.close()
