"""Two workers for one read model share its partitions; one is killed (kill -9) mid-stream → the other takes
its partitions over and nothing is lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from cdc.kafka import ensure_topics, kafka_config
from cdc.settings import Settings
from sinks.order_view import OrderViewSink, fold_orders
from tests.helpers import unique, wait_for
from tests.streams_support import WorkerProcess, caught_up, order_lifecycle, produce

pytestmark = pytest.mark.integration

PARTITIONS = 4


def members(settings: Settings, group: str, topic: str) -> dict[str, list[int]]:
    """member id → its assigned partitions of `topic` (Faust also assigns its internal leader topic)."""
    admin = AdminClient(kafka_config(settings))
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return {
        m.member_id: sorted(
            tp.partition for tp in (m.assignment.topic_partitions if m.assignment else []) if tp.topic == topic
        )
        for m in desc.members
    }


def test_two_workers_one_killed_the_other_takes_over(
    settings: Settings, kafka: object, postgres: object, tmp_path: Path
) -> None:
    ns = unique("rb")
    topic, group = f"{ns}_orders", f"{ns}.g"
    ensure_topics(settings, [topic], partitions=PARTITIONS)
    sink = OrderViewSink(settings, ns)
    lifecycles = [order_lifecycle(topic, f"o{i}", f"c{i % 9}", [f"p{i % 6}"], ["paid", "shipped", "delivered"])
                  for i in range(120)]
    w1 = WorkerProcess("order_view", topic, group, ns, tmp_path, name="w1")
    w2 = WorkerProcess("order_view", topic, group, ns, tmp_path, name="w2")
    try:
        produce(settings, topic, [es[0] for es in lifecycles])
        wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=90, what="phase 1 applied")
        def both_own_partitions() -> dict[str, list[int]] | None:
            m = members(settings, group, topic)
            return m if len(m) == 2 and all(m.values()) else None

        split = wait_for(both_own_partitions, timeout=60, what="both workers own partitions")
        assert sorted(p for ps in split.values() for p in ps) == list(range(PARTITIONS))

        # phase 2 streams in while w1 dies: kill -9 half way
        events = [e for es in lifecycles for e in es[1:]]
        produce(settings, topic, events[: len(events) // 2])
        w1.kill()
        produce(settings, topic, events[len(events) // 2:])
        killed_at = time.monotonic()
        # the survivor alone, owning every partition (the coordinator may first show the dropped member's
        # partitions unassigned while the rebalance completes)
        wait_for(lambda: list(members(settings, group, topic).values()) == [list(range(PARTITIONS))], timeout=60,
                 what="the survivor owns every partition")
        wait_for(lambda: caught_up(settings, group, topic, PARTITIONS), timeout=120, what="survivor caught up")
        folded = fold_orders([e for es in lifecycles for e in es])
        assert sink.rows() == [folded[k] for k in sorted(folded)]
        assert all(r.status == "delivered" for r in sink.rows())
        assert w2.alive(), w2.log_text()[-3000:]
        print(f"takeover + catch-up after kill: {time.monotonic() - killed_at:.1f}s")
    finally:
        w1.stop()
        w2.stop()
        sink.drop()
        sink.close()
