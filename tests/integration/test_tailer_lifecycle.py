"""The tailer's process: a thread that dies ends it with a non-zero code, a frozen MongoDB does not hold up a
SIGTERM past its bound, a killed fetcher's server cursor is closed, and retention only prunes what is on Kafka."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from bson.int64 import Int64
from pymongo import MongoClient

from cdc.checkpoint import CheckpointStore
from cdc.event import utcnow
from cdc.lease import Lease
from cdc.mongo import mongo_client
from cdc.outbox import Document
from cdc.session import Session
from cdc.settings import Settings
from cdc.tailer import Tailer
from infra.servers.mongo import MongoServer
from tests.helpers import unique, wait_for
from tests.integration.test_tailer_support import TopicReader, insert_events, make_events, spawn_tailer, terminate

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka")]


def _run_in_thread(tailer: Tailer) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(tailer.run()), daemon=True)
    thread.start()
    return thread, codes


def test_an_outbox_thread_that_dies_ends_the_tailer_with_exit_code_1(
    settings: Settings, client: MongoClient[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = unique("tail_crash")
    run = Session.run

    def bug(self: Session) -> None:
        if self.o.key.startswith(db):
            raise RuntimeError("a bug, not a store being away")
        run(self)

    monkeypatch.setattr(Session, "run", bug)
    tailer = Tailer(settings, [db, unique("tail_other")], client=client)
    thread, codes = _run_in_thread(tailer)
    thread.join(60)
    assert not thread.is_alive() and codes == [1]
    assert tailer.crashed is not None and "a bug" in tailer.crashed and db in tailer.crashed
    # Every thread ended, the healthy outbox's too, and its lease was given back.
    assert not any(t.is_alive() for t in tailer._threads)
    assert not any(o.lease.held for o in tailer.outboxes)


def test_a_lease_heartbeat_that_dies_ends_the_tailer_with_exit_code_1(
    settings: Settings, client: MongoClient[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Lease) -> bool:
        raise RuntimeError("heartbeat bug")

    monkeypatch.setattr(Lease, "renew", broken)
    fast = settings.model_copy(update={"tailer_lease_ttl_seconds": 1.5})
    tailer = Tailer(fast, [unique("tail_beat")], client=client)
    thread, codes = _run_in_thread(tailer)
    thread.join(60)
    assert not thread.is_alive() and codes == [1]
    assert tailer.crashed is not None and "heartbeat bug" in tailer.crashed




def test_sigterm_with_mongodb_frozen_ends_within_the_bound(
    private_mongo: tuple[MongoServer, Settings], tmp_path: Path
) -> None:
    server, settings = private_mongo
    bound = 6.0
    client = mongo_client(settings)
    db, topic = unique("tail_frozen"), unique("tail_topic")
    docs = make_events(topic, 5, 10)
    reader = TopicReader(settings, topic)
    store = CheckpointStore(client[settings.tailer_state_database]["checkpoints"])
    log = tmp_path / "tail.log"
    proc = spawn_tailer(settings, [db], log, CDCFLOW_TAILER_STOP_TIMEOUT_SECONDS=str(bound))
    pid = server.process.pid()
    assert pid is not None
    try:
        wait_for(lambda: store.load(f"{db}.outbox").token, 60, what="first checkpoint")
        insert_events(client[db].outbox, docs)
        reader.wait_for({d["_id"] for d in docs}, timeout=60)
        os.kill(pid, signal.SIGSTOP)  # a server that accepts connections but never answers
        time.sleep(1.0)  # the tailer is now waiting on it (a getMore, a checkpoint, a lease renewal)
        started = time.monotonic()
        terminate(proc, timeout=bound + 30)
        took = time.monotonic() - started
        assert took <= bound + 3.0, f"SIGTERM took {took:.1f}s (bound {bound}s); log: {log.read_text()[-3000:]}"
    finally:
        os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
        reader.close()
        client.close()


def test_a_killed_fetcher_s_server_cursor_is_killed(settings: Settings, client: MongoClient[Document]) -> None:
    db, topic = unique("tail_orphan"), unique("tail_topic")
    reader = TopicReader(settings, topic)
    tailer = Tailer(settings, [db], client=client).start()
    outbox = tailer.outboxes[0]
    fetcher = outbox.outbox.fetcher
    try:
        wait_for(lambda: fetcher._cursor is not None and outbox.catchups == 1, 60, what="the stream open")
        cursor = fetcher._cursor
        pid = outbox.fetcher_pid
        assert cursor is not None and pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: outbox.fetcher_pid not in (None, pid) and outbox.sessions >= 2, 60,
                 what="a new session with a new fetcher")
        docs = make_events(topic, 2, 3)
        insert_events(client[db].outbox, docs)
        reader.wait_for({d["_id"] for d in docs}, timeout=60)
        database, collection, cursor_id = cursor
        answer = client[database].command({"killCursors": collection, "cursors": [Int64(cursor_id)]})
        assert cursor_id in answer["cursorsNotFound"], f"the dead fetcher's cursor was still open: {answer}"
    finally:
        tailer.stop(30)
        reader.close()
        client.drop_database(db)


def test_retention_prunes_only_what_is_on_kafka(settings: Settings, client: MongoClient[Document]) -> None:
    s = settings.model_copy(update={"outbox_retention_seconds": 1, "tailer_scan_margin_seconds": 60.0})
    db, topic = unique("tail_prune"), unique("tail_topic")
    outbox = client[db].outbox
    now = utcnow()
    old = make_events(topic, 4, 5)
    for i, doc in enumerate(old):
        doc["occurred_at"] = now - timedelta(hours=2) + timedelta(milliseconds=i)
    reader = TopicReader(s, topic)
    insert_events(outbox, old)
    tailer = Tailer(s, [db], client=client).start()
    try:
        reader.wait_for({d["_id"] for d in old}, timeout=60)
        wait_for(lambda: tailer.outboxes[0].catchups == 1, 30, what="the catch-up scan")
        fresh = make_events(topic, 4, 5)
        insert_events(outbox, fresh)
        reader.wait_for({d["_id"] for d in fresh}, timeout=60)
        store = CheckpointStore(client[s.tailer_state_database]["checkpoints"])
        wait_for(lambda: store.load(f"{db}.outbox").watermark == max(d["occurred_at"] for d in fresh), 30,
                 what="the fresh events checkpointed")
        time.sleep(1.1)  # everything is now past the 1 s retention
        # On Kafka and before scan_from (the watermark minus the margin): deleted. Within the margin: kept.
        assert tailer.pruner.prune_once() == len(old)
        assert {d["_id"] for d in outbox.find({}, {"_id": 1})} == {d["_id"] for d in fresh}
        assert tailer.stop(30)

        # Written while no tailer runs: past retention, but not on Kafka, so never pruned.
        pending = make_events(topic, 2, 5)
        insert_events(outbox, pending)
        time.sleep(1.1)
        tailer = Tailer(s, [db], client=client)
        for lease in (o.lease for o in tailer.outboxes):
            assert lease.try_acquire()  # leading, but not forwarding yet
        assert tailer.pruner.prune_once() == 0
        for lease in (o.lease for o in tailer.outboxes):
            lease.release()
        tailer.start()
        reader.wait_for({d["_id"] for d in pending}, timeout=60)
    finally:
        tailer.stop(30)
        reader.close()
        client.drop_database(db)
