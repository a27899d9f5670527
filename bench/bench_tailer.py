"""Benchmark: the change-stream tailer vs a hand-rolled polling relay vs the raw limits. Prints figures.

    .venv/bin/python bench/bench_tailer.py [--events 20000] [--polling-events 2000] [--rate 100] [--seconds 15]

Throughput is measured from a backlog (the outbox pre-loaded with insert_many, since SecantusDB commits at most
~430 transactions/s), latency at a steady moderate rate of single-event transactions: outbox commit (the
insert's transaction returned) -> Kafka acknowledgement (delivery report). Raw limits: a bare change-stream
read and a bare pipelined Kafka produce of the same events.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Producer
from pymongo.collection import Collection

from bench.polling_relay import PollingRelay
from cdc.event import Event
from cdc.kafka import ensure_topics, producer_config
from cdc.logs import configure_logging
from cdc.mongo import mongo_client
from cdc.outbox import Document, outbox_document
from cdc.publisher import Sent
from cdc.settings import Settings, load_settings
from cdc.tailer import Tailer


def make_docs(topic: str, n: int) -> list[Document]:
    return [
        outbox_document(Event.create(topic=topic, aggregate_type="Order", aggregate_id=f"o-{i % 500}",
                                     type="OrderShipped", version=i // 500 + 1, payload={"i": i, "pad": "x" * 200},
                                     source_service="bench"))
        for i in range(n)
    ]


def preload(outbox: Collection[Document], docs: list[Document]) -> float:
    start = time.perf_counter()
    for i in range(0, len(docs), 1000):
        outbox.insert_many(docs[i : i + 1000], ordered=False)
    return len(docs) / (time.perf_counter() - start)


class Acks:
    """Acknowledgement times by event id, and a condition to wait on."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.cond = threading.Condition()

    def add(self, event_id: str, when: float) -> None:
        with self.cond:
            self.times.setdefault(event_id, when)
            self.cond.notify_all()

    def wait(self, ids: set[str], timeout: float) -> float:
        """Until every id is acknowledged; returns the last acknowledgement time."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not ids <= self.times.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(ids - self.times.keys())} events not acknowledged")
                self.cond.wait(min(left, 0.5))
            return max(self.times[i] for i in ids)


def steady(outbox: Collection[Document], docs: list[Document], rate: float) -> dict[str, float]:
    """Insert one event per transaction at `rate`/s; returns commit times by id."""
    client = outbox.database.client
    commits: dict[str, float] = {}
    start = time.perf_counter()
    for n, doc in enumerate(docs):
        due = start + n / rate
        if (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        with client.start_session() as session, session.start_transaction():
            outbox.insert_one(doc, session=session)
        commits[doc["_id"]] = time.time()
    return commits


def latencies_ms(commits: dict[str, float], acks: Acks) -> list[float]:
    return [max(0.0, acks.times[i] - t) * 1000 for i, t in commits.items()]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def run_tailer(settings: Settings, client: Any, topic: str, args: argparse.Namespace) -> dict[str, Any]:
    db = f"bench_tail_{uuid.uuid4().hex[:6]}"
    outbox = client[db].outbox
    acks = Acks()
    hook: Callable[[Sent], None] = lambda s: acks.add(s.event_id, s.ack_time)  # noqa: E731
    # First start: empty outbox, so the tailer has a checkpoint; the backlog is then read from the stream.
    tailer = Tailer(settings, [db], client=client, on_ack=hook).start()
    checkpoints = client[settings.tailer_state_database]["checkpoints"]
    while not (checkpoints.find_one({"_id": f"{db}.outbox"}) or {}).get("token"):
        time.sleep(0.05)
    tailer.stop()
    docs = make_docs(topic, args.events)
    insert_rate = preload(outbox, docs)
    start = time.time()
    tailer = Tailer(settings, [db], client=client, on_ack=hook).start()
    last = acks.wait({d["_id"] for d in docs}, timeout=600)
    throughput = len(docs) / (last - start)
    time.sleep(1.0)
    steady_docs = make_docs(topic, int(args.rate * args.seconds))
    commits = steady(outbox, steady_docs, args.rate)
    acks.wait(set(commits), timeout=120)
    tailer.stop()
    client.drop_database(db)
    return {"throughput": throughput, "lat": latencies_ms(commits, acks), "insert_rate": insert_rate}


def run_polling(settings: Settings, client: Any, topic: str, args: argparse.Namespace) -> dict[str, Any]:
    db = f"bench_poll_{uuid.uuid4().hex[:6]}"
    outbox = client[db].outbox
    outbox.create_index([("occurred_at", 1), ("version", 1), ("_id", 1)])
    docs = make_docs(topic, args.polling_events)
    preload(outbox, docs)
    acks = Acks()
    start = time.time()
    relay = PollingRelay(settings, outbox, on_ack=acks.add).start()
    last = acks.wait({d["_id"] for d in docs}, timeout=600)
    throughput = len(docs) / (last - start)
    steady_docs = make_docs(topic, int(args.rate * args.seconds))
    commits = steady(outbox, steady_docs, args.rate)
    acks.wait(set(commits), timeout=120)
    relay.stop()
    client.drop_database(db)
    return {"throughput": throughput, "lat": latencies_ms(commits, acks)}


def run_raw(settings: Settings, client: Any, topic: str, args: argparse.Namespace) -> dict[str, float]:
    db = f"bench_raw_{uuid.uuid4().hex[:6]}"
    outbox = client[db].outbox
    docs = make_docs(topic, args.events)
    with outbox.watch([{"$match": {"operationType": "insert"}}], batch_size=1000, max_await_time_ms=100) as s:
        token = s.resume_token
    preload(outbox, docs)
    start = time.perf_counter()
    n = 0
    with outbox.watch([{"$match": {"operationType": "insert"}}], resume_after=token, batch_size=1000,
                      max_await_time_ms=100) as stream:
        while n < len(docs):
            if stream.try_next() is not None:
                n += 1
    stream_rate = n / (time.perf_counter() - start)
    events = [Event.parse(d) for d in docs]
    producer = Producer(producer_config(settings, **{"linger.ms": 1}))
    start = time.perf_counter()
    for e in events:
        while True:
            try:
                headers: list[tuple[str, str | bytes | None]] = list(e.kafka_headers())
                producer.produce(e.topic, value=e.to_json(), key=e.kafka_key(), headers=headers)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    produce_rate = len(events) / (time.perf_counter() - start)
    client.drop_database(db)
    return {"stream": stream_rate, "produce": produce_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="backlog size for the tailer and raw limits")
    parser.add_argument("--polling-events", type=int, default=2000, help="backlog size for the polling relay")
    parser.add_argument("--rate", type=float, default=100.0, help="steady rate (events/s) for latency")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of the steady phase")
    args = parser.parse_args()
    configure_logging("WARNING")
    settings = load_settings()
    client = mongo_client(settings)
    topic = f"bench_tailer_{uuid.uuid4().hex[:6]}"
    ensure_topics(settings, [topic])

    print(f"cdcflow tailer benchmark: {args.events} backlog events (polling relay: {args.polling_events}), "
          f"steady {args.rate:.0f} events/s for {args.seconds:.0f}s; SecantusDB + Kafka on this machine")
    raw = run_raw(settings, client, topic, args)
    tail = run_tailer(settings, client, topic, args)
    bare = run_tailer(settings.model_copy(update={"tailer_mark_published": False}), client, topic, args)
    poll = run_polling(settings, client, topic, args)
    limit = min(raw["stream"], raw["produce"])

    print()
    print(f"{'':32}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'(a) change-stream tailer':32}{tail['throughput']:>12,.0f}"
          f"{pct(tail['lat'], 50):>10.1f}{pct(tail['lat'], 99):>10.1f}")
    print(f"{'(a) tailer, no published-marking':32}{bare['throughput']:>12,.0f}"
          f"{pct(bare['lat'], 50):>10.1f}{pct(bare['lat'], 99):>10.1f}")
    print(f"{'(b) polling relay (100 ms)':32}{poll['throughput']:>12,.0f}"
          f"{pct(poll['lat'], 50):>10.1f}{pct(poll['lat'], 99):>10.1f}")
    print(f"{'(c) raw change-stream read':32}{raw['stream']:>12,.0f}")
    print(f"{'(c) raw Kafka produce':32}{raw['produce']:>12,.0f}")
    print(f"{'    (outbox insert_many, raw)':32}{tail['insert_rate']:>12,.0f}")
    print()
    speedup = tail["throughput"] / poll["throughput"]
    share = tail["throughput"] / limit
    p50 = pct(tail["lat"], 50)
    verdict = "met" if speedup >= 20 else "NOT met"
    print(f"tailer / polling relay throughput: {speedup:.1f}x   (target >= 20x: {verdict})")
    print(f"tailer p50 latency: {p50:.1f} ms   (target <= 10 ms: {'met' if p50 <= 10 else 'NOT met'})")
    print(f"tailer / smaller raw limit: {share:.0%}   (target >= 80%: {'met' if share >= 0.8 else 'NOT met'})")
    print(f"polling relay / tailer p50 latency: {pct(poll['lat'], 50) / max(p50, 0.001):.1f}x")
    client.close()


if __name__ == "__main__":
    main()
