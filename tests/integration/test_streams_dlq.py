"""Poison messages: dead-lettered with their reason and source position, the worker alive, good events applied;
`cdcflow dlq list` shows them and `cdcflow dlq replay` re-drives each once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdc.event import Event
from cdc.kafka import ensure_topics
from cdc.schemas import dlq_topic
from cdc.settings import Settings
from sinks.order_view import OrderViewSink, fold_orders
from streams.dlq import list_dead_letters, replay_dead_letters
from tests.helpers import unique, wait_for
from tests.streams_support import WorkerProcess, caught_up, order_lifecycle, produce, produce_raw

pytestmark = pytest.mark.integration

PARTITIONS = 2


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CDCFLOW_LOG_LEVEL": "WARNING"})


def test_poison_messages_go_to_the_dlq_and_the_worker_goes_on(
    settings: Settings, kafka: object, postgres: object, tmp_path: Path
) -> None:
    ns = unique("dq")
    topic = f"{ns}_orders"
    ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    sink = OrderViewSink(settings, ns)
    good1 = order_lifecycle(topic, "o1", "c1", ["a"], ["paid"])
    good2 = order_lifecycle(topic, "o2", "c2", ["b"], ["cancelled"])
    unknown = Event.create(topic=topic, aggregate_type="Order", aggregate_id="o1", type="OrderTeleported",
                           payload={"order_id": "o1"})
    bad_payload = Event.create(topic=topic, aggregate_type="Order", aggregate_id="o2", type="OrderShipped",
                               payload={"order_id": "o2", "carrier": ""})
    poison = [
        (b"o1", b'{"event_id": "oops", "topic": ', [("event_id", b"x")]),
        (unknown.kafka_key(), unknown.to_json(), unknown.kafka_headers()),
        (bad_payload.kafka_key(), bad_payload.to_json(), bad_payload.kafka_headers()),
    ]
    worker = WorkerProcess("order_view", topic, f"{ns}.g", ns, tmp_path)
    try:
        produce(settings, topic, good1[:1] + good2[:1])
        produce_raw(settings, topic, poison)
        produce(settings, topic, good1[1:] + good2[1:])
        wait_for(lambda: caught_up(settings, f"{ns}.g", topic, PARTITIONS), timeout=90, what="worker caught up")
        assert worker.alive()
        folded = fold_orders(good1 + good2)
        assert sink.rows() == [folded["o1"], folded["o2"]]

        letters = list_dead_letters(settings, [topic])  # published before the batch was committed
        assert len(letters) == 3
        by_value = {x.value: x for x in letters}
        assert by_value[poison[0][1]].reason.startswith("malformed JSON")
        assert "unknown event type 'OrderTeleported'" in by_value[unknown.to_json()].reason
        assert "invalid OrderShipped payload: carrier" in by_value[bad_payload.to_json()].reason
        for x in letters:
            assert x.source_topic == topic and x.read_model == "order_view" and x.source_offset >= 0
            assert 0 <= x.source_partition < PARTITIONS and not x.replayed
        assert by_value[unknown.to_json()].event_id == unknown.event_id
        assert dict(by_value[unknown.to_json()].headers)["type"] == b"OrderTeleported"

        # the CLI shows the same letters
        out = cli("dlq", "list", "--topic", topic, "--json")
        assert out.returncode == 0, out.stderr
        listed = [json.loads(line) for line in out.stdout.splitlines()]  # JSON lines, one per dead letter
        assert {x["source"] for x in listed} == {"worker"}
        assert sorted(x["source_offset"] for x in listed) == sorted(x.source_offset for x in letters)

        # replay re-drives each letter once to the source topic; still poison → dead-lettered again, worker alive
        report = replay_dead_letters(settings, [topic])
        assert report.replayed == {dlq_topic(topic): 3}
        # (A second replay right now would race the worker re-dead-lettering the still-poison copies: wait for
        # them; the CLI replay below must then re-drive only those 3, never the 3 already replayed.)
        wait_for(lambda: len(list_dead_letters(settings, [topic])) == 6, timeout=60, what="re-dead-lettered")
        again = list_dead_letters(settings, [topic])
        assert sum(x.replayed for x in again) == 3
        assert {x.value for x in again if not x.replayed} == {x.value for x in letters}
        assert worker.alive()
        assert sink.rows() == [folded["o1"], folded["o2"]]
        out = cli("dlq", "replay", "--topic", topic)
        assert out.returncode == 0 and "3 replayed" in out.stdout, out.stdout + out.stderr
    finally:
        worker.stop()
        sink.drop()
        sink.close()
