"""Benchmark: the change-stream tailer vs a hand-rolled polling relay vs the raw limits. Prints figures.

    .venv/bin/python bench/bench_tailer.py [--events 20000] [--rounds 7] [--polling-events 2000] [--rate 100]
                                           [--seconds 15] [--live-rounds 5] [--live-only]

A run is the backlog rounds, then the live rounds (below), then latency, then the polling relay.

Throughput is measured from a backlog (the outbox pre-loaded with insert_many, since SecantusDB commits only a
few hundred transactions/s) as a steady rate: the tailer from its first Kafka acknowledgement to its last, the
bare read from its first change to its last, the polling relay likewise (the bare produce from the first send
to the flush).
The tailer's startup (lease, fence, topic check, stream open, first batch) is printed on its own. Latency is
taken at a steady moderate rate of single-event transactions: outbox commit (the insert's transaction returned)
-> Kafka acknowledgement (delivery report), once the tailer is running (one warm-up event forwarded first).
Raw limits: two bare change-stream reads of the same backlog, pymongo's `watch()` with its default decoding,
and the bare commands (`aggregate` + `getMore` into RawBSONDocument replies, nothing decoded: what the
tailer's fetcher process runs), both with the tailer's batch size; the faster of the two is the read limit.
And a bare pipelined Kafka produce of the same events.

SecantusDB's speed drifts during a run (its oplog and retryable-write records grow), so the tailer and the
bare reads run side by side in rounds, rotating which goes first; the ratio is taken per round and the
verdict uses the median round.

Live: a writer process inserts `--live-events` in batches while a forwarder forwards, in rounds of the writer
alone, with a naive forwarder (`watch()` -> produce, no bookkeeping; bench/live.py) and with the tailer, each in
a process of its own: the tailer's forwarding rate against the naive one's, and the writer's rate with each on
against its rate alone (the cost on the source).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from confluent_kafka import Consumer, Producer, TopicPartition
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from bench.polling_relay import PollingRelay
from cdc.event import Event
from cdc.kafka import ensure_topics, kafka_config, producer_config
from cdc.logs import configure_logging
from cdc.mongo import mongo_client
from cdc.outbox import Document, outbox_document
from cdc.settings import Settings, load_settings
from cdc.tailer import Tailer

RAW_PIPELINE: list[Document] = [{"$match": {"operationType": "insert"}}]


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
        try:
            outbox.insert_many(docs[i : i + 1000], ordered=False)
        except BulkWriteError as exc:
            # A retried insert_many (the first attempt's reply lost) finds its own documents already there.
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise
    return len(docs) / (time.perf_counter() - start)


class Acks:
    """Acknowledgement times by event id (recorded from the delivery callback), and a wait on them."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def add(self, event_id: str, when: float) -> None:
        # Runs in the producer's delivery thread for every event: a dict write, no lock and no notify,
        # so that the measurement does not slow down what it measures.
        self.times.setdefault(event_id, when)

    def wait(self, ids: set[str], timeout: float) -> float:
        """Until every id is acknowledged; returns the last acknowledgement time."""
        deadline = time.monotonic() + timeout
        # While fewer acks than ids have arrived some are surely missing: that count check is all a poll costs
        # then (scanning 20,000 ids every poll would take the GIL from the tailer it measures).
        while len(self.times) < len(ids) or any(i not in self.times for i in ids):
            if time.monotonic() > deadline:
                missing = sum(1 for i in ids if i not in self.times)
                raise TimeoutError(f"{missing} events not acknowledged")
            time.sleep(0.05)
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


def first_checkpoint(settings: Settings, client: Any, db: str) -> None:
    """Run a tailer on the empty outbox until it has a checkpoint, so that a backlog is read from the stream."""
    tailer = Tailer(settings, [db], client=client).start()
    checkpoints = client[settings.tailer_state_database]["checkpoints"]
    while not (checkpoints.find_one({"_id": f"{db}.outbox"}) or {}).get("token"):
        time.sleep(0.05)
    tailer.stop()


def tailer_backlog(settings: Settings, client: Any, topic: str, n: int) -> tuple[float, float]:
    """(events/s, startup s) of the tailer draining a pre-loaded backlog of `n` events: the rate from its first
    acknowledgement to its last, and the time from its start to the first one (lease, fence, topic check,
    stream open, first batch)."""
    db = f"bench_tail_{uuid.uuid4().hex[:6]}"
    first_checkpoint(settings, client, db)
    docs = make_docs(topic, n)
    preload(client[db].outbox, docs)
    acks = Acks()
    start = time.time()
    tailer = Tailer(settings, [db], client=client, on_ack=lambda s: acks.add(s.event_id, s.ack_time)).start()
    last = acks.wait({d["_id"] for d in docs}, timeout=600)
    first = min(acks.times.values())
    tailer.stop()
    client.drop_database(db)
    return (n - 1) / (last - first), first - start


def tailer_latency(settings: Settings, client: Any, topic: str, args: argparse.Namespace) -> list[float]:
    """Outbox commit -> Kafka acknowledgement (ms) of single-event transactions at `args.rate`/s."""
    db = f"bench_lat_{uuid.uuid4().hex[:6]}"
    first_checkpoint(settings, client, db)
    acks = Acks()
    tailer = Tailer(settings, [db], client=client, on_ack=lambda s: acks.add(s.event_id, s.ack_time)).start()
    warm_up = make_docs(topic, 1)
    steady(client[db].outbox, warm_up, args.rate)
    acks.wait({warm_up[0]["_id"]}, timeout=60)
    acks.times.clear()
    commits = steady(client[db].outbox, make_docs(topic, int(args.rate * args.seconds)), args.rate)
    acks.wait(set(commits), timeout=120)
    tailer.stop()
    client.drop_database(db)
    return latencies_ms(commits, acks)


def unpublished(docs: list[Document]) -> list[Document]:
    """The outbox documents as the polling relay's writers store them (the tailer needs no such flag)."""
    return [{**doc, "published": False} for doc in docs]


def run_polling(settings: Settings, client: Any, topic: str, args: argparse.Namespace) -> dict[str, Any]:
    db = f"bench_poll_{uuid.uuid4().hex[:6]}"
    outbox = client[db].outbox
    # As a hand-rolled relay's services write them: a `published` flag, indexed with the creation order.
    outbox.create_index([("published", 1), ("occurred_at", 1), ("version", 1), ("_id", 1)])
    docs = unpublished(make_docs(topic, args.polling_events))
    preload(outbox, docs)
    acks = Acks()
    relay = PollingRelay(settings, outbox, on_ack=acks.add).start()
    last = acks.wait({d["_id"] for d in docs}, timeout=300)
    # A steady rate, first acknowledgement to last, as for the tailer.
    throughput = (len(docs) - 1) / (last - min(acks.times.values()))
    steady_docs = unpublished(make_docs(topic, int(args.rate * args.seconds)))
    commits = steady(outbox, steady_docs, args.rate)
    acks.wait(set(commits), timeout=120)
    relay.stop()
    client.drop_database(db)
    return {"throughput": throughput, "lat": latencies_ms(commits, acks)}


def raw_stream(settings: Settings, client: Any, topic: str, n: int) -> float:
    """Events/s of a bare change-stream read of a pre-loaded backlog of `n` events, first change to last."""
    db = f"bench_raw_{uuid.uuid4().hex[:6]}"
    outbox = client[db].outbox
    options: dict[str, Any] = {"batch_size": settings.tailer_batch_size,
                               "max_await_time_ms": settings.tailer_max_await_ms}
    with outbox.watch(RAW_PIPELINE, **options) as s:
        token = s.resume_token
    preload(outbox, make_docs(topic, n))
    read = 0
    first = 0.0
    with outbox.watch(RAW_PIPELINE, resume_after=token, **options) as stream:
        while read < n:
            if stream.try_next() is not None:
                read += 1
                if read == 1:
                    first = time.perf_counter()
    rate = (read - 1) / (time.perf_counter() - first)
    client.drop_database(db)
    return rate


def raw_commands(settings: Settings, client: Any, topic: str, n: int) -> float:
    """Events/s of the bare commands of a change stream (aggregate, then getMore into RawBSONDocument replies,
    only the batch lengths read) over a pre-loaded backlog of `n` events, first batch with changes to last."""
    db = f"bench_cmd_{uuid.uuid4().hex[:6]}"
    outbox = client[db].outbox
    with outbox.watch(RAW_PIPELINE) as s:
        token = s.resume_token
    preload(outbox, make_docs(topic, n))
    raw = client.get_database(db, codec_options=CodecOptions(document_class=RawBSONDocument))
    read = first_batch = 0
    first = 0.0
    with client.start_session(causal_consistency=False) as session:
        reply = raw.command({"aggregate": "outbox", "pipeline": [{"$changeStream": {"resumeAfter": token}},
                                                                 *RAW_PIPELINE],
                             "cursor": {"batchSize": settings.tailer_batch_size}},
                            session=session, codec_options=raw.codec_options)
        batch = reply["cursor"]["firstBatch"]
        while True:
            if batch and not read:  # the steady rate counts the changes after the first batch
                first, first_batch = time.perf_counter(), len(batch)
            read += len(batch)
            if read >= n:
                break
            reply = raw.command({"getMore": Int64(reply["cursor"]["id"]), "collection": "outbox",
                                 "batchSize": settings.tailer_batch_size,
                                 "maxTimeMS": settings.tailer_max_await_ms},
                                session=session, codec_options=raw.codec_options)
            batch = reply["cursor"]["nextBatch"]
        rate = (read - first_batch) / (time.perf_counter() - first)
        raw.command({"killCursors": "outbox", "cursors": [reply["cursor"]["id"]]}, session=session)
    client.drop_database(db)
    return rate


def raw_produce(settings: Settings, topic: str, n: int) -> float:
    """Events/s of a bare pipelined produce of `n` events (the tailer's value, key and headers) until acked."""
    events = [Event.parse(d) for d in make_docs(topic, n)]
    producer = Producer(producer_config(settings, **{"linger.ms": settings.tailer_linger_ms}))
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
    return n / (time.perf_counter() - start)


def side_by_side(settings: Settings, client: Any, topic: str, args: argparse.Namespace) -> dict[str, float]:
    """The bare produce (3 runs), then rounds of the tailer and the two bare reads, rotating which goes first;
    prints each round and returns the medians. The produce runs apart: a 35,000 events/s burst leaves the
    broker busy for a moment, which slowed whichever run came right after it."""
    produce = statistics.median(raw_produce(settings, topic, args.events) for _ in range(3))
    print(f"bare produce: {produce:,.0f} events/s (median of 3 runs)")
    print("limit = the faster bare read (watch() or the bare commands), or the bare produce if slower")
    print(f"{'round':<7}{'first':<8}{'watch()/s':>11}{'commands/s':>12}{'tailer/s':>10}{'tailer/limit':>14}"
          f"{'tailer/watch()':>16}")
    runs = ("watch", "commands", "tailer")
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        order = runs[r % 3 :] + runs[: r % 3]
        got: dict[str, float] = {"produce": produce}
        for what in order:
            if what == "watch":
                got["watch"] = raw_stream(settings, client, topic, args.events)
            elif what == "commands":
                got["commands"] = raw_commands(settings, client, topic, args.events)
            else:
                got["tailer"], got["startup"] = tailer_backlog(settings, client, topic, args.events)
        got["limit"] = min(max(got["watch"], got["commands"]), produce)
        got["share"] = got["tailer"] / got["limit"]
        got["share_watch"] = got["tailer"] / min(got["watch"], produce)
        rounds.append(got)
        print(f"{r + 1:<7}{order[0]:<8}{got['watch']:>11,.0f}{got['commands']:>12,.0f}{got['tailer']:>10,.0f}"
              f"{got['share']:>14.0%}{got['share_watch']:>16.0%}", flush=True)
    keys = ("watch", "commands", "limit", "produce", "tailer", "share", "share_watch", "startup")
    median = {k: statistics.median(g[k] for g in rounds) for k in keys}
    print(f"{'median':<15}{median['watch']:>11,.0f}{median['commands']:>12,.0f}{median['tailer']:>10,.0f}"
          f"{median['share']:>14.0%}{median['share_watch']:>16.0%}")
    return median


# -- live: a writer inserting while the forwarder forwards, each in its own process ------------------------------

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _topic_end(settings: Settings, topic: str) -> tuple[int, float]:
    """(records on `topic`, the newest record's timestamp in seconds)."""
    consumer = Consumer(kafka_config(settings, **{"group.id": f"bench-{uuid.uuid4().hex[:6]}",
                                                  "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total, newest = 0, 0.0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
            if high > low:
                consumer.assign([TopicPartition(topic, p, high - 1)])
                msg = consumer.poll(10)
                if msg is not None and msg.error() is None:
                    newest = max(newest, msg.timestamp()[1] / 1000)
        return total, newest
    finally:
        consumer.close()


def _start_forwarder(settings: Settings, client: Any, kind: str, dbs: list[str]) -> subprocess.Popen[bytes]:
    """The naive forwarder or `cdcflow tail`, watching the outboxes of `dbs`, started and ready (streams open)."""
    if kind == "naive":
        proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "live.py"), "naive",
                                 *(a for db in dbs for a in ("--db", db))], stdout=subprocess.PIPE, cwd=REPO)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"READY":
            raise RuntimeError("the naive forwarder did not start")
        return proc
    # The bench's own databases are not the services' the tailer's role may read: run it as admin.
    proc = subprocess.Popen([sys.executable, "-m", "cli", "--log-level", "WARNING", "tail",
                             *(a for db in dbs for a in ("-d", db))], cwd=REPO,
                            env={**os.environ, "CDCFLOW_ROLE": "admin"})
    checkpoints = client[settings.tailer_state_database]["checkpoints"]
    deadline = time.monotonic() + 60
    while not all((checkpoints.find_one({"_id": f"{db}.outbox"}) or {}).get("token") for db in dbs):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the tailer did not reach its first checkpoint")
        time.sleep(0.05)
    return proc


def live_run(settings: Settings, client: Any, kind: str, args: argparse.Namespace) -> dict[str, float]:
    """One live run: the writer inserts `args.live_events` in batches while `kind` (alone | naive | tailer)
    forwards; returns the writer's rate, the forwarding rate (first insert -> last record on Kafka) and the
    forwarder's CPU seconds."""
    run = uuid.uuid4().hex[:6]
    # One busy outbox, the others idle, as when `cdcflow tail` watches every service while one writes.
    dbs = [f"bench_live_{run}_{i}" for i in range(args.live_outboxes)]
    db = dbs[0]
    topic = f"bench_live_{run}"
    ensure_topics(settings, [topic])
    for name in dbs:
        client[name].create_collection("outbox")
    proc = None if kind == "alone" else _start_forwarder(settings, client, kind, dbs)
    cpu_before = _cpu_seconds(proc.pid) if proc else 0.0
    server_before = _cpu_seconds(_mongo_pid(settings))
    out = subprocess.run([sys.executable, str(BENCH_DIR / "live.py"), "writer", "--db", db, "--topic", topic,
                          "--events", str(args.live_events), "--batch", str(args.live_batch)],
                         capture_output=True, check=True, cwd=REPO)
    wrote = json.loads(out.stdout.decode().strip().splitlines()[-1])
    got: dict[str, float] = {"writer": wrote["rate"]}
    got["server_cpu"] = _cpu_seconds(_mongo_pid(settings)) - server_before
    if proc is not None:
        deadline = time.monotonic() + 300
        while (count := _topic_end(settings, topic)[0]) < args.live_events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind}: {count} of {args.live_events} events on Kafka")
            time.sleep(0.2)
        got["cpu"] = _cpu_seconds(proc.pid) - cpu_before
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        count, newest = _topic_end(settings, topic)
        got["forward"] = args.live_events / (newest - wrote["start"])
    for name in dbs:
        client.drop_database(name)
    return got


def _mongo_pid(settings: Settings) -> int:
    return int((settings.runtime_dir / "mongo.pid").read_text())


def live(settings: Settings, client: Any, args: argparse.Namespace) -> dict[str, float]:
    """Rounds of the writer alone, with the naive forwarder and with the tailer, rotating the order."""
    print(f"live: {args.live_events} events inserted in batches of {args.live_batch} while forwarding; "
          f"{args.live_rounds} rounds; writer, naive forwarder and tailer each in its own process")
    print("w/s: the writer's inserts/s; f/s: forwarded/s (first insert -> last record on Kafka); cpu: the "
          "forwarder's CPU seconds; srv: MongoDB's CPU seconds while the writer wrote")
    print(f"{'round':<7}{'alone w/s':>11}{'naive w/s':>11}{'tailer w/s':>12}{'naive f/s':>11}{'tailer f/s':>12}"
          f"{'naive cpu':>11}{'tailer cpu':>12}{'srv alone':>11}{'srv naive':>11}{'srv tailer':>12}")
    kinds = ("alone", "naive", "tailer")
    rounds: list[dict[str, float]] = []
    for r in range(args.live_rounds):
        order = kinds[r % 3 :] + kinds[: r % 3]
        runs = {kind: live_run(settings, client, kind, args) for kind in order}
        got = {
            "alone": runs["alone"]["writer"], "naive_w": runs["naive"]["writer"], "tailer_w": runs["tailer"]["writer"],
            "naive_f": runs["naive"]["forward"], "tailer_f": runs["tailer"]["forward"],
            "naive_cpu": runs["naive"]["cpu"], "tailer_cpu": runs["tailer"]["cpu"],
            "alone_srv": runs["alone"]["server_cpu"], "naive_srv": runs["naive"]["server_cpu"],
            "tailer_srv": runs["tailer"]["server_cpu"],
        }
        got["forward_ratio"] = got["tailer_f"] / got["naive_f"]
        got["writer_share"] = got["tailer_w"] / got["alone"]
        got["writer_share_naive"] = got["naive_w"] / got["alone"]
        rounds.append(got)
        print(f"{r + 1:<7}{got['alone']:>11,.0f}{got['naive_w']:>11,.0f}{got['tailer_w']:>12,.0f}"
              f"{got['naive_f']:>11,.0f}{got['tailer_f']:>12,.0f}{got['naive_cpu']:>10.1f}s{got['tailer_cpu']:>11.1f}s"
              f"{got['alone_srv']:>10.1f}s{got['naive_srv']:>10.1f}s{got['tailer_srv']:>11.1f}s", flush=True)
    median = {k: statistics.median(g[k] for g in rounds) for k in rounds[0]}
    print(f"{'median':<7}{median['alone']:>11,.0f}{median['naive_w']:>11,.0f}{median['tailer_w']:>12,.0f}"
          f"{median['naive_f']:>11,.0f}{median['tailer_f']:>12,.0f}{median['naive_cpu']:>10.1f}s"
          f"{median['tailer_cpu']:>11.1f}s{median['alone_srv']:>10.1f}s{median['naive_srv']:>10.1f}s"
          f"{median['tailer_srv']:>11.1f}s")
    print(f"live forwarding, tailer / naive forwarder: {median['forward_ratio']:.2f}x   "
          f"(target >= 1.0x: {'met' if median['forward_ratio'] >= 1.0 else 'NOT met'})")
    print(f"writer's rate with the tailer on: {median['writer_share']:.0%} of alone; with the naive forwarder on: "
          f"{median['writer_share_naive']:.0%}   (target: >= the naive's, aiming at >= 90%: "
          f"{'met' if median['writer_share'] >= median['writer_share_naive'] else 'NOT met'})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="backlog size for the tailer and raw limits")
    parser.add_argument("--rounds", type=int, default=7, help="side-by-side rounds of the tailer and the bare reads")
    parser.add_argument("--polling-events", type=int, default=2000, help="backlog size for the polling relay")
    parser.add_argument("--rate", type=float, default=100.0, help="steady rate (events/s) for latency")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of the steady phase")
    parser.add_argument("--live-only", action="store_true", help="only the live rounds")
    parser.add_argument("--live-events", type=int, default=10000, help="events the live writer inserts")
    parser.add_argument("--live-batch", type=int, default=500, help="events per insert_many of the live writer")
    parser.add_argument("--live-rounds", type=int, default=5, help="live rounds")
    parser.add_argument("--live-outboxes", type=int, default=3,
                        help="outboxes the forwarders watch (one busy, the others idle, as `cdcflow tail` runs)")
    args = parser.parse_args()
    configure_logging("WARNING")
    settings = load_settings()
    client = mongo_client(settings)
    topic = f"bench_tailer_{uuid.uuid4().hex[:6]}"
    ensure_topics(settings, [topic])

    print(f"cdcflow tailer benchmark: {args.rounds} rounds of a {args.events}-event backlog (polling relay: "
          f"{args.polling_events}), steady {args.rate:.0f} events/s for {args.seconds:.0f}s; "
          "SecantusDB + Kafka on this machine")
    print()
    if args.live_only:
        live(settings, client, args)
        client.close()
        return
    median = side_by_side(settings, client, topic, args)
    print()
    live(settings, client, args)
    print()
    # The polling relay goes last: its one write per event fills SecantusDB's retryable-write records, which
    # makes every later write on that server slower for half an hour.
    lat = tailer_latency(settings, client, topic, args)
    poll = run_polling(settings, client, topic, args)
    print()
    print(f"{'':32}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'(a) change-stream tailer':32}{median['tailer']:>12,.0f}{pct(lat, 50):>10.1f}{pct(lat, 99):>10.1f}")
    print(f"{'(b) polling relay (100 ms)':32}{poll['throughput']:>12,.0f}"
          f"{pct(poll['lat'], 50):>10.1f}{pct(poll['lat'], 99):>10.1f}")
    print(f"{'(c) bare change-stream watch()':32}{median['watch']:>12,.0f}")
    print(f"{'(c) bare change-stream commands':32}{median['commands']:>12,.0f}")
    print(f"{'(c) bare Kafka produce':32}{median['produce']:>12,.0f}")
    print()
    # Counted from the tailer's start (lease, stream open, first batch), as a user restarting it would see it.
    with_startup = args.events / (args.events / median["tailer"] + median["startup"])
    speedup = with_startup / poll["throughput"]
    p50 = pct(lat, 50)
    print(f"tailer / polling relay throughput, the tailer's start-up included: {speedup:.1f}x   "
          f"(target >= 20x: {'met' if speedup >= 20 else 'NOT met'}); steady rate alone: "
          f"{median['tailer'] / poll['throughput']:.1f}x")
    print(f"tailer p50 latency: {p50:.1f} ms   (target <= 10 ms: {'met' if p50 <= 10 else 'NOT met'})")
    print(f"tailer / smaller raw limit, median round: {median['share']:.0%}   "
          f"(target >= 80%: {'met' if median['share'] >= 0.8 else 'NOT met'}); "
          f"against the watch() read alone: {median['share_watch']:.0%}")
    print(f"polling relay / tailer p50 latency: {pct(poll['lat'], 50) / max(p50, 0.001):.1f}x")
    print(f"tailer startup (start -> first acknowledgement), median round: {median['startup'] * 1000:.0f} ms")
    client.close()


if __name__ == "__main__":
    main()
