"""kill -9 the tailer, or its change-stream fetcher, at random moments while services write: every event
reaches Kafka, in order, and no fetcher outlives its tailer."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from cdc.checkpoint import CheckpointStore
from cdc.mongo import mongo_client
from cdc.settings import Settings
from cdc.tailer import Tailer
from infra.servers.base import Server
from tests.helpers import unique, wait_for
from tests.integration.test_tailer_support import (
    TopicReader,
    Writer,
    assert_per_aggregate_order,
    fetcher_pids,
    kill9,
    make_events,
    running,
    spawn_tailer,
    terminate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = int(os.environ.get("CDCFLOW_TEST_KILL9_EVENTS", "20000"))
KILLS = 5


def test_kill9_during_stream_loses_nothing(settings: Settings, mongo: Server, kafka: Server,
                                           tmp_path: Path) -> None:
    db, topic = unique("tail_kill"), unique("tail_topic")
    client = mongo_client(settings)
    docs = make_events(topic, aggregates=200, per_aggregate=EVENTS // 200)
    expected = {d["_id"] for d in docs}
    reader = TopicReader(settings, topic)
    log = tmp_path / "tail.log"
    seed = random.randrange(2**32)
    print(f"kill -9 moments drawn with random.Random({seed})")  # shown on failure: the run can be replayed
    rng = random.Random(seed)
    # Released a share per kill, so that events are still being written whenever the test waits for progress.
    share = len(docs) // (KILLS + 1)
    writer = Writer(client[db].outbox, docs, batch=100, pause=0.01, allowed=share)
    spawned_at = time.time()
    proc = spawn_tailer(settings, [db], log)
    try:
        writer.start()
        for kill in range(KILLS):
            writer.allow(share * (kill + 2))
            # Let this tailer forward something (a record it produced, not a straggler the broker took from the
            # one killed before), then kill it at a random moment (mid-batch, mid-checkpoint, mid-catch-up).
            def progressed(since: float = spawned_at) -> bool:
                return reader.produced_since(since)

            wait_for(progressed, 60, what=f"progress before kill {kill + 1} (seed {seed})")
            time.sleep(rng.uniform(0.05, 1.5))
            kill9(proc)
            spawned_at = time.time()
            proc = spawn_tailer(settings, [db], log)
        writer.allow(len(docs))
        writer.join(timeout=180)
        assert writer.error is None and writer.written == len(docs)
        reader.wait_for(expected, timeout=180, diagnose=lambda: f"seed {seed}")
        assert terminate(proc) == 0
        reader.poll(1.0)
        assert_per_aggregate_order(reader.records)
        duplicates = len(reader.records) - len(reader.ids)
        print(f"{len(docs)} events, {KILLS} kill -9s, {duplicates} duplicates on Kafka")
        # The last tailer drained and checkpointed everything: its watermark is the newest event.
        checkpoints = CheckpointStore(client[settings.tailer_state_database]["checkpoints"])
        assert checkpoints.load(f"{db}.outbox").watermark == max(d["occurred_at"] for d in docs)
        # Each tailer started a fetcher; the killed ones' fetchers saw their stdin close and exited too.
        pids = fetcher_pids(log)
        assert len(pids) >= KILLS + 1
        wait_for(lambda: not [p for p in pids if running(p)], 15, what="no fetcher outliving its tailer")
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.close()
        client.drop_database(db)
        client.close()


def test_kill9_of_the_fetcher_loses_nothing(settings: Settings, mongo: Server, kafka: Server) -> None:
    db, topic = unique("tail_kfetch"), unique("tail_topic")
    client = mongo_client(settings)
    docs = make_events(topic, aggregates=50, per_aggregate=60)
    reader = TopicReader(settings, topic)
    kills = 3
    # Released a share per kill, and one share only after the last kill: events are written after each of them.
    share = len(docs) // (kills + 2)
    writer = Writer(client[db].outbox, docs, batch=50, pause=0.01, allowed=share)
    tailer = Tailer(settings, [db], client=client).start()
    outbox = tailer.outboxes[0]
    killed: list[int] = []
    try:
        writer.start()
        for kill in range(kills):
            writer.allow(share * (kill + 2))
            before = outbox.forwarded

            def progressed(before: int = before) -> bool:
                return outbox.forwarded > before and outbox.fetcher_pid is not None

            wait_for(progressed, 60, what=f"progress before fetcher kill {kill + 1}")
            pid = outbox.fetcher_pid
            assert pid is not None and pid not in killed
            os.kill(pid, 9)
            killed.append(pid)
        assert writer.written < len(docs)
        writer.allow(len(docs))
        writer.join(timeout=120)
        assert writer.error is None and writer.written == len(docs)
        reader.wait_for({d["_id"] for d in docs}, timeout=120)
        reader.poll(1.0)
        assert_per_aggregate_order(reader.records)
        # A session that lost its fetcher mid-stream ended; the next open started a new fetcher.
        assert outbox.sessions >= 2
        assert outbox.fetcher_pid is not None and outbox.fetcher_pid not in killed
        assert tailer.stop(30), "the tailer did not stop within its bound"
    finally:
        tailer.stop(10)
        reader.close()
        client.drop_database(db)
        client.close()
