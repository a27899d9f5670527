"""Sink write rates against each store's raw batched write of the same rows, side by side, per read model, on the
local servers. A script that prints figures, not a test.

    .venv/bin/python bench/bench_sinks.py [--events 3000] [--batch 500] [--rounds 5] [--naive-events 300]

For each read model, every round times, in a fresh namespace each and in alternating order (sink first in odd
rounds, raw first in even ones), over the same events in batches of the same size:
- sink: `Sink.write(batch)`, the code the workers and replays run (decode the payload, validate, holds, version
  guards, dedupe, TTL);
- raw: the store's bare batched write of the same rows, the input prepared before the clock starts:
  Postgres: one upsert per event (the row as it stands after that event) with `executemany` in one transaction
  per batch, and `COPY` of those rows into a temporary table + one `INSERT … SELECT … ON CONFLICT` per batch
  (the raw limit is the faster of the two); Neo4j: one `UNWIND … MERGE` of the batch's OrderCreated rows
  (customer, product, relationship) and one `UNWIND … MATCH … SET` of its other rows, one transaction per batch;
  Cassandra: the same prepared inserts (a view's row, its product row, its visitor row), each its own request,
  `execute_concurrent` with a window of 64.
The ratio is sink / raw per round; the table shows the medians. A naive write (`write([event])`, one
transaction or request round per event) is measured once per read model, for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cassandra.concurrent import execute_concurrent
from psycopg import sql

from cdc.connect import cassandra_session, neo4j_driver, postgres_connect
from cdc.event import Event
from cdc.logs import configure_logging
from cdc.settings import Settings, load_settings
from sinks.base import Sink
from sinks.clickstream import ClickstreamSink, page_view_of, ttl_seconds
from sinks.postgres import PostgresFoldSink
from sinks.purchase_graph import PurchaseGraphSink, graph_row
from sinks.registry import build_sink
from tests.helpers import unique
from tests.streams_support import order_lifecycle, page_view, stock_events

KINDS = [["paid", "shipped", "delivered"], ["cancelled"], ["paid", "refunded"], ["paid"]]
#: Concurrent requests of the raw Cassandra write.
CASSANDRA_WINDOW = 64


def order_events(n: int, tag: str) -> list[Event]:
    out: list[Event] = []
    i = 0
    while len(out) < n:
        out += order_lifecycle("orders", f"{tag}-o{i}", f"c{i % 500}", [f"p{i % 200}", f"p{(i * 7) % 200}"],
                               KINDS[i % len(KINDS)])
        i += 1
    return out[:n]


def click_events(n: int, tag: str) -> list[Event]:
    now = datetime.now(UTC)
    return [page_view("clickstream", f"{tag}-u{i % 300}", f"p{i % 200}" if i % 3 else None,
                      now - timedelta(seconds=17 * i)) for i in range(n)]


def inventory_events(n: int, tag: str) -> list[Event]:
    out: list[Event] = []
    p = 0
    while len(out) < n:
        out += stock_events("inventory", f"{tag}-p{p}", 10_000, [1] * 20)
        p += 1
    return out[:n]


GENERATORS: dict[str, Callable[[int, str], list[Event]]] = {
    "order_view": order_events, "stock_view": inventory_events, "purchase_graph": order_events,
    "clickstream": click_events,
}


# -- raw writers: the same rows, the store's bare batched write -----------------------------------------------


class Raw:
    """A raw writer into a sink's (set up) namespace: `rows(events)` before the clock, `write(rows)` timed."""

    label = "raw"

    def rows(self, events: Sequence[Event]) -> list[Any]:
        raise NotImplementedError

    def write(self, rows: Sequence[Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PostgresRaw(Raw):
    """One upsert per event (the row after that event), `executemany` in one transaction per batch."""

    label = "executemany"

    def __init__(self, settings: Settings, sink: Sink) -> None:
        assert isinstance(sink, PostgresFoldSink)
        self.sink = sink
        self.conn = postgres_connect(settings, autocommit=True)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in sink.columns)
        self.updates = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in sink.columns[1:]
        )
        self.cols = cols
        self.upsert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
            sink._t(), cols, sql.SQL(", ").join(sql.Placeholder() * len(sink.columns)),
            sql.Identifier(sink.key_column), self.updates,
        )

    def rows(self, events: Sequence[Event]) -> list[Any]:
        current: dict[str, Any] = {}
        out = []
        for e in events:
            key = self.sink.key_of(e)
            new = self.sink.fold(current.get(key), e)
            if new is not None:
                current[key] = new
                out.append(self.sink.to_db(new))
        return out

    def write(self, rows: Sequence[Any]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(self.upsert, rows)

    def close(self) -> None:
        self.conn.close()


class PostgresCopy(PostgresRaw):
    """The same rows `COPY`ed into a temporary table, then one `INSERT … SELECT … ON CONFLICT` per batch."""

    label = "copy"

    def __init__(self, settings: Settings, sink: Sink) -> None:
        super().__init__(settings, sink)
        assert isinstance(sink, PostgresFoldSink)
        self.conn.execute(sql.SQL("CREATE TEMP TABLE staging (LIKE {}) ON COMMIT DELETE ROWS").format(sink._t()))
        key = sql.Identifier(sink.key_column)
        self.merge = sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM staging ORDER BY {key}, version DESC "
            "ON CONFLICT ({key}) DO UPDATE SET {updates}"
        ).format(t=sink._t(), cols=self.cols, key=key, updates=self.updates)
        self.copy = sql.SQL("COPY staging ({}) FROM STDIN").format(self.cols)

    def write(self, rows: Sequence[Any]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy(self.copy) as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(self.merge)


class Neo4jRaw(Raw):
    """`UNWIND … MERGE` of the batch's OrderCreated rows, `UNWIND … MATCH … SET` of the others, one transaction."""

    label = "unwind merge"

    def __init__(self, settings: Settings, sink: Sink) -> None:
        assert isinstance(sink, PurchaseGraphSink)
        self.driver = neo4j_driver(settings)
        self.created = sink._q("""
            UNWIND $rows AS row
            MERGE (c:$Customer {customer_id: row.customer_id})
            WITH row, c
            UNWIND row.items AS item
            MERGE (p:$Product {product_id: item.product_id})
            MERGE (c)-[r:$PURCHASED {order_id: row.order_id, product_id: item.product_id}]->(p)
            SET r.quantity = item.quantity, r.unit_price = item.unit_price, r.order_total = row.total,
                r.purchased_at = row.at, r.version = row.version, r.status = 'created', r.active = true
            """)
        self.other = sink._q("""
            UNWIND $rows AS row
            MATCH ()-[r:$PURCHASED {order_id: row.order_id}]->()
            SET r.status = row.kind, r.version = row.version
            """)

    def rows(self, events: Sequence[Event]) -> list[Any]:
        return [graph_row(e) for e in events]

    def write(self, rows: Sequence[Any]) -> None:
        created = [r for kind, r in rows if kind == "created"]
        other = [{**r, "kind": kind} for kind, r in rows if kind != "created"]

        def work(tx: Any) -> None:
            if created:
                tx.run(self.created, rows=created).consume()
            if other:
                tx.run(self.other, rows=other).consume()

        with self.driver.session() as session:
            session.execute_write(work)

    def close(self) -> None:
        self.driver.close()


class CassandraRaw(Raw):
    """The clickstream's prepared inserts, one request each, `execute_concurrent` with a window."""

    label = "concurrent inserts"

    def __init__(self, settings: Settings, sink: Sink) -> None:
        assert isinstance(sink, ClickstreamSink)
        self.sink = sink
        self.session = cassandra_session(settings)
        ks = sink.keyspace()
        self.user = self.session.prepare(
            f"INSERT INTO {ks}.page_views_by_user_day (user_id, day, ts, event_id, url, product_id, referrer) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?")
        self.product = self.session.prepare(
            f"INSERT INTO {ks}.product_views_by_day (day, product_id, event_id, user_id, ts) "
            "VALUES (?, ?, ?, ?, ?) USING TTL ?")
        self.visitor = self.session.prepare(
            f"INSERT INTO {ks}.visitors (user_id, last_view) VALUES (?, ?) USING TTL ? AND TIMESTAMP ?")

    def rows(self, events: Sequence[Event]) -> list[Any]:
        out: list[Any] = []
        for e in events:
            v = page_view_of(e)
            ttl = ttl_seconds(v.ts, self.sink.ttl_days)
            uid = UUID(v.event_id)
            out.append([(self.user, (v.user_id, v.day, v.ts, uid, v.url, v.product_id, v.referrer, ttl)),
                        (self.visitor, (v.user_id, v.ts, ttl, int(v.ts.timestamp() * 1_000_000)))]
                       + ([(self.product, (v.day, v.product_id, uid, v.user_id, v.ts, ttl))] if v.product_id else []))
        return out

    def write(self, rows: Sequence[Any]) -> None:
        statements = [s for per_view in rows for s in per_view]
        for result in execute_concurrent(self.session, statements, concurrency=CASSANDRA_WINDOW,
                                         raise_on_first_error=True):
            assert result.success

    def close(self) -> None:
        self.session.cluster.shutdown()


RAWS: dict[str, list[Callable[[Settings, Sink], Raw]]] = {
    "order_view": [PostgresRaw, PostgresCopy], "stock_view": [PostgresRaw, PostgresCopy],
    "purchase_graph": [Neo4jRaw], "clickstream": [CassandraRaw],
}


# -- timing ---------------------------------------------------------------------------------------------------


def fresh_sink(settings: Settings, name: str) -> Sink:
    """A sink in a namespace of its own, set up and warmed (queries planned, statements prepared)."""
    sink = build_sink(name, settings, unique("bench"))
    sink.setup()
    sink.write(GENERATORS[name](50, unique("w")))
    return sink


def time_batches(write: Callable[[Sequence[Any]], None], items: Sequence[Any], batch: int) -> float:
    """items / second written in batches of `batch`."""
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        write(items[i:i + batch])
    return len(items) / (time.perf_counter() - start)


def sink_rate(settings: Settings, name: str, n: int, batch: int) -> float:
    sink = fresh_sink(settings, name)
    try:
        return time_batches(sink.write, GENERATORS[name](n, unique("b")), batch)
    finally:
        sink.drop()
        sink.close()


def raw_rate(settings: Settings, name: str, make: Callable[[Settings, Sink], Raw], n: int, batch: int) -> float:
    sink = fresh_sink(settings, name)  # the same schema, warmed the same way
    raw = make(settings, sink)
    try:
        raw.write(raw.rows(GENERATORS[name](50, unique("w"))))  # plan / prepare the raw statements too
        events = GENERATORS[name](n, unique("b"))
        rows = raw.rows(events)
        rows_per_s = time_batches(raw.write, rows, batch)
        return rows_per_s * len(events) / len(rows) if rows else 0.0  # in events/s
    finally:
        raw.close()
        sink.drop()
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--naive-events", type=int, default=300)
    parser.add_argument("--read-model", action="append", choices=list(GENERATORS))
    args = parser.parse_args()
    configure_logging("WARNING", json=False)
    settings = load_settings()
    names = args.read_model or list(GENERATORS)
    print(f"{args.events} events per run in batches of {args.batch}; {args.rounds} rounds per read model, sink and "
          f"raw alternating which goes first; median of rounds (naive: {args.naive_events} events, one per write)")
    print(f"{'read model':<16}{'sink ev/s':>11}{'raw ev/s':>11}{'sink/raw':>10}   {'raw write':<28}"
          f"{'naive ev/s':>11}{'sink/naive':>11}")
    for name in names:
        sink_rates: list[float] = []
        raw_rates: dict[str, list[float]] = {make.label: [] for make in RAWS[name]}  # type: ignore[attr-defined]
        ratios: list[float] = []
        for r in range(args.rounds):
            raws: dict[str, float] = {}
            sink_first = r % 2 == 0
            if sink_first:
                s = sink_rate(settings, name, args.events, args.batch)
            for make in RAWS[name]:
                raws[make.label] = raw_rate(settings, name, make, args.events, args.batch)  # type: ignore[attr-defined]
            if not sink_first:
                s = sink_rate(settings, name, args.events, args.batch)
            sink_rates.append(s)
            for label, v in raws.items():
                raw_rates[label].append(v)
            ratios.append(s / max(raws.values()))
        naive = sink_rate(settings, name, args.naive_events, 1)
        sink_med = statistics.median(sink_rates)
        raw_meds = {label: statistics.median(v) for label, v in raw_rates.items()}
        best = max(raw_meds, key=lambda k: raw_meds[k])
        print(f"{name:<16}{sink_med:>11,.0f}{raw_meds[best]:>11,.0f}{statistics.median(ratios):>9.0%}   "
              f"{best:<28}{naive:>11,.0f}{sink_med / naive:>10.1f}x", flush=True)
        for label, med in raw_meds.items():
            if label != best:
                print(f"{'':<16}{'':>11}{med:>11,.0f}{'':>10}   {label:<28}")
        print(f"{'':<16}rounds, sink/raw: " + "  ".join(f"{x:.0%}" for x in ratios), flush=True)
    print("sink/raw: median over rounds of the sink's rate / the faster raw write's in the same round (target >= 80%)")


if __name__ == "__main__":
    main()
