"""`cdcflow worker` (all read models): kill -9 of one read model's process brings it back, consuming, while the
others never stop; SIGTERM then stops every process within the bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cdc.kafka import ensure_topics
from cdc.schemas import TOPICS, dlq_topic
from cdc.settings import Settings
from sinks.clickstream import ClickstreamSink
from sinks.order_view import OrderViewSink, fold_orders
from sinks.purchase_graph import PurchaseGraphSink
from sinks.registry import READ_MODELS
from tests.helpers import unique, wait_for
from tests.streams_support import REPO, caught_up, order_lifecycle, page_view, produce

pytestmark = pytest.mark.integration

PARTITIONS = 2
STOP_TIMEOUT = 20


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if f'"event": "{event}"' in line and "{" in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_dash_nine_of_one_read_model_brings_it_back_and_the_others_never_stop(
    settings: Settings, kafka: object, postgres: object, neo4j: object, cassandra: object, tmp_path: Path
) -> None:
    ns = unique("sv")
    topics = {t: f"{ns}_{t}" for t in TOPICS}
    for topic in topics.values():
        ensure_topics(settings, [topic, dlq_topic(topic)], partitions=PARTITIONS)
    log_path = tmp_path / "supervisor.log"
    env = {**os.environ, "CDCFLOW_LOG_JSON": "true", "CDCFLOW_LOG_LEVEL": "INFO", "CDCFLOW_STREAM_BATCH_WITHIN": "0.2",
           "CDCFLOW_WORKER_RESTART_INITIAL": "1", "CDCFLOW_WORKER_STOP_TIMEOUT": str(STOP_TIMEOUT),
           "CDCFLOW_WORKER_SESSION_TIMEOUT": "8"}
    orders, graph, clicks = OrderViewSink(settings, ns), PurchaseGraphSink(settings, ns), ClickstreamSink(settings, ns)
    now = datetime.now(UTC).replace(microsecond=0)
    first = [order_lifecycle(topics["orders"], f"a{i}", "c1", ["p"], ["paid"]) for i in range(5)]
    second = [order_lifecycle(topics["orders"], f"b{i}", "c2", ["p"], ["shipped"]) for i in range(5)]
    views = [page_view(topics["clickstream"], "u1", "p", now - timedelta(minutes=i)) for i in range(20)]

    def group(rm: str) -> str:
        return f"{ns}.{rm}"

    with open(log_path, "ab") as out:
        sup = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--namespace", ns, "--topic-prefix", f"{ns}_",
             "--group-prefix", f"{ns}."], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    pids: dict[str, int] = {}
    try:
        wait_for(lambda: len(log_events(log_path, "worker_process_started")) == len(READ_MODELS), timeout=30,
                 what="one process per read model")
        pids = {e["read_model"]: e["pid"] for e in log_events(log_path, "worker_process_started")}
        produce(settings, topics["orders"], [e for es in first for e in es])
        produce(settings, topics["clickstream"], views[:10])
        for rm in ("order_view", "purchase_graph", "clickstream"):
            wait_for(partial(caught_up, settings, group(rm), f"{ns}_{READ_MODELS[rm].topic}",
                             PARTITIONS), timeout=120, what=f"{rm} consuming")

        os.kill(pids["order_view"], signal.SIGKILL)
        produce(settings, topics["orders"], [e for es in second for e in es])
        produce(settings, topics["clickstream"], views[10:])
        exited = wait_for(lambda: log_events(log_path, "worker_process_exited"), timeout=30, what="death noticed")
        assert [(e["read_model"], e["returncode"]) for e in exited] == [("order_view", -signal.SIGKILL)]
        wait_for(lambda: len(log_events(log_path, "worker_process_started")) == len(READ_MODELS) + 1,
                 timeout=30, what="order_view restarted")
        restarted = log_events(log_path, "worker_process_started")[-1]
        assert restarted["read_model"] == "order_view" and restarted["pid"] != pids["order_view"]
        for rm in ("order_view", "purchase_graph", "clickstream"):
            wait_for(partial(caught_up, settings, group(rm), f"{ns}_{READ_MODELS[rm].topic}", PARTITIONS),
                     timeout=120, what=f"{rm} caught up after the kill")
        folded = fold_orders([e for es in first + second for e in es])
        assert orders.rows() == [folded[k] for k in sorted(folded)]
        assert len(graph.snapshot()) == len(folded) and len(clicks.snapshot()["views"]) == len(views)
        # the others never stopped: same processes, started once, still running
        for rm, pid in pids.items():
            if rm != "order_view":
                assert alive(pid), rm
        assert [e["read_model"] for e in log_events(log_path, "worker_process_started")].count("order_view") == 2
        pids["order_view"] = restarted["pid"]

        stop_at = time.monotonic()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(STOP_TIMEOUT + 15) == 0
        assert time.monotonic() - stop_at < STOP_TIMEOUT + 10
        assert not [rm for rm, pid in pids.items() if alive(pid)]
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for sink in (orders, graph, clicks):
            sink.drop()
            sink.close()
