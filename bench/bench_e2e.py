"""End to end: outbox commit -> visible in ALL THREE read models, the real pipeline against a naive per-event
write, side by side in one run. Prints figures (a script, not a test).

    .venv/bin/python bench/bench_e2e.py [--orders 2000] [--clicks 2000] [--rate 20] [--seconds 12] [--rounds 2]

Pipeline: two outboxes (an orders one and a clickstream one) -> the change-stream tailer (in this process) ->
Kafka -> three `cdcflow worker` processes per configuration (order_view/Postgres and purchase_graph/Neo4j on
the orders topic, clickstream/Cassandra on the clickstream topic) -> the read models.

(A) the real pipeline: workers at the settings' batching (`stream_batch_size`, `stream_batch_within`).
(B) naive: the same workers with `CDCFLOW_STREAM_BATCH_SIZE=1`, so every event is its own sink write and commit.

Each configuration has its own topics, consumer groups and sink namespaces; both sets of workers run for the
whole run and rounds alternate (A B A B ...), each round a throughput phase then a latency phase:
- throughput: a backlog (orders: OrderCreated + PaymentConfirmed per order, 2 items each; page views) is
  insert_many'd into the outboxes in chunks; time from the first insert until the last event is visible in all
  three stores (counts polled every 100 ms: sum of order versions in Postgres and Neo4j, rows in Cassandra);
- latency: probe events (one per transaction, half OrderCreated, half PageViewed, each with its own key) at a
  steady rate; time from each probe's outbox commit (its transaction returned) until it is visible, through the
  sinks' read queries polled every ~5 ms, in every store that should show it (both Postgres and Neo4j for an
  order, Cassandra for a page view).
Everything the run creates (outbox databases, tailer checkpoints and leases, topics, consumer groups, sink
namespaces) is removed at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg import sql
from pymongo.collection import Collection

from bench.bench_tailer import Acks, pct, preload, steady
from cdc.acks import Sent
from cdc.connect import cassandra_session, neo4j_driver, postgres_connect
from cdc.event import Event
from cdc.kafka import admin_client, ensure_topics
from cdc.logs import configure_logging
from cdc.mongo import mongo_client
from cdc.outbox import Document, outbox_document
from cdc.schemas import OrderCreated, OrderItem, PageViewed, PaymentConfirmed, dlq_topic, payload_json
from cdc.settings import Settings, load_settings
from cdc.tailer import Tailer
from sinks.clickstream import ClickstreamSink
from sinks.order_view import OrderViewSink
from sinks.purchase_graph import PurchaseGraphSink
from tests.streams_support import WorkerProcess

T = TypeVar("T")

ITEMS_PER_ORDER = 2
STORES = ("order_view", "purchase_graph", "clickstream")
ORDER_MODELS = ("order_view", "purchase_graph")


# -- events -----------------------------------------------------------------------------------------------


def new_order(topic: str, order_id: str, customer_id: str, i: int) -> tuple[Event, Decimal]:
    """OrderCreated v1 of two distinct products (p{i}, p{7i+1} mod 200: never equal)."""
    items = [OrderItem(product_id=f"p{i % 200}", quantity=1, unit_price=Decimal("9.99")),
             OrderItem(product_id=f"p{(7 * i + 1) % 200}", quantity=2, unit_price=Decimal("4.50"))]
    total = sum((x.unit_price * x.quantity for x in items), Decimal("0.00"))
    created = OrderCreated(order_id=order_id, customer_id=customer_id, items=items, total=total)
    return Event.create(topic=topic, aggregate_type="Order", aggregate_id=order_id, type="OrderCreated",
                        payload=payload_json(created), version=1, source_service="bench"), total


def order_docs(topic: str, tag: str, n_events: int) -> list[Document]:
    """n_events/2 orders, each OrderCreated (v1) then PaymentConfirmed (v2), in that order."""
    docs: list[Document] = []
    for i in range(n_events // 2):
        order_id = f"{tag}-o{i}"
        created, total = new_order(topic, order_id, f"c{i % 300}", i)
        paid = Event.create(topic=topic, aggregate_type="Order", aggregate_id=order_id, type="PaymentConfirmed",
                            payload=payload_json(PaymentConfirmed(order_id=order_id, amount=total)), version=2,
                            source_service="bench")
        docs += [outbox_document(created), outbox_document(paid)]
    return docs


def page_view(topic: str, user_id: str, product_id: str | None, at: datetime) -> Event:
    view = PageViewed(user_id=user_id, url=f"/p/{product_id or 'home'}", product_id=product_id, timestamp=at)
    return Event.create(topic=topic, aggregate_type="User", aggregate_id=user_id, type="PageViewed",
                        payload=payload_json(view), source_service="bench")


def click_docs(topic: str, tag: str, n: int) -> list[Document]:
    now = datetime.now(UTC)
    return [outbox_document(page_view(topic, f"{tag}-u{i % 200}", f"p{i % 200}" if i % 3 else None, now))
            for i in range(n)]


# -- one configuration: its topics, workers, namespaces and readers ---------------------------------------


@dataclass
class Stack:
    """One configuration (A or B) of the read side: topics, consumer groups, namespace, worker processes."""

    label: str
    batch_size: int
    prefix: str  # bench_e2e_<run>_<label>: topics, groups and the sink namespace
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def orders_topic(self) -> str:
        return f"{self.prefix}_orders"

    @property
    def clicks_topic(self) -> str:
        return f"{self.prefix}_clicks"

    @property
    def namespace(self) -> str:
        return self.prefix

    def group(self, read_model: str) -> str:
        return f"{self.prefix}_{read_model}"

    def topics(self) -> list[str]:
        return [self.orders_topic, self.clicks_topic, dlq_topic(self.orders_topic), dlq_topic(self.clicks_topic)]

    def start(self, settings: Settings, log_dir: Path) -> None:
        env = {"CDCFLOW_STREAM_BATCH_SIZE": str(self.batch_size),
               "CDCFLOW_STREAM_BATCH_WITHIN": str(settings.stream_batch_within)}
        for name, topic in (("order_view", self.orders_topic), ("purchase_graph", self.orders_topic),
                            ("clickstream", self.clicks_topic)):
            self.workers.append(WorkerProcess(name, topic, self.group(name), self.namespace, log_dir, env=env,
                                              name=f"{self.label}_{name}"))

    def check_alive(self) -> None:
        dead = [w.read_model for w in self.workers if not w.alive()]
        if dead:
            raise RuntimeError(f"({self.label}) worker(s) exited: {', '.join(dead)}; logs: "
                               f"{self.workers[0].log_path.parent}")


class Counts:
    """Cheap progress counts of a namespace: events applied per store."""

    def __init__(self, settings: Settings, namespace: str) -> None:
        self.pg = postgres_connect(settings, autocommit=True)
        self.neo = neo4j_driver(settings)
        self.cass = cassandra_session(settings)
        self.pg_query = sql.SQL("SELECT coalesce(sum(version), 0) FROM {}.order_view").format(
            sql.Identifier(namespace))
        rel = PurchaseGraphSink(settings, namespace).purchased
        self.neo_query = f"MATCH ()-[r:`{rel}`]->() RETURN coalesce(sum(r.version), 0) AS n"
        self.cass_query = f"SELECT count(*) FROM {namespace}.page_views_by_user_day"

    def order_view(self) -> int:
        """Order events applied: every order's versions are contiguous and applied in order, so their sum."""
        row = self.pg.execute(self.pg_query).fetchone()
        return int(row[0]) if row else 0

    def purchase_graph(self) -> int:
        """Order events applied (sum of versions over the order's relationships, one per item)."""
        with self.neo.session() as session:
            record = session.run(self.neo_query).single()
        return int(record["n"]) // ITEMS_PER_ORDER if record else 0

    def clickstream(self) -> int:
        """Page views stored."""
        return int(self.cass.execute(self.cass_query, timeout=30).one()[0])

    def readers(self) -> list[Callable[[], int]]:
        """One count per store, in STORES order."""
        return [self.order_view, self.purchase_graph, self.clickstream]

    def close(self) -> None:
        self.pg.close()
        self.neo.close()
        self.cass.cluster.shutdown()


@dataclass
class Probe:
    """A latency probe: one event, the key its store(s) are polled by, and when it became visible."""

    doc: Document
    key: str  # order id (Postgres) / user id (Cassandra)
    customer: str = ""  # Neo4j: the probe's own customer
    day: date | None = None
    seen: dict[str, float] = field(default_factory=dict)


def _row_check(sink: OrderViewSink) -> Callable[[Probe], bool]:
    return lambda p: sink.get(p.key) is not None


def _graph_check(sink: PurchaseGraphSink) -> Callable[[Probe], bool]:
    return lambda p: bool(sink.purchases(p.customer))


def _views_check(sink: ClickstreamSink) -> Callable[[Probe], bool]:
    return lambda p: bool(sink.views(p.key, p.day or date.today()))


class Readers:
    """Per store, a few sink instances (one per poller thread) for visibility checks."""

    def __init__(self, settings: Settings, namespace: str, pollers: int) -> None:
        self.order_view = [OrderViewSink(settings, namespace) for _ in range(pollers)]
        self.purchase_graph = [PurchaseGraphSink(settings, namespace) for _ in range(pollers)]
        self.clickstream = [ClickstreamSink(settings, namespace) for _ in range(pollers)]

    def checks(self, store: str) -> list[Callable[[Probe], bool]]:
        if store == "order_view":
            return [_row_check(s) for s in self.order_view]
        if store == "purchase_graph":
            return [_graph_check(s) for s in self.purchase_graph]
        return [_views_check(s) for s in self.clickstream]

    def close(self) -> None:
        for sink in (*self.order_view, *self.purchase_graph, *self.clickstream):
            sink.close()


# -- phases -----------------------------------------------------------------------------------------------


@dataclass
class Outboxes:
    orders: Collection[Document]
    clicks: Collection[Document]


def drain(stack: Stack, counts: Counts, outboxes: Outboxes, acks: Acks, n_orders: int, n_clicks: int, tag: str,
          timeout: float, failures: list[str]) -> tuple[float, list[float]]:
    """Throughput of one backlog: (events/s, seconds until: all inserted, all acknowledged by Kafka, each
    store showed all of it)."""
    orders = order_docs(stack.orders_topic, tag, n_orders)
    clicks = click_docs(stack.clicks_topic, tag, n_clicks)
    readers = counts.readers()
    want = [retrying(f) + n for f, n in zip(readers, (len(orders), len(orders), len(clicks)), strict=True)]
    start = time.time()
    inserted: list[float] = []

    def load(outbox: Collection[Document], docs: list[Document]) -> None:
        preload(outbox, docs)
        inserted.append(time.time())

    loaders = [threading.Thread(target=load, args=(outboxes.orders, orders)),
               threading.Thread(target=load, args=(outboxes.clicks, clicks))]
    for t in loaders:
        t.start()
    done: list[float | None] = [None, None, None]
    while None in done:
        time.sleep(0.1)
        for k, count in enumerate(readers):  # only the stores not done yet
            if done[k] is not None:
                continue
            try:
                if count() >= want[k]:
                    done[k] = time.time()
            except Exception as exc:  # a shared server restarted by someone else's test: note it, go on
                failures.append(f"{STORES[k]}: {type(exc).__name__}")
        if time.time() - start > timeout:
            stack.check_alive()
            late = [STORES[k] for k in range(3) if done[k] is None]
            raise TimeoutError(f"({stack.label}) backlog not drained in {timeout:.0f}s by {', '.join(late)}")
    for t in loaders:
        t.join()
    finished = [d - start for d in done if d is not None]
    in_kafka = acks.wait({d["_id"] for d in orders + clicks}, timeout=30) - start
    return (len(orders) + len(clicks)) / max(finished), [max(inserted) - start, in_kafka,
                                                          *finished]


def retrying(fn: Callable[[], T], seconds: float = 60) -> T:
    """fn(), retried for a while (the shared servers may be restarted by other test runs)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def poll(check: Callable[[Probe], bool], probes: Sequence[tuple[int, Probe]], store: str, rate: float,
         t0: float, deadline: float, failures: list[str]) -> None:
    """Poll the probes' keys (each once it is due) until every one is visible in `store`."""
    pending = list(probes)
    while pending and time.monotonic() < deadline:
        elapsed = time.perf_counter() - t0
        left: list[tuple[int, Probe]] = []
        for n, probe in pending:
            try:
                visible = n / rate <= elapsed and check(probe)
            except Exception as exc:  # a read that failed is a read that did not see it yet
                failures.append(f"{store}: {type(exc).__name__}")
                visible = False
            if visible:
                probe.seen[store] = time.time()
            else:
                left.append((n, probe))
        pending = left
        time.sleep(0.005)


def latency(stack: Stack, readers: Readers, outboxes: Outboxes, acks: Acks, rate: float, seconds: float,
            tag: str, pollers: int, failures: list[str]) -> dict[str, list[float]]:
    """Per probe, commit -> visible in every store that should show it (ms); also per store, and to Kafka."""
    half = rate / 2
    n = max(1, int(half * seconds))
    day_now = datetime.now(UTC)
    orders = [Probe(outbox_document(new_order(stack.orders_topic, f"{tag}-po{i}", f"{tag}-pc{i}", i)[0]),
                    key=f"{tag}-po{i}", customer=f"{tag}-pc{i}") for i in range(n)]
    views = [Probe(outbox_document(page_view(stack.clicks_topic, f"{tag}-pu{i}", f"p{i % 200}", day_now)),
                   key=f"{tag}-pu{i}", day=day_now.date()) for i in range(n)]
    commits: dict[str, dict[str, float]] = {}

    def insert(name: str, outbox: Collection[Document], probes: list[Probe]) -> None:
        commits[name] = steady(outbox, [p.doc for p in probes], half)

    deadline = time.monotonic() + seconds + 60
    t0 = time.perf_counter()
    threads = [threading.Thread(target=insert, args=("orders", outboxes.orders, orders)),
               threading.Thread(target=insert, args=("clicks", outboxes.clicks, views))]
    for store in STORES:
        numbered = list(enumerate(orders if store in ORDER_MODELS else views))
        for k, check in enumerate(readers.checks(store)):
            threads.append(threading.Thread(target=poll, args=(check, numbered[k::pollers], store, half, t0,
                                                              deadline, failures)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out: dict[str, list[float]] = {"all": [], "kafka": [], **{s: [] for s in STORES}}
    for name, probes, stores in (("orders", orders, ORDER_MODELS), ("clicks", views, ("clickstream",))):
        for p in probes:
            committed = commits[name][p.doc["_id"]]
            missing = [s for s in stores if s not in p.seen]
            if missing:
                stack.check_alive()
                raise TimeoutError(f"({stack.label}) probe {p.key} never visible in {', '.join(missing)}")
            for s in stores:
                out[s].append(max(0.0, p.seen[s] - committed) * 1000)
            out["kafka"].append(max(0.0, acks.times[p.doc["_id"]] - committed) * 1000)
            out["all"].append(max(0.0, max(p.seen[s] for s in stores) - committed) * 1000)
    return out


# -- set-up and clean-up ----------------------------------------------------------------------------------


def wait_checkpoints(client: Any, settings: Settings, databases: list[str], timeout: float = 60) -> None:
    """Until the tailer has an open stream (a resume token) on every outbox."""
    checkpoints = client[settings.tailer_state_database]["checkpoints"]
    deadline = time.monotonic() + timeout
    for db in databases:
        while not (checkpoints.find_one({"_id": f"{db}.{settings.tailer_collection}"}) or {}).get("token"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"tailer did not open a stream on {db}")
            time.sleep(0.05)


def clean_up(settings: Settings, client: Any, run_prefix: str, databases: list[str], stacks: list[Stack]) -> None:
    state = client[settings.tailer_state_database]
    keys = [f"{db}.{settings.tailer_collection}" for db in databases]
    for db in databases:
        client.drop_database(db)
    state["checkpoints"].delete_many({"_id": {"$in": keys}})
    state["leases"].delete_many({"_id": {"$in": keys}})
    for stack in stacks:
        for sink in (OrderViewSink(settings, stack.namespace), PurchaseGraphSink(settings, stack.namespace),
                     ClickstreamSink(settings, stack.namespace)):
            try:
                retrying(sink.drop)
            except Exception as exc:
                print(f"warning: could not drop {sink}: {exc}", file=sys.stderr)
            finally:
                sink.close()
    admin = admin_client(settings)
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(run_prefix)]
    groups = [s.group(m) for s in stacks for m in STORES]
    for what, futures in (("topic", admin.delete_topics(topics, operation_timeout=30) if topics else {}),
                          ("group", admin.delete_consumer_groups(groups, request_timeout=30))):
        for name, future in futures.items():
            try:
                future.result()
            except Exception as exc:
                if "GROUP_ID_NOT_FOUND" in str(exc):  # no worker ever joined it
                    continue
                print(f"warning: could not delete {what} {name}: {exc}", file=sys.stderr)


# -- report -----------------------------------------------------------------------------------------------


@dataclass
class Round:
    label: str
    throughput: float
    drain: list[float]
    lat: dict[str, list[float]]
    failures: list[str]


def median_of(rounds: list[Round], label: str, metric: Callable[[Round], float]) -> float:
    return statistics.median(metric(r) for r in rounds if r.label == label)


def _store_pct(store: str, q: float) -> Callable[[Round], float]:
    return lambda r: pct(r.lat[store], q)


def report(rounds: list[Round], labels: tuple[str, str]) -> None:
    print()
    print(f"{'round':<7}{'':4}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}   backlog done after (s): "
          f"{'inserted':>9}{'in Kafka':>9}{'order_view':>11}{'purchase_graph':>15}{'clickstream':>12}")
    for i, r in enumerate(rounds):
        label = r.label + ("*" if r.failures else "")
        print(f"{i // 2 + 1:<7}{label:<4}{r.throughput:>10,.0f}{pct(r.lat['all'], 50):>9.1f}"
              f"{pct(r.lat['all'], 99):>9.1f}{'':26}" + "".join(
                  f"{v:>{w}.1f}" for v, w in zip(r.drain, (9, 9, 11, 15, 12), strict=True)))
    flagged = [r for r in rounds if r.failures]
    if flagged:
        print("* a server did not answer for a while during this round (shared servers, restarted by other runs?): "
              + "; ".join(sorted({f for r in flagged for f in r.failures})))
    a, b = labels
    metrics: list[tuple[str, Callable[[Round], float]]] = [
        ("throughput, events/s", lambda r: r.throughput),
        ("latency p50, ms (all stores)", lambda r: pct(r.lat["all"], 50)),
        ("latency p99, ms (all stores)", lambda r: pct(r.lat["all"], 99)),
    ]
    for store in ("kafka", *STORES):
        metrics.append((f"  p50 ms, {store}", _store_pct(store, 50)))
        metrics.append((f"  p99 ms, {store}", _store_pct(store, 99)))
    print()
    print(f"{'median of rounds':<30}{'(A) batched':>13}{'(B) naive':>12}{'A/B':>8}")
    for name, metric in metrics:
        ma, mb = median_of(rounds, a, metric), median_of(rounds, b, metric)
        print(f"{name:<30}{ma:>13,.1f}{mb:>12,.1f}{ma / mb if mb else float('nan'):>7.2f}x")
    print("A/B > 1: A is higher (better for events/s, worse for latency). Latency to Kafka: commit -> the "
          "tailer's delivery report; per store: commit -> visible there; all stores: the slowest of them.")


# -- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000, help="orders-topic backlog events per round")
    parser.add_argument("--clicks", type=int, default=2000, help="clickstream backlog events per round")
    parser.add_argument("--rate", type=float, default=20.0, help="probe events/s in the latency phase")
    parser.add_argument("--seconds", type=float, default=12.0, help="duration of the latency phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per configuration (A B A B ...)")
    parser.add_argument("--pollers", type=int, default=2, help="poller threads per store (latency)")
    parser.add_argument("--timeout", type=float, default=180.0, help="max seconds to drain one backlog")
    parser.add_argument("--batch-within", type=float, default=None,
                        help="(A)'s stream_batch_within in seconds (default: the setting's)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs (path printed)")
    args = parser.parse_args()
    configure_logging("WARNING", json=False)
    logging.getLogger("cassandra").setLevel(logging.ERROR)  # "aggregation query without partition key"
    settings = load_settings()
    if args.batch_within is not None:
        settings = settings.model_copy(update={"stream_batch_within": args.batch_within})
    run = uuid.uuid4().hex[:6]
    run_prefix = f"bench_e2e_{run}_"
    stacks = [Stack("A", settings.stream_batch_size, f"{run_prefix}a"), Stack("B", 1, f"{run_prefix}b")]
    databases = [f"{run_prefix}orders", f"{run_prefix}clicks"]
    log_dir = Path(tempfile.mkdtemp(prefix=run_prefix))
    client = mongo_client(settings)
    tailer: Tailer | None = None
    rounds: list[Round] = []
    print(f"cdcflow end-to-end benchmark (run {run}): outbox commit -> visible in order_view (Postgres), "
          f"purchase_graph (Neo4j), clickstream (Cassandra); {os.cpu_count()} CPUs, shared local servers")
    print(f"(A) batched: stream_batch_size={settings.stream_batch_size}, within {settings.stream_batch_within}s"
          f"   (B) naive: stream_batch_size=1, one sink write + commit per event")
    print(f"throughput: backlog of {args.orders} orders-topic + {args.clicks} clickstream events per round; "
          f"latency: {args.rate:g} probes/s (half orders, half page views) for {args.seconds:g}s per round; "
          f"rounds: {' '.join('AB' * args.rounds)}", flush=True)
    counts: dict[str, Counts] = {}
    readers: dict[str, Readers] = {}
    try:
        for db in databases:
            client[db].create_collection("outbox")
        ensure_topics(settings, [t for s in stacks for t in s.topics()])
        for stack in stacks:  # schemas first, so counts work and the workers' own setup is a no-op
            for sink in (OrderViewSink(settings, stack.namespace), PurchaseGraphSink(settings, stack.namespace),
                         ClickstreamSink(settings, stack.namespace)):
                retrying(sink.setup)
                sink.close()
            stack.start(settings, log_dir)
            counts[stack.label] = retrying(partial(Counts, settings, stack.namespace))
            readers[stack.label] = Readers(settings, stack.namespace, args.pollers)
        acks = Acks()

        def on_ack(sent: Sent) -> None:
            acks.add(sent.event_id, sent.ack_time)

        tailer = Tailer(settings, databases, client=client, on_ack=on_ack).start()
        wait_checkpoints(client, settings, databases)
        outboxes = Outboxes(client[databases[0]]["outbox"], client[databases[1]]["outbox"])
        for stack in stacks:  # warm-up: workers joined their groups, plans and statements prepared
            drain(stack, counts[stack.label], outboxes, acks, 40, 40, f"w{stack.label}", 120, [])
        for i in range(args.rounds):
            for stack in stacks:
                tag = f"r{i}{stack.label}"
                failures: list[str] = []
                rate, drained = drain(stack, counts[stack.label], outboxes, acks, args.orders, args.clicks, tag,
                                      args.timeout, failures)
                time.sleep(1.0)
                lat = latency(stack, readers[stack.label], outboxes, acks, args.rate, args.seconds, tag, args.pollers,
                              failures)
                rounds.append(Round(stack.label, rate, drained, lat, failures))
                print(f"  round {i + 1} {stack.label}: {rate:,.0f} events/s, p50 {pct(lat['all'], 50):.1f} ms, "
                      f"p99 {pct(lat['all'], 99):.1f} ms", flush=True)
        report(rounds, ("A", "B"))
    finally:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda w: w.stop(), [w for s in stacks for w in s.workers]))
        if tailer is not None:
            tailer.stop()
        for c in counts.values():
            c.close()
        for r in readers.values():
            r.close()
        clean_up(settings, client, run_prefix, databases, stacks)
        client.close()
        if args.keep_logs:
            print(f"worker logs: {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
