"""The processes of the live benchmark (`bench_tailer.py --live`), each run as its own process, as in production:

    python bench/live.py writer --db DB --topic T --events N --batch B   inserts N outbox events in batches
    python bench/live.py naive --db DB [--db DB2 ...]                   the naive forwarder (the baseline)

The writer prints one JSON line: its start and end (wall clock) and its insert rate. The naive forwarder is what
a team writes in an afternoon: pymongo `watch()` on the outbox, each inserted document sent to Kafka (key =
aggregate id, value = the event's JSON) with a 5 ms linger, no checkpoint, no marking, no dead letters; a thread
per outbox. It prints READY once its change streams are open and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Producer

from cdc.event import Event
from cdc.kafka import producer_config
from cdc.logs import configure_logging
from cdc.mongo import mongo_client
from cdc.outbox import Document, outbox_document
from cdc.settings import load_settings

PAD = "x" * 200


def make_docs(topic: str, n: int, aggregates: int = 500) -> list[Document]:
    """`n` outbox documents of `aggregates` orders, versions in order, a ~200-byte payload each."""
    run = uuid.uuid4().hex[:6]
    return [
        outbox_document(Event.create(topic=topic, aggregate_type="Order", aggregate_id=f"o-{run}-{i % aggregates}",
                                     type="OrderShipped", version=i // aggregates + 1,
                                     payload={"i": i, "pad": PAD}, source_service="bench"))
        for i in range(n)
    ]


def writer(args: argparse.Namespace) -> None:
    settings = load_settings()
    client = mongo_client(settings)
    outbox = client[args.db].outbox
    docs = make_docs(args.topic, args.events)
    start = time.time()
    for i in range(0, len(docs), args.batch):
        outbox.insert_many(docs[i : i + args.batch], ordered=True)
    end = time.time()
    print(json.dumps({"start": start, "end": end, "rate": len(docs) / (end - start)}), flush=True)
    client.close()


def naive(args: argparse.Namespace) -> None:
    settings = load_settings()
    client = mongo_client(settings)
    producer = Producer(producer_config(settings, **{"linger.ms": 5}))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    pipeline = [{"$match": {"operationType": "insert"}}]
    streams = [client[db].outbox.watch(pipeline) for db in args.db]

    def forward(stream: Any) -> None:
        with stream:
            while not stopping.is_set():
                change = stream.try_next()
                if change is None:
                    continue
                doc = change["fullDocument"]
                value = json.dumps({**doc, "event_id": doc.pop("_id"), "occurred_at": doc["occurred_at"].isoformat()},
                                   default=str).encode()
                while True:
                    try:
                        producer.produce(doc["topic"], value=value, key=doc["aggregate_id"].encode())
                        break
                    except BufferError:
                        time.sleep(0.01)

    threads = [threading.Thread(target=forward, args=(s,), daemon=True) for s in streams]
    for thread in threads:
        thread.start()
    print("READY", flush=True)
    while not stopping.is_set():
        producer.poll(0.05)
    for thread in threads:
        thread.join(10)
    producer.flush(30)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--db", required=True)
    w.add_argument("--topic", required=True)
    w.add_argument("--events", type=int, default=10000)
    w.add_argument("--batch", type=int, default=500)
    n = sub.add_parser("naive")
    n.add_argument("--db", required=True, action="append", help="an outbox database to watch (repeatable)")
    args = parser.parse_args()
    configure_logging("WARNING")
    {"writer": writer, "naive": naive}[args.role](args)


if __name__ == "__main__":
    main()
