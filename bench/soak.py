"""Soak: the whole pipeline under `cdcflow load` while its parts fail, then every read model checked against the
sources.

Services, tailer and workers run as processes (as `cdcflow demo` runs them) in a deployment of their own (service
databases, tailer state, Kafka topics and groups, read-model namespace: all prefixed), so the soak can share the
servers with anything else. While the load runs, in turn: the tailer is killed (-9) and started again, a worker
process is killed (-9, its supervisor restarts it), the Kafka broker is stopped and brought back, Postgres is
stopped (fast shutdown) and brought back. Once the load is over and every stage has caught up, each read model
must equal what the source databases hold:

- the order view equals the fold of the order service's events, at each order's latest version in `order_events`;
- the stock view equals `product_service.products` (stock and version of every product);
- the purchase graph holds exactly the purchases of those orders;
- the clickstream holds every page view the clickstream service wrote, each once;
- no dead letter anywhere (every event of the load is valid).

    .venv/bin/python bench/soak.py [--seconds 600] [--rate 30] [--seed N]

Exit 0 when every read model equals its source, 1 (with the differences) otherwise. The suite runs a short one
(`tests/integration/test_soak.py`). Servers must be up (`cdcflow infra up`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.checkpoint import CheckpointStore
from cdc.dead_letters import DeadLetterStore
from cdc.event import Event
from cdc.mongo import mongo_client
from cdc.outbox import OUTBOX_COLLECTION, backlog
from cdc.services import SERVICE_DATABASES, service_database
from cdc.settings import Settings, load_settings
from infra.pipeline import Child, Pipeline
from infra.servers.base import Server
from infra.stack import build_servers
from producers.load import LoadGenerator, LoadReport, Targets
from sinks.clickstream import ClickstreamSink
from sinks.order_view import OrderViewSink, fold_orders
from sinks.purchase_graph import PurchaseGraphSink
from sinks.registry import READ_MODELS
from sinks.stock_view import StockViewSink
from streams.dlq import list_dead_letters
from tests.helpers import free_port
from tests.streams_support import caught_up, expected_graph

Document = dict[str, Any]


@dataclass
class Fault:
    """One failure injected during the load: what, when (seconds into the load), for how long."""

    name: str
    at: float
    down_seconds: float = 0.0
    done_at: float | None = None
    detail: str = ""


@dataclass
class SoakReport:
    """What the soak did and what it found."""

    deployment: str
    seed: int
    load: dict[str, Any] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    settle_seconds: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every read model equals its source and nothing was dead-lettered."""
        return not self.differences and self.settle_seconds is not None

    def render(self) -> str:
        """A short human report."""
        lines = [f"soak {self.deployment} (seed {self.seed})",
                 f"load: {self.load.get('requests_ok', 0)} requests ok, {self.load.get('requests_failed', 0)} "
                 f"failed {self.load.get('failures', {})}, {self.load.get('events_written', 0)} events written"]
        for f in self.faults:
            done = "not done" if f.done_at is None else f"at {f.done_at:.1f}s"
            lines.append(f"fault {f.name:<16} {done} (down {f.down_seconds:.0f}s) {f.detail}")
        settled = "never" if self.settle_seconds is None else f"{self.settle_seconds:.1f}s after the load"
        lines.append(f"settled: {settled}")
        lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())))
        lines.append("read models equal the sources" if self.ok else "DIFFERENCES:")
        lines.extend(f"  {d}" for d in self.differences[:40])
        return "\n".join(lines)


def deployment(settings: Settings, name: str) -> tuple[Settings, dict[str, str]]:
    """Settings of a deployment of its own named `name`, and the environment its processes need for it."""
    ports = {"product_port": free_port(), "order_port": free_port(), "clickstream_port": free_port()}
    databases = [f"{name}_{db}" for db in SERVICE_DATABASES.values()]
    own = settings.model_copy(update={
        "service_db_prefix": f"{name}_", "tailer_databases": databases,
        "tailer_state_database": f"{name}_cdcflow_tailer", "kafka_topic_prefix": f"{name}_",
        "kafka_group_prefix": f"{name}.", "sink_namespace": name, **ports,
    })
    env = {
        "CDCFLOW_SERVICE_DB_PREFIX": own.service_db_prefix,
        "CDCFLOW_TAILER_DATABASES": json.dumps(databases),
        "CDCFLOW_TAILER_STATE_DATABASE": own.tailer_state_database,
        "CDCFLOW_KAFKA_TOPIC_PREFIX": own.kafka_topic_prefix,
        "CDCFLOW_KAFKA_GROUP_PREFIX": own.kafka_group_prefix or "",
        "CDCFLOW_SINK_NAMESPACE": name,
        **{f"CDCFLOW_{key.upper()}": str(port) for key, port in ports.items()},
        # The soak's databases and namespaces are its own: the services', tailer's and workers' generated users
        # reach only the deployment's usual ones, so every process runs as admin.
        "CDCFLOW_ROLE": "admin",
        # A worker restarted after kill -9 must come back even after several quick deaths.
        "CDCFLOW_WORKER_RESTART_GIVE_UP": "0",
    }
    return own, env


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class Soak:
    """One soak run: a deployment of its own, its processes, the load, the faults, the final check."""

    def __init__(self, settings: Settings, servers: dict[str, Server], log_dir: Path, seed: int | None = None,
                 name: str | None = None) -> None:
        self.name = name or f"soak{uuid.uuid4().hex[:8]}"
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.settings, self.env = deployment(settings, self.name)
        self.servers = servers
        self.pipeline = Pipeline(self.settings, log_dir, env=self.env)
        self.report = SoakReport(self.name, self.seed)
        self.tailer: Child | None = None
        self.workers: Child | None = None
        self._stop = threading.Event()

    # -- processes ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Services, tailer, workers (one supervised process per read model)."""
        self.pipeline.start_services()
        self.tailer = self.pipeline.start_tailer()
        self.workers = self.pipeline.start_workers()

    def targets(self) -> Targets:
        """Where the load goes."""
        return Targets(product=self.pipeline.service_url("product"), order=self.pipeline.service_url("order"),
                       clickstream=self.pipeline.service_url("clickstream"))

    # -- faults ---------------------------------------------------------------------------------------------

    def kill_tailer(self, fault: Fault) -> None:
        """kill -9 of the tailer; a new one starts after `down_seconds`."""
        assert self.tailer is not None and self.tailer.proc is not None
        self.tailer.proc.kill()
        self.tailer.proc.wait()
        self._pause(fault.down_seconds)
        self.tailer = self.pipeline.start_tailer()
        fault.detail = f"tailer pid {self.tailer.proc.pid if self.tailer.proc else '?'} started"

    def kill_worker(self, fault: Fault) -> None:
        """kill -9 of one read model's worker process; its supervisor restarts it."""
        assert self.workers is not None and self.workers.proc is not None
        children = child_pids(self.workers.proc.pid)
        if not children:
            fault.detail = "no worker process to kill"
            return
        victim = random.Random(self.seed).choice(children)
        os.kill(victim, signal.SIGKILL)
        fault.detail = f"killed worker pid {victim}"

    def stop_server(self, fault: Fault, name: str) -> None:
        """Stop a server (Postgres: fast shutdown, connections cut) and bring it back after `down_seconds`."""
        server = self.servers[name]
        try:
            if name == "postgres":
                server.process.stop(timeout=30, sig=signal.SIGINT)
            else:
                server.stop()
            self._pause(fault.down_seconds)
        finally:
            server.ensure_running()

    def _inject(self, fault: Fault, act: Callable[[Fault], None], started: float) -> None:
        self._pause(max(0.0, started + fault.at - time.monotonic()))
        try:
            act(fault)
            fault.done_at = time.monotonic() - started
        except Exception as exc:  # reported (done_at stays None), the run goes on to its check
            fault.detail = f"failed: {exc!r}"[:300]

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def schedule(self, duration: float, down_seconds: float) -> list[tuple[Fault, Callable[[Fault], None]]]:
        """The faults, spread over the load."""
        plan: list[tuple[Fault, Callable[[Fault], None]]] = [
            (Fault("kill -9 tailer", 0.15 * duration, min(2.0, down_seconds)), self.kill_tailer),
            (Fault("kill -9 worker", 0.3 * duration), self.kill_worker),
            (Fault("stop kafka", 0.45 * duration, down_seconds), lambda f: self.stop_server(f, "kafka")),
            (Fault("stop postgres", 0.7 * duration, down_seconds), lambda f: self.stop_server(f, "postgres")),
        ]
        return plan

    # -- the run --------------------------------------------------------------------------------------------

    def run(self, duration: float, rate: float, down_seconds: float, settle_timeout: float) -> SoakReport:
        """Start, load with faults, settle, compare. The processes are stopped at the end, pass or fail."""
        try:
            self.start()
            generator = LoadGenerator(self.targets(), seed=self.seed, workers=8)
            generator.seed_catalogue()
            result: dict[str, LoadReport] = {}
            loader = threading.Thread(target=lambda: result.setdefault("r", generator.run(rate, duration)),
                                      name="soak-load")
            started = time.monotonic()
            loader.start()
            # Each fault in a thread of its own, at its moment: a slow server restart does not push the next
            # fault past the load.
            injectors = []
            for fault, act in self.schedule(duration, down_seconds):
                self.report.faults.append(fault)
                injectors.append(threading.Thread(target=self._inject, args=(fault, act, started),
                                                  name=f"soak-{fault.name}"))
                injectors[-1].start()
            for injector in injectors:
                injector.join()
            loader.join()
            generator.close()
            if "r" in result:
                self.report.load = result["r"].as_dict()
            self.report.settle_seconds = self.settle(settle_timeout)
            self.report.differences = self.differences()
        finally:
            self._stop.set()
            self.pipeline.stop()
        return self.report

    def settle(self, timeout: float) -> float | None:
        """Wait until every outbox is forwarded, every group has committed its topic and the read models equal
        the sources; seconds waited, or None at the deadline."""
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # a server still coming back: look again
                if self.forwarded() and self.consumed() and not self.differences():
                    return time.monotonic() - start
            time.sleep(1.0)
        return None

    def forwarded(self) -> bool:
        """True when the tailer's watermark covers every outbox document."""
        client = mongo_client(self.settings)
        try:
            store = CheckpointStore(client[self.settings.tailer_state_database]["checkpoints"])
            for service in SERVICE_DATABASES:
                db = client[service_database(self.settings, service)]
                watermark = store.load(f"{db.name}.{OUTBOX_COLLECTION}").watermark
                if backlog(db[OUTBOX_COLLECTION], watermark)[0]:
                    return False
            return True
        finally:
            client.close()

    def consumed(self) -> bool:
        """True when every read model's group has committed every record of its topic."""
        s = self.settings
        return all(caught_up(s, s.kafka_group(rm.consumer_group()), s.kafka_topic(rm.topic), s.kafka_partitions)
                   for rm in READ_MODELS.values())

    # -- the check ------------------------------------------------------------------------------------------

    def _outbox(self, client: Any, service: str) -> list[Document]:
        return list(client[service_database(self.settings, service)][OUTBOX_COLLECTION].find())

    def differences(self) -> list[str]:
        """Every way a read model differs from its source (empty: all equal), and any dead letter."""
        s, ns, out = self.settings, self.name, []
        client = mongo_client(s)
        try:
            order_db = client[service_database(s, "order")]
            order_events = [Event.parse(d) for d in self._outbox(client, "order")]
            latest: dict[str, int] = {}
            for d in order_db["order_events"].find({}, {"order_id": 1, "version": 1}):
                latest[d["order_id"]] = max(latest.get(d["order_id"], 0), d["version"])
            products = {d["_id"]: (d["stock"], d["version"])
                        for d in client[service_database(s, "product")]["products"].find()}
            views = {d["_id"] for d in self._outbox(client, "clickstream") if d.get("type") == "PageViewed"}
            tailer_dead = DeadLetterStore(client[s.tailer_state_database]["dead_letters"]).pending()
        finally:
            client.close()

        folded = fold_orders(order_events)
        folded_versions = {k: r.version for k, r in folded.items()}
        if folded_versions != latest:
            out.append(f"outbox vs order_events: {_diff(folded_versions, latest)}")
        orders, stock, graph, clicks = (OrderViewSink(s, ns), StockViewSink(s, ns), PurchaseGraphSink(s, ns),
                                        ClickstreamSink(s, ns))
        try:
            rows = {r.order_id: r for r in orders.rows()}
            if rows != folded:
                out.append(f"order_view: {_diff(rows, folded)}")
            stock_rows = {r.product_id: (r.stock, r.version) for r in stock.rows()}
            if stock_rows != products:
                out.append(f"stock_view vs products: {_diff(stock_rows, products)}")
            got_graph, want_graph = graph.snapshot(), expected_graph(folded)
            if got_graph != want_graph:
                out.append(f"purchase_graph: {len(got_graph)} purchases, expected {len(want_graph)}"
                           f" ({_list_diff(got_graph, want_graph)})")
            got_views = [v["event_id"] for v in clicks.snapshot()["views"]]
            if len(got_views) != len(set(got_views)):
                out.append(f"clickstream: {len(got_views) - len(set(got_views))} page views doubled")
            if set(got_views) != views:
                out.append(f"clickstream: {len(views - set(got_views))} page views missing, "
                           f"{len(set(got_views) - views)} unknown")
        finally:
            for sink in (orders, stock, graph, clicks):
                sink.close()
        letters = list_dead_letters(s, sorted({rm.topic for rm in READ_MODELS.values()}), timeout=10)
        if letters:
            out.append(f"{len(letters)} dead letters: {[x.reason[:120] for x in letters[:3]]}")
        if tailer_dead:
            out.append(f"{tailer_dead} tailer dead letters")
        self.report.counts = {"orders": len(folded), "products": len(products), "page views": len(views),
                              "purchases": len(expected_graph(folded)), "order events": len(order_events)}
        return out

    def drop(self) -> None:
        """Remove what the soak created: service and tailer databases, read models (topics stay, prefixed)."""
        client = mongo_client(self.settings)
        try:
            for service in SERVICE_DATABASES:
                client.drop_database(service_database(self.settings, service))
            client.drop_database(self.settings.tailer_state_database)
        finally:
            client.close()
        for rm in READ_MODELS.values():
            sink = rm.sink(self.settings, self.name)
            try:
                sink.drop()
            finally:
                sink.close()


def _diff(got: dict[Any, Any], want: dict[Any, Any]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    parts = [f"{len(missing)} missing {missing[:3]}", f"{len(extra)} extra {extra[:3]}",
             f"{len(wrong)} differ"]
    if wrong:
        k = wrong[0]
        parts.append(f"e.g. {k!r}: {got[k]!r} != {want[k]!r}")
    return ", ".join(parts)


def _list_diff(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> str:
    g = {json.dumps(x, sort_keys=True, default=str) for x in got}
    w = {json.dumps(x, sort_keys=True, default=str) for x in want}
    return f"{len(w - g)} missing, {len(g - w)} unexpected; e.g. {sorted(w - g)[:1]} {sorted(g - w)[:1]}"


@contextlib.contextmanager
def soak(settings: Settings, servers: dict[str, Server], log_dir: Path, seed: int | None = None) -> Iterator[Soak]:
    """A Soak whose deployment is dropped afterwards."""
    run = Soak(settings, servers, log_dir, seed)
    try:
        yield run
    finally:
        with contextlib.suppress(Exception):
            run.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=30.0, help="load actions per second")
    parser.add_argument("--down", type=float, default=15.0, help="seconds Kafka and Postgres stay down")
    parser.add_argument("--settle", type=float, default=600.0, help="deadline to catch up after the load")
    parser.add_argument("--seed", type=int, default=None, help="seed of the load and the fault choices")
    parser.add_argument("--keep", action="store_true", help="keep the soak's databases and read models")
    args = parser.parse_args()
    settings = load_settings()
    servers = {s.name: s for s in build_servers(settings, ["kafka", "postgres"])}
    log_dir = settings.data_dir / "soak"
    run = Soak(settings, servers, log_dir, args.seed)
    print(f"soak {run.name}: seed {run.seed}, logs in {log_dir}", flush=True)
    try:
        report = run.run(args.seconds, args.rate, args.down, args.settle)
    finally:
        if not args.keep:
            with contextlib.suppress(Exception):
                run.drop()
    print(report.render())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
