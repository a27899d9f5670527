"""`cdcflow demo` end to end on the real servers: its printed counts agree with the outboxes and read models."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from cdc.mongo import mongo_client
from cdc.outbox import OUTBOX_COLLECTION
from cdc.services import SERVICE_DATABASES
from cdc.settings import Settings
from cli.demo import SERVICE_TOPICS, _count, run_demo
from sinks import queries
from sinks.order_view import OrderViewSink
from sinks.registry import READ_MODELS, build_sink

pytestmark = pytest.mark.integration



def _outbox_count(settings: Settings, service: str, since: datetime, event_type: str | None = None) -> int:
    client = mongo_client(settings)
    try:
        query: dict[str, object] = {"occurred_at": {"$gte": since}}
        if event_type:
            query["type"] = event_type
        return client[SERVICE_DATABASES[service]][OUTBOX_COLLECTION].count_documents(query)
    finally:
        client.close()


def test_demo_runs_end_to_end_and_its_counts_agree(
    settings: Settings, mongo: object, kafka: object, postgres: object, cassandra: object, neo4j: object
) -> None:
    # As the demo's workers do (their database user owns the live read models).
    order_view = build_sink("order_view", settings.as_role("worker"))
    assert isinstance(order_view, OrderViewSink)
    order_view.setup()
    orders_before = order_view.count()
    # Records already on a topic that a read model's group had not consumed yet (other tests write to the real
    # topics too): the demo's workers apply them as well.
    before = _count(settings)
    backlog = {name: before.topic_end[model.topic] - before.consumed[name] for name, model in READ_MODELS.items()}
    since = datetime.now(UTC)
    out = io.StringIO()

    report = run_demo(settings, duration=10, rate=20, keep_servers=True, console=Console(file=out, width=160))

    printed = out.getvalue()
    # Traffic happened, and every stage saw every event: every outbox insert was acknowledged by Kafka; the
    # topics hold at least that many records (more only by at-least-once re-sends); every record was applied.
    assert sum(report.produced.values()) > 50
    for service, topic in SERVICE_TOPICS.items():
        assert _outbox_count(settings, service, since) == report.produced[service]
        assert report.forwarded[service] == report.produced[service], (service, report)
        assert report.kafka_records[topic] >= report.forwarded[service], (service, report)
    for name, model in READ_MODELS.items():
        assert report.applied[name] == report.kafka_records[model.topic] + backlog[name], (name, backlog, report)
        assert f"│ {name}" in printed and f"│ {report.applied[name]}" in printed
    for service in SERVICE_TOPICS:
        assert f"│ {report.produced[service]}" in printed

    # The read models hold what the counts say: one order view row per order created during the run.
    created = _outbox_count(settings, "order", since, "OrderCreated")
    assert created > 0
    assert order_view.count() - orders_before == created
    order_view.close()

    # The samples the demo printed are what the read models answer now.
    with queries.ReadModels(settings) as models:
        order = report.samples["order"]
        assert queries.order(models, order["order_id"]) == order
        assert order["order_id"] in printed
        rec = report.samples["recommendations"]
        assert queries.recommendations(models, rec["customer_id"], limit=5) == rec
        clicks = report.samples["clicks"]
        assert clicks["views"], "the busiest visitor has page views"
        assert len(queries.clicks(models, clicks["user_id"], day=queries.today())["views"]) >= len(clicks["views"])
        assert report.samples["top_products"]["products"]
