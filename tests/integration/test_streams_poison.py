"""No record stops a worker: records of every class that cannot be decoded or written, sent on a real topic to
real worker processes, are each dead-lettered with their reason, while the worker stays alive, commits past
them and applies the good records around them. And an agent that dies anyway takes its process down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest

from cdc.event import Event
from cdc.kafka import ensure_topics
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from sinks.clickstream import ClickstreamSink, page_view_of
from sinks.order_view import OrderViewSink, fold_orders
from sinks.purchase_graph import PurchaseGraphSink
from streams.dlq import list_dead_letters
from tests.helpers import unique, wait_for
from tests.streams_support import (
    POISON_MAX_BYTES,
    REPO,
    WorkerProcess,
    caught_up,
    committed_offsets,
    end_offsets,
    expected_graph,
    order_lifecycle,
    page_view,
    poison_values,
    produce,
    produce_raw,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2


def order_created(topic: str, order_id: str, customer_id: str, product_id: str, quantity: int = 1,
                  version: int = 1) -> Event:
    return Event.create(
        topic=topic, aggregate_type="Order", aggregate_id=order_id, type="OrderCreated", version=version,
        payload={"order_id": order_id, "customer_id": customer_id, "total": "9.99", "currency": "EUR",
                 "items": [{"product_id": product_id, "quantity": quantity, "unit_price": "9.99"}]},
    )


def test_orders_of_every_bad_class_are_dead_lettered_and_both_order_workers_go_on(
    settings: Settings, kafka: object, postgres: object, neo4j: object, tmp_path: Path
) -> None:
    ns = unique("pz")
    topic = f"{ns}_orders"
    ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    good = [order_lifecycle(topic, f"o{i}", f"c{i}", ["a", "b"], ["paid", "shipped"]) for i in range(4)]
    poison = [(name, f"bad{i}".encode(), value, reason)
              for i, (name, value, reason) in enumerate(poison_values(topic))]
    # valid events a store refuses for their data (the isolation path): each alone on its own aggregate
    refused_by_postgres = [
        ("version out of range", order_created(topic, "big-version", "c9", "a", version=2**40), "22003"),
        ("NUL in text", order_created(topic, "nul", "c\x009", "a"), "NUL"),
    ]
    refused_by_neo4j = [
        ("quantity out of range", order_created(topic, "big-quantity", "c9", "a", quantity=2**70),
         "out of range"),
    ]
    valid_but_refused = refused_by_postgres + refused_by_neo4j
    env = {"CDCFLOW_STREAM_MAX_RECORD_BYTES": str(POISON_MAX_BYTES)}
    orders, graph = OrderViewSink(settings, ns), PurchaseGraphSink(settings, ns)
    workers = [WorkerProcess(rm, topic, f"{ns}.{rm}", ns, tmp_path, env=env)
               for rm in ("order_view", "purchase_graph")]
    try:
        produce(settings, topic, [es[0] for es in good])
        produce_raw(settings, topic, [(key, value, []) for _, key, value, _ in poison])
        produce(settings, topic, [e for _, e, _ in valid_but_refused])
        produce(settings, topic, [e for es in good for e in es[1:]])
        for w in workers:
            group = f"{ns}.{w.read_model}"
            wait_for(partial(caught_up, settings, group, topic, PARTITIONS), timeout=120,
                     what=f"{w.read_model} caught up")  # committed past every bad record
            assert w.alive(), w.log_text()[-3000:]
        folded = fold_orders([e for es in good for e in es])
        refused_ids = {e.event_id for _, e, _ in valid_but_refused}
        assert sorted(r.order_id for r in orders.rows()) == sorted(
            [*folded, *(e.aggregate_id for _, e, _ in refused_by_neo4j)]  # Postgres takes those two
        )
        assert [orders.get(k) for k in sorted(folded)] == [folded[k] for k in sorted(folded)]
        assert graph.snapshot() == expected_graph(  # Neo4j takes the Postgres-refused ones
            fold_orders([e for es in good for e in es] + [e for _, e, _ in refused_by_postgres])
        )

        letters = list_dead_letters(settings, [topic])
        by_model: dict[str, dict[bytes | None, str]] = {"order_view": {}, "purchase_graph": {}}
        for letter in letters:
            by_model[letter.read_model][letter.value] = letter.reason
        for model, refused_here in (("order_view", refused_by_postgres), ("purchase_graph", refused_by_neo4j)):
            reasons = by_model[model]
            assert len(reasons) == len(poison) + len(refused_here), sorted(reasons.values())
            for name, _, value, words in poison:
                assert words in reasons[value], (model, name, reasons[value][:300])
            for name, event, words in refused_here:
                assert words in reasons[event.to_json()], (model, name, reasons[event.to_json()][:300])
        assert not refused_ids & {e.event_id for es in good for e in es}
        for w in workers:
            assert '"agent_crashed"' not in w.log_text()
    finally:
        for w in workers:
            w.stop()
        orders.drop()
        orders.close()
        graph.drop()
        graph.close()


def test_page_views_out_of_range_or_too_long_are_dead_lettered_and_the_clickstream_goes_on(
    settings: Settings, kafka: object, cassandra: object, tmp_path: Path
) -> None:
    ns = unique("pc")
    topic = f"{ns}_clickstream"
    ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    now = datetime.now(UTC).replace(microsecond=0)
    views = [page_view(topic, f"u{i % 3}", f"p{i % 2}", now - timedelta(minutes=i)) for i in range(20)]

    def raw_view(user: str, product: str | None, timestamp: str) -> Event:
        return Event.create(topic=topic, aggregate_type="User", aggregate_id=user, type="PageViewed",
                            payload={"user_id": user, "url": "/x", "product_id": product, "timestamp": timestamp})

    bad = [
        ("before year 1 in UTC", raw_view("u9", None, "0001-01-01T00:00:00+01:00"), "out of range"),
        ("after year 9999 in UTC", raw_view("u9", None, "9999-12-31T23:59:59-01:00"), "out of range"),
        ("too far ahead to keep", raw_view("u9", None, "2200-01-01T00:00:00Z"), "ttl"),
        ("product id too long for a key", raw_view("u9", "p" * 70000, now.isoformat()), "at most 200"),
    ]
    sink = ClickstreamSink(settings, ns)
    worker = WorkerProcess("clickstream", topic, f"{ns}.g", ns, tmp_path)
    try:
        produce(settings, topic, views[:10] + [e for _, e, _ in bad] + views[10:])
        wait_for(lambda: caught_up(settings, f"{ns}.g", topic, PARTITIONS), timeout=120, what="caught up")
        assert worker.alive(), worker.log_text()[-3000:]
        got = sink.snapshot()["views"]
        assert got == sorted((page_view_of(e).to_json() for e in views), key=lambda v: (v["ts"], v["event_id"]))
        reasons = {x.event_id: x.reason for x in list_dead_letters(settings, [topic])}
        assert len(reasons) == len(bad)
        for name, event, words in bad:
            assert words in reasons[event.event_id].lower(), (name, reasons[event.event_id][:300])
    finally:
        worker.stop()
        sink.drop()
        sink.close()


CRASHING_WORKER = textwrap.dedent("""
    # A worker whose batch step raises on one record: stands for a bug no record should be able to trigger.
    import sys
    from cdc.settings import load_settings
    from streams import app
    from streams.processor import BatchProcessor

    process = BatchProcessor.process

    async def crashing(self, records):
        if any(r.value == b"crash-me" for r in records):
            raise RuntimeError("a bug in the batch step")
        return await process(self, records)

    BatchProcessor.process = crashing
    settings = load_settings()
    app.run_worker(settings, app.WorkerSpec.of(settings, "order_view", topic=sys.argv[1], group_id=sys.argv[2],
                                               namespace=sys.argv[3]))
""")


def test_an_agent_that_crashes_takes_its_process_down_with_a_non_zero_exit(
    settings: Settings, kafka: object, postgres: object, tmp_path: Path
) -> None:
    ns = unique("cr")
    topic, group = f"{ns}_orders", f"{ns}.g"
    ensure_topics(settings, [topic, dlq_topic(topic)], partitions=1)
    before = order_lifecycle(topic, "o1", "c1", ["a"], ["paid"])
    after = order_lifecycle(topic, "o2", "c2", ["b"], ["paid"])
    sink = OrderViewSink(settings, ns)
    log_path = tmp_path / "crashing.log"
    env = {**os.environ, "CDCFLOW_LOG_JSON": "true", "CDCFLOW_STREAM_BATCH_WITHIN": "0.2",
           "CDCFLOW_WORKER_STOP_TIMEOUT": "40"}
    try:
        produce(settings, topic, before)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-c", CRASHING_WORKER, topic, group, ns], cwd=REPO, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: caught_up(settings, group, topic, 1), timeout=90, what="first events applied")
                crash_offset = end_offsets(settings, topic, 1)[0]
                produce_raw(settings, topic, [(b"o9", b"crash-me", [])])
                produce(settings, topic, after)
                started = time.monotonic()
                rc = proc.wait(60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        text = log_path.read_text(errors="replace")
        assert rc == 70, text[-3000:]
        # the worker shut itself down (not the watchdog, armed for 40 s, that would end it otherwise)
        assert time.monotonic() - started < 30 and "agent_crashed_shutdown_timeout" not in text
        crash = [json.loads(line[line.index("{"):]) for line in text.splitlines() if '"agent_crashed"' in line]
        assert crash and "a bug in the batch step" in crash[0]["error"]
        # nothing committed past the record it died on
        assert committed_offsets(settings, group, topic, 1)[0] <= crash_offset
        # a plain worker (what a supervisor restarts) picks up from there: the record is a dead letter
        worker = WorkerProcess("order_view", topic, group, ns, tmp_path, name="after")
        try:
            wait_for(lambda: caught_up(settings, group, topic, 1), timeout=90, what="caught up after the crash")
        finally:
            worker.stop()
        folded = fold_orders(before + after)
        assert sink.rows() == [folded["o1"], folded["o2"]]
        assert [x.value for x in list_dead_letters(settings, [topic])] == [b"crash-me"]
        assert folded["o2"].total == Decimal("9.99")
    finally:
        sink.drop()
        sink.close()
