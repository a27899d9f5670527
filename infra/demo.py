"""`cdcflow demo`: the whole pipeline end to end on the local servers, with traffic, then the read models.

Servers up → services, tailer and workers as child processes → ~30 s of realistic traffic with a live
display → wait until every outbox is published and every read model's consumer lag is 0 → print what was
produced, forwarded and applied, and samples from each read model → stop the pipeline (and the servers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cdc.kafka import admin_client, ensure_topics
from cdc.mongo import mongo_client
from cdc.outbox import OUTBOX_COLLECTION
from cdc.schemas import TOPICS
from cdc.settings import Settings
from infra import stack
from infra.errors import StartError
from infra.pipeline import Pipeline
from sinks.registry import READ_MODELS

SERVICE_DATABASES = {"product": "product_service", "order": "order_service", "clickstream": "clickstream_service"}


@dataclass
class Counts:
    """Event counts at one moment: outbox documents per service, topic ends, consumer positions."""

    outbox: dict[str, int] = field(default_factory=dict)
    unpublished: dict[str, int] = field(default_factory=dict)
    topic_end: dict[str, int] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=dict)


@dataclass
class DemoReport:
    """What the demo did: per-stage deltas and the samples it showed."""

    produced: dict[str, int]
    forwarded: dict[str, int]
    applied: dict[str, int]
    load: dict[str, Any]
    samples: dict[str, Any]
    seconds_to_zero_lag: float


def _count(settings: Settings) -> Counts:
    counts = Counts()
    client = mongo_client(settings)
    try:
        for service, dbname in SERVICE_DATABASES.items():
            outbox = client[dbname][OUTBOX_COLLECTION]
            counts.outbox[service] = outbox.estimated_document_count()
            counts.unpublished[service] = outbox.count_documents({"published": False})
    finally:
        client.close()
    from confluent_kafka import Consumer, TopicPartition

    from cdc.kafka import kafka_config

    admin = admin_client(settings)
    meta = admin.list_topics(timeout=10).topics
    probe = Consumer(kafka_config(settings, **{"group.id": "cdcflow.demo.probe", "enable.auto.commit": False}))
    try:
        partitions: dict[str, list[TopicPartition]] = {}
        for topic in TOPICS:
            parts = [TopicPartition(topic, p) for p in (meta[topic].partitions if topic in meta else {})]
            partitions[topic] = parts
            counts.topic_end[topic] = sum(probe.get_watermark_offsets(tp, timeout=10)[1] for tp in parts)
        for name, model in READ_MODELS.items():
            group = Consumer(kafka_config(settings, **{"group.id": model.consumer_group(),
                                                       "enable.auto.commit": False}))
            try:
                committed = group.committed(partitions[model.topic], timeout=10)
            finally:
                group.close()
            counts.consumed[name] = sum(max(tp.offset, 0) for tp in committed)
    finally:
        probe.close()
    return counts


def _lag(now: Counts) -> tuple[int, int]:
    backlog = sum(now.unpublished.values())
    lag = sum(max(0, now.topic_end[m.topic] - now.consumed[name]) for name, m in READ_MODELS.items())
    return backlog, lag


def _samples(settings: Settings, since: datetime) -> dict[str, Any]:
    """An order, recommendations, a user's clicks and today's top products, read from the read models."""
    samples: dict[str, Any] = {}
    client = mongo_client(settings)
    try:
        events = client[SERVICE_DATABASES["order"]][OUTBOX_COLLECTION]
        delivered = events.find_one({"type": "OrderDelivered", "occurred_at": {"$gte": since}},
                                    sort=[("occurred_at", -1)])
        any_order = delivered or events.find_one({"type": "OrderCreated", "occurred_at": {"$gte": since}},
                                                 sort=[("occurred_at", -1)])
        views = client[SERVICE_DATABASES["clickstream"]][OUTBOX_COLLECTION]
        viewer = views.find_one({"type": "PageViewed", "occurred_at": {"$gte": since}}, sort=[("occurred_at", -1)])
    finally:
        client.close()
    order_sink = READ_MODELS["order_view"].sink(settings)
    graph = READ_MODELS["purchase_graph"].sink(settings)
    clicks = READ_MODELS["clickstream"].sink(settings)
    try:
        if any_order is not None:
            row = order_sink.get(any_order["aggregate_id"])  # type: ignore[attr-defined]
            samples["order"] = order_sink.row_json(row) if row is not None else None  # type: ignore[attr-defined]
            customer = samples["order"]["customer_id"] if samples["order"] else None
            if customer:
                samples["customer_id"] = customer
                samples["recommendations"] = graph.recommendations(customer, 5)  # type: ignore[attr-defined]
                samples["purchases"] = graph.purchases(customer)  # type: ignore[attr-defined]
        if viewer is not None:
            user = viewer["aggregate_id"]
            day = viewer["occurred_at"].astimezone(UTC).date()
            samples["user_id"] = user
            samples["clicks"] = [v.to_json() for v in clicks.views(user, day)]  # type: ignore[attr-defined]
        today = datetime.now(UTC).date()
        samples["day"] = today.isoformat()
        samples["top_products"] = clicks.top_products(today, 5)  # type: ignore[attr-defined]
    finally:
        order_sink.close()
        graph.close()
        clicks.close()
    return samples


def _counts_table(title: str, rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> Table:
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
        after = _wait_for_zero_lag(settings, pipeline, console, lag_timeout, before)
        seconds_to_zero = time.monotonic() - drained_at
        samples = _samples(settings, since)
    finally:
        with console.status("stopping services, tailer and workers…"):
            pipeline.stop()
    report = DemoReport(
        produced={s: after.outbox[s] - before.outbox[s] for s in SERVICE_DATABASES},
        forwarded={t: after.topic_end[t] - before.topic_end[t] for t in TOPICS},
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


def _wait_for_zero_lag(
    settings: Settings, pipeline: Pipeline, console: Console, timeout: float, before: Counts
) -> Counts:
    deadline = time.monotonic() + timeout
    with console.status("waiting until every event is forwarded and applied…") as status:
        while True:
            pipeline.check_alive()
            now = _count(settings)
            backlog, lag = _lag(now)
            if backlog == 0 and lag == 0:
                return now
            status.update(f"waiting: outbox backlog {backlog}, consumer lag {lag}")
            if time.monotonic() > deadline:
                raise StartError("demo", f"lag did not reach 0 within {timeout:.0f}s (backlog {backlog}, lag {lag});"
                                 f" logs in {pipeline.log_dir}")
            time.sleep(1.0)


def _print_report(console: Console, report: DemoReport) -> None:
    fmt: Callable[[dict[str, int]], list[tuple[str, ...]]] = lambda d: [(k, str(v)) for k, v in d.items()]  # noqa: E731
    console.print(_counts_table("events produced (outbox inserts)", fmt(report.produced), ("service", "events")))
    console.print(_counts_table("events forwarded to Kafka", fmt(report.forwarded), ("topic", "events")))
    console.print(_counts_table("events applied per read model", fmt(report.applied), ("read model", "events")))
    console.print(f"traffic: {report.load['achieved_ok_rate']} requests/s ok, "
                  f"{report.load['achieved_event_rate']} events/s; lag reached 0 "
                  f"{report.seconds_to_zero_lag:.1f} s after the traffic stopped")
    s = report.samples
    if s.get("order"):
        order = s["order"]
        console.print(_counts_table(f"order view: {order.get('order_id')}",
                                    [(k, str(v)) for k, v in order.items()], ("field", "value")))
    if "recommendations" in s:
        console.print(_counts_table(f"purchase graph: recommendations for {s['customer_id']}",
                                    [(str(p), str(n)) for p, n in s["recommendations"]] or [("(none yet)", "")],
                                    ("product", "co-purchases")))
    if "clicks" in s:
        console.print(_counts_table(f"clickstream: {s['user_id']}'s views",
                                    [(str(c.get("timestamp")), str(c.get("url"))) for c in s["clicks"]],
                                    ("time", "url")))
    console.print(_counts_table(f"clickstream: top products on {s.get('day', date.today())}",
                                [(str(p), str(n)) for p, n in s.get("top_products", [])], ("product", "views")))
