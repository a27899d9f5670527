"""The Faust side: one app (= one consumer group) per read model, one agent that batches into the sink.

Faust gives each App a single consumer group (its id), so each read model runs in its own app and, from the
command line, its own process (`cdcflow worker` without `--read-model` starts one process per read model).

Commit discipline: the agent iterates `stream.noack_take(...)`, which never acks by itself; it acks the events
of a batch only after `BatchProcessor.process` returned, i.e. after every event was written to the sink or to
the dead-letter topic. Faust commits only acked offsets, so nothing is committed past an unwritten event, even
when the worker is stopped or killed mid-retry (a plain `take()` acks in a `finally`, on the way out too).

A crashed agent ends the process. Faust's default agent supervisor (mode's OneForOneSupervisor) logs the crash
and starts a new actor on the same stream: the records the dead actor held were never acked, so Faust never
commits past them again, and the read model silently stops advancing while the process looks alive. The agent
is therefore supervised by mode's `CrashingSupervisor`, which marks the whole worker crashed: the worker stops
and `execute_from_commandline` re-raises the crash. `run_worker` turns that into exit status
`EXIT_AGENT_CRASHED`, and a watchdog ends the process with it if the shutdown takes longer than
`worker_stop_timeout`. A supervisor (`cdcflow worker`, systemd, Kubernetes) then restarts it, and the
uncommitted records are consumed again.

Observability: with `worker_metrics_port`, the worker serves Prometheus metrics (streams/metrics.py) and
`/healthz`, which fails while the sink has been waited on for longer than `worker_health_max_sink_wait_seconds`
(an agent that crashes ends the process instead, see above). With tracing on (cdc/tracing.py), each record that
carries a `traceparent` is applied under a CONSUMER span that continues the trace of the request that wrote it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import faust
from mode.supervisors import CrashingSupervisor

from cdc import tracing
from cdc.kafka import ensure_topics, faust_credentials
from cdc.logs import get_logger
from cdc.metrics import start_exporter
from cdc.retry import Backoff, retry_call
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from sinks.registry import read_model
from streams.dlq import dead_letter_headers
from streams.metrics import BATCH_SIZE, EVENTS, LAG, LAG_SECONDS, SINK_WAIT_SECONDS
from streams.processor import BatchProcessor, BatchResult, DeadLetter, RawRecord

log = get_logger(__name__)

#: Exit status of a worker whose agent crashed (EX_SOFTWARE: an internal error).
EXIT_AGENT_CRASHED = 70


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
        """The spec of read model `name`, defaults from the registry and settings (the deployment's topic and
        group prefixes applied to the defaults; `topic` and `group_id` are taken as they are)."""
        rm = read_model(name)
        return cls(
            name, topic or settings.kafka_topic(rm.topic), group_id or settings.kafka_group(rm.consumer_group()),
            namespace or settings.sink_namespace,
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


class CrashWatch:
    """Remembers an agent crash; once crashed, the process ends within `timeout` seconds whatever happens."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reason: BaseException | None = None

    def crashed(self, agent: str, exc: BaseException) -> None:
        """The agent is about to die of `exc`: log it, and make sure the process ends."""
        if self.reason is None:
            self.reason = exc
            log.critical("agent_crashed", agent=agent, error=repr(exc), exit_status=EXIT_AGENT_CRASHED,
                         exc_info=exc)
            timer = threading.Timer(self.timeout, self._force_exit)
            timer.daemon = True
            timer.start()

    def _force_exit(self) -> None:
        log.critical("agent_crashed_shutdown_timeout", seconds=self.timeout, exit_status=EXIT_AGENT_CRASHED)
        os._exit(EXIT_AGENT_CRASHED)


def create_app(
    settings: Settings, spec: WorkerSpec, crash: CrashWatch | None = None
) -> tuple[faust.App, BatchProcessor]:
    """The Faust app of one read model (its consumer group), with its agent and processor."""
    crash = crash or CrashWatch(settings.worker_stop_timeout)
    faust_dir = settings.data_dir / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        spec.group_id,
        broker=broker_urls(settings),
        broker_credentials=faust_credentials(settings),
        store="memory://",
        # Faust's default is `<app id>-data` in the working directory: keep it with our other data instead.
        datadir=str(faust_dir / f"{spec.group_id}-data"),
        autodiscover=False,
        web_enabled=settings.worker_web_port is not None,
        web_port=settings.worker_web_port or 6066,
        web_bind=settings.worker_host,
        web_host=settings.worker_host,
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
        max_record_bytes=settings.stream_max_record_bytes,
    )
    source = app.topic(spec.topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    bound = log.bind(read_model=spec.read_model, topic=spec.topic, group_id=spec.group_id)

    agent_name = f"{spec.read_model}_agent"
    consumed = EVENTS.labels("consumed", spec.read_model)
    batch_size = BATCH_SIZE.labels(spec.read_model)
    lag_seconds = LAG_SECONDS.labels(spec.read_model)
    applied: dict[int, int] = {}  # partition -> next offset to apply

    async def consume(stream: Any) -> None:
        batches = stream.noack_take(settings.stream_batch_size, within=settings.stream_batch_within)
        try:
            async for events in batches:
                records = [raw_record(e) for e in events]
                consumed.inc(len(records))
                batch_size.observe(len(records))
                spans = _start_spans(records, spec.read_model) if tracing.enabled() else None
                result = await processor.process(records)
                if spans:
                    _end_spans(spans, result)
                for event in events:
                    await stream.ack(event)
                for r in records:
                    applied[r.partition] = r.offset + 1
                last = records[-1].timestamp
                lag_seconds.set(max(0.0, time.time() - last) if last else 0.0)
                bound.debug("batch_acked", events=len(events), written=result.written, dead=len(result.dead),
                            last_offset=records[-1].offset, partition=records[-1].partition)
        except Exception as exc:  # not CancelledError (a stop or a rebalance): that one is Faust's
            crash.crashed(agent_name, exc)
            raise

    app.agent(source, name=agent_name, supervisor_strategy=CrashingSupervisor)(consume)

    status = processor.status
    SINK_WAIT_SECONDS.labels(spec.read_model).set_function(
        lambda: max(0.0, time.time() - status.since) if status.waiting and status.since else 0.0
    )
    if settings.worker_metrics_port:
        app.timer(interval=LAG_INTERVAL_SECONDS, name=f"{spec.read_model}_lag")(
            _lag_probe(app, spec, applied, lag_seconds)
        )
    return app, processor


#: How often the worker measures its lag (one request for the end offsets of its partitions).
LAG_INTERVAL_SECONDS = 5.0


def _lag_probe(app: faust.App, spec: WorkerSpec, applied: dict[int, int], lag_seconds: Any) -> Any:
    """A timer that sets `cdcflow_worker_lag` for every assigned partition (end offset minus the next offset to
    apply), and `cdcflow_worker_lag_seconds` to 0 when nothing is left."""
    reported: set[int] = set()

    async def probe() -> None:
        consumer = app.consumer
        tps = sorted((tp for tp in consumer.assignment() if tp.topic == spec.topic), key=lambda tp: tp.partition)
        ends = await consumer.highwaters(*tps) if tps else {}
        total = 0
        for tp in tps:
            end = ends.get(tp)
            position = applied.get(tp.partition)
            if position is None:  # nothing applied since the assignment: where the consumer stands
                position = await consumer.position(tp)
            if end is None or position is None:
                continue
            lag = max(0, int(end) - int(position))
            total += lag
            LAG.labels(spec.read_model, str(tp.partition)).set(lag)
        current = {tp.partition for tp in tps}
        for gone in reported - current:  # revoked by a rebalance: another worker reports it now
            LAG.remove(spec.read_model, str(gone))
            applied.pop(gone, None)
        reported.clear()
        reported.update(current)
        if total == 0:
            lag_seconds.set(0.0)

    return probe


def _start_spans(records: list[RawRecord], read_model: str) -> list[tuple[RawRecord, Any]]:
    """A CONSUMER span per record that carries a traceparent, child of it (the tailer's span)."""
    spans = []
    for r in records:
        parent = tracing.parse(tracing.header(r.headers))
        if parent is None:
            continue
        spans.append((r, tracing.start_span(f"{r.topic} process", parent=parent, kind="CONSUMER", attributes={
            "messaging.system": "kafka", "messaging.operation.type": "process",
            "messaging.destination.name": r.topic, "messaging.destination.partition.id": str(r.partition),
            "messaging.kafka.offset": r.offset, "messaging.batch.message_count": len(records),
            "cdcflow.read_model": read_model,
        })))
    return spans


def _end_spans(spans: list[tuple[RawRecord, Any]], result: BatchResult) -> None:
    dead = {(d.record.partition, d.record.offset): d.reason for d in result.dead}
    for record, span in spans:
        reason = dead.get((record.partition, record.offset))
        if reason is not None:
            span.set_attribute("cdcflow.dead_letter", True)
            tracing.fail(span, reason)
        span.end()


def prepare_topics(settings: Settings, spec: WorkerSpec, attempts: int = 10) -> None:
    """Create the source and dead-letter topics (Faust does not create source topics), retrying briefly."""
    retry_call(
        lambda: ensure_topics(settings, [spec.topic, dlq_topic(spec.topic)]), attempts=attempts,
        initial=0.5, maximum=3.0,
        on_retry=lambda exc, attempt: log.warning("ensure_topics_failed", error=str(exc), attempt=attempt),
    )


def run_worker(settings: Settings, spec: WorkerSpec) -> NoReturn:
    """Run one read model's worker in this process until stopped (SIGTERM/SIGINT: exit 0).

    Exits with EXIT_AGENT_CRASHED when its agent crashed."""
    prepare_topics(settings, spec)
    tracing.setup(settings, f"cdcflow-worker-{spec.read_model}")
    crash = CrashWatch(settings.worker_stop_timeout)
    app, processor = create_app(settings, spec, crash)
    start_exporter(settings.worker_metrics_port, settings.worker_host, worker_health(settings, spec, processor))
    log.info("worker_starting", read_model=spec.read_model, topic=spec.topic, group_id=spec.group_id,
             namespace=spec.namespace, metrics_port=settings.worker_metrics_port or None)
    worker = faust.Worker(
        app, loglevel=settings.log_level, override_logging=False, redirect_stdouts=False, quiet=True
    )
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if crash.reason is not None:
            raise SystemExit(EXIT_AGENT_CRASHED) from crash.reason
        raise
    finally:
        processor.close()
        tracing.shutdown()


def worker_health(settings: Settings, spec: WorkerSpec, processor: BatchProcessor) -> Callable[[], list[str]]:
    """What the worker's `/healthz` answers: failing while its sink has been waited on (down, refusing) for
    longer than `worker_health_max_sink_wait_seconds`."""
    limit = settings.worker_health_max_sink_wait_seconds

    def health() -> list[str]:
        status = processor.status
        if status.waiting and status.since is not None and time.time() - status.since > limit:
            return [
                f"sink of {spec.read_model} waited on for {time.time() - status.since:.0f}s (over {limit:g}s): "
                f"{status.cause}: {(status.last_error or '')[:300]}"
            ]
        return []

    return health
