"""`cdcflow demo`: the whole pipeline end to end on the local servers, with traffic, then the read models.

Servers up → services, tailer and workers as child processes → ~30 s of realistic traffic with a live
display → wait until every outbox event is on Kafka and every read model's consumer lag is 0 → print what was
produced, forwarded and applied, and samples from each read model → stop the pipeline (and the servers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException
from pymongo import MongoClient
from rich.console import Console
from rich.live import Live
from rich.table import Table
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from cdc.checkpoint import CheckpointStore
from cdc.kafka import ensure_topics, group_reader, topic_offsets
from cdc.mongo import mongo_client
from cdc.outbox import OUTBOX_COLLECTION
from cdc.schemas import TOPICS
from cdc.services import SERVICE_DATABASES
from cdc.settings import Settings
from cli.status import gather_status
from infra import stack
from infra.errors import StartError
from infra.pipeline import Pipeline
from sinks import queries
from sinks.registry import READ_MODELS

SERVICE_TOPICS = {"product": "inventory", "order": "orders", "clickstream": "clickstream"}


@dataclass
class Counts:
    """Kafka positions at one moment: topic ends, and each read model's committed consumer offsets."""

    topic_end: dict[str, int] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=dict)


@dataclass
class DemoReport:
    """What the demo did, per stage, and the samples it showed.

    `produced`: outbox inserts per service; `forwarded`: those Kafka acknowledged (created no later than the
    tailer's checkpointed watermark);
    `kafka_records`: records added per topic, which exceed `forwarded` by at-least-once duplicates (a tailer
    restart or catch-up scan re-sends, and the idempotent sinks absorb them); `applied`: records each read
    model's workers consumed and committed.
    """

    produced: dict[str, int]
    forwarded: dict[str, int]
    kafka_records: dict[str, int]
    applied: dict[str, int]
    load: dict[str, Any]
    samples: dict[str, Any]
    seconds_to_zero_lag: float


@retry(retry=retry_if_exception_type(KafkaException), stop=stop_after_attempt(10), wait=wait_fixed(1), reraise=True)
def _count(settings: Settings) -> Counts:
    counts = Counts()
    timeout = settings.status_timeout_seconds
    for topic in TOPICS:
        reader = group_reader(settings, "cdcflow.demo.probe")
        try:
            found = topic_offsets(reader, topic, timeout)
        finally:
            reader.close()
        counts.topic_end[topic] = sum(hi for _, hi in found[0].values()) if found else 0
    for name, model in READ_MODELS.items():
        reader = group_reader(settings, model.consumer_group())
        try:
            found = topic_offsets(reader, model.topic, timeout)
        finally:
            reader.close()
        counts.consumed[name] = sum(found[1].values()) if found else 0
    return counts


def _most_active(client: MongoClient[dict[str, Any]], service: str, event_type: str, field_path: str,
                 since: datetime) -> str | None:
    rows = list(client[SERVICE_DATABASES[service]][OUTBOX_COLLECTION].aggregate([
        {"$match": {"type": event_type, "occurred_at": {"$gte": since}}},
        {"$group": {"_id": f"${field_path}", "n": {"$sum": 1}}},
        {"$sort": {"n": -1, "_id": 1}},
        {"$limit": 1},
    ]))
    return str(rows[0]["_id"]) if rows else None


def _outbox_counts(settings: Settings, since: datetime) -> tuple[dict[str, int], dict[str, int]]:
    """(events written since `since`, of those the ones Kafka acknowledged) per service: an event is on Kafka once
    it was created no later than the newest event the tailer checkpointed (its watermark)."""
    produced: dict[str, int] = {}
    forwarded: dict[str, int] = {}
    client = mongo_client(settings)
    try:
        checkpoints = CheckpointStore(client[settings.tailer_state_database]["checkpoints"])
        for service, dbname in SERVICE_DATABASES.items():
            outbox = client[dbname][OUTBOX_COLLECTION]
            produced[service] = outbox.count_documents({"occurred_at": {"$gte": since}})
            watermark = checkpoints.load(f"{dbname}.{OUTBOX_COLLECTION}").watermark
            forwarded[service] = 0 if watermark is None else outbox.count_documents(
                {"occurred_at": {"$gte": since, "$lte": watermark}})
    finally:
        client.close()
    return produced, forwarded


def _samples(settings: Settings, since: datetime) -> dict[str, Any]:
    """The busiest customer's latest order and recommendations, the busiest visitor's clicks, top products."""
    samples: dict[str, Any] = {}
    client = mongo_client(settings)
    try:
        customer = _most_active(client, "order", "OrderCreated", "payload.customer_id", since)
        user = _most_active(client, "clickstream", "PageViewed", "aggregate_id", since)
        latest = client[SERVICE_DATABASES["order"]][OUTBOX_COLLECTION].find_one(
            {"type": "OrderCreated", "payload.customer_id": customer, "occurred_at": {"$gte": since}},
            sort=[("occurred_at", -1)],
        ) if customer else None
    finally:
        client.close()
    with queries.ReadModels(settings) as models:
        if latest is not None:
            samples["order"] = queries.order(models, latest["aggregate_id"])
        if customer is not None:
            samples["recommendations"] = queries.recommendations(models, customer, limit=5)
        if user is not None:
            samples["clicks"] = queries.clicks(models, user, day=queries.today())
        samples["top_products"] = queries.top_products(models, limit=5)
    return samples


def _counts_table(title: str, rows: Sequence[tuple[str, ...]], headers: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for h in headers:
        table.add_column(h)
    for r in rows:
        table.add_row(*r)
    return table


def run_demo(
    settings: Settings,
    *,
    duration: float = 30.0,
    rate: float = 40.0,
    keep_servers: bool = False,
    lag_timeout: float = 240.0,
    console: Console | None = None,
) -> DemoReport:
    """Run the pipeline end to end with traffic and print what a user wants to see."""
    from producers.load import LoadGenerator, Targets

    console = console or Console()
    with console.status("starting servers (the first run installs them: a few minutes)…"):
        statuses = stack.up(settings)
    console.print(_counts_table(
        "servers", [(s.name, s.endpoint, f"{s.seconds or 0:.1f}s") for s in statuses], ("server", "endpoint", "up in")
    ))
    ensure_topics(settings, TOPICS)
    before = _count(settings)
    since = datetime.now(UTC)
    pipeline = Pipeline(settings, settings.runtime_dir / "demo")
    try:
        with console.status("starting services, tailer and workers…"):
            pipeline.start_services()
            pipeline.start_tailer()
            pipeline.start_workers()
        generator = LoadGenerator(Targets.from_settings(settings), seed=7)
        generator.seed_catalogue()
        done = threading.Event()
        errors: list[BaseException] = []

        def drive() -> None:
            try:
                generator.run(rate, duration)
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        started = time.monotonic()
        threading.Thread(target=drive, name="demo-load", daemon=True).start()
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            while not done.wait(1.0):
                pipeline.check_alive()
                live.update(_progress(generator.report.ok, sum(generator.report.events.values()),
                                      generator.report.failed, time.monotonic() - started, duration))
        generator.close()
        if errors:
            raise errors[0]
        load = generator.report.as_dict()

        drained_at = time.monotonic()
        _wait_for_zero_lag(settings, pipeline, console, lag_timeout)
        after = _count(settings)
        produced, forwarded = _outbox_counts(settings, since)
        seconds_to_zero = time.monotonic() - drained_at
        samples = _samples(settings, since)
    finally:
        with console.status("stopping services, tailer and workers…"):
            pipeline.stop()
    report = DemoReport(
        produced=produced,
        forwarded=forwarded,
        kafka_records={t: after.topic_end[t] - before.topic_end[t] for t in TOPICS},
        applied={m: after.consumed[m] - before.consumed[m] for m in READ_MODELS},
        load=load,
        samples=samples,
        seconds_to_zero_lag=seconds_to_zero,
    )
    _print_report(console, report)
    if not keep_servers:
        with console.status("stopping servers…"):
            stack.down(settings)
        console.print("servers stopped (`cdcflow infra up` starts them again; data is kept in .data/)")
    return report


def _progress(ok: int, events: int, failed: int, elapsed: float, duration: float) -> Table:
    table = Table(title=f"traffic: {min(elapsed, duration):.0f}/{duration:.0f} s")
    for col in ("requests ok", "events written", "failed", "events/s"):
        table.add_column(col)
    table.add_row(str(ok), str(events), str(failed), f"{events / max(elapsed, 0.1):.1f}")
    return table


def _wait_for_zero_lag(settings: Settings, pipeline: Pipeline, console: Console, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with console.status("waiting until every event is forwarded and applied…") as spinner:
        while True:
            pipeline.check_alive()
            status = gather_status(settings)
            backlog = sum(o.backlog or 0 for o in status.outboxes)
            lag = sum(r.lag or 0 for r in status.read_models)
            errors = [o.error for o in status.outboxes if o.error] + [r.error for r in status.read_models if r.error]
            if backlog == 0 and lag == 0 and not errors:
                return
            spinner.update(f"waiting: outbox backlog {backlog}, consumer lag {lag}")
            if time.monotonic() > deadline:
                raise StartError("demo", f"lag did not reach 0 within {timeout:.0f}s (backlog {backlog}, lag {lag}, "
                                 f"errors {errors}); logs in {pipeline.log_dir}")
            time.sleep(1.0)


def _print_report(console: Console, report: DemoReport) -> None:
    console.print(_counts_table(
        "events: outbox → Kafka",
        [(s, t, str(report.produced[s]), str(report.forwarded[s]), str(report.kafka_records[t]))
         for s, t in SERVICE_TOPICS.items()],
        ("service", "topic", "produced", "forwarded (acked)", "Kafka records"),
    ))
    console.print(_counts_table(
        "events: Kafka → read models",
        [(m, rm.topic, str(report.applied[m])) for m, rm in READ_MODELS.items()],
        ("read model", "topic", "records applied"),
    ))
    console.print("Kafka records beyond the forwarded count are at-least-once re-sends; the sinks are idempotent.")
    console.print(f"traffic: {report.load['achieved_ok_rate']} requests/s ok, "
                  f"{report.load['achieved_event_rate']} events/s; lag reached 0 "
                  f"{report.seconds_to_zero_lag:.1f} s after the traffic stopped")
    s = report.samples
    if "order" in s:
        order = s["order"]
        items = ", ".join(f"{i['quantity']} x {i['product_id']} @ {i['unit_price']}" for i in order.get("items", []))
        fields = [(k, items if k == "items" else str(v)) for k, v in order.items() if k != "order_id"]
        console.print(_counts_table(f"order view: order {order['order_id']}", fields, ("field", "value")))
    if "recommendations" in s:
        rec = s["recommendations"]
        rows = [(r["product_id"], str(r["customers"])) for r in rec["recommendations"]] or [("(none yet)", "")]
        console.print(_counts_table(
            f"purchase graph: {rec['customer_id']} bought {', '.join(rec['purchased'])}; customers who bought "
            "those also bought", rows, ("product", "customers")))
    if "clicks" in s:
        clicks = s["clicks"]
        views = clicks["views"]
        console.print(_counts_table(
            f"clickstream: {clicks['user_id']}'s page views on {clicks['day']} (last 10 of {len(views)})",
            [(v["ts"], v["url"]) for v in views[-10:]], ("time", "url")))
    top = s["top_products"]
    console.print(_counts_table(f"clickstream: top products on {top['day']}",
                                [(p["product_id"], str(p["views"])) for p in top["products"]], ("product", "views")))
