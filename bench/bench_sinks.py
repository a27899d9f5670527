"""Sink write rates: batched `write(batch)` vs a naive per-event write (`write([event])`: one transaction or
statement round per event), side by side, per read model, on the local servers. A script, not a test.

    .venv/bin/python bench/bench_sinks.py [--events 3000] [--naive-events 300] [--batch 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.event import Event
from cdc.logs import configure_logging
from cdc.settings import load_settings
from sinks.registry import build_sink
from tests.helpers import unique
from tests.streams_support import order_lifecycle, page_view, stock_events

KINDS = [["paid", "shipped", "delivered"], ["cancelled"], ["paid", "refunded"], ["paid"]]


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


def rate(name: str, events: list[Event], batch: int) -> float:
    settings = load_settings()
    sink = build_sink(name, settings, unique("bench"))
    sink.setup()
    try:
        warm = GENERATORS[name](50, unique("w"))  # plan the queries / prepare statements first
        sink.write(warm)
        start = time.perf_counter()
        for i in range(0, len(events), batch):
            sink.write(events[i:i + batch])
        return len(events) / (time.perf_counter() - start)
    finally:
        sink.drop()
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--naive-events", type=int, default=300)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--read-model", action="append", choices=list(GENERATORS))
    args = parser.parse_args()
    configure_logging("WARNING", json=False)
    print(f"{'read model':<16}{'batched ev/s':>14}{'naive ev/s':>12}{'speed-up':>10}   "
          f"(batched: {args.events} events in batches of {args.batch}; "
          f"naive: {args.naive_events} events, 1 per write)")
    for name in args.read_model or list(GENERATORS):
        batched = rate(name, GENERATORS[name](args.events, unique("b")), args.batch)
        naive = rate(name, GENERATORS[name](args.naive_events, unique("n")), 1)
        print(f"{name:<16}{batched:>14,.0f}{naive:>12,.0f}{batched / naive:>9.1f}x", flush=True)


if __name__ == "__main__":
    main()
