"""The tailer's `/healthz` (beside `/metrics`): 200 while it does its job, 503 with the reason when an outbox
thread has died or a lease it held ran out unrenewed (MongoDB frozen), 200 again once the lease is back; a
standby whose outbox another tailer leads is healthy."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from pymongo import MongoClient

from cdc.mongo import mongo_client
from cdc.outbox import Document
from cdc.session import Session
from cdc.settings import Settings
from cdc.tailer import Tailer
from infra.servers.mongo import MongoServer
from tests.helpers import free_port, unique, wait_for
from tests.observability_support import failing_health, healthz, sample, scrape

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka")]


def test_healthz_fails_once_an_outbox_thread_dies(
    settings: Settings, client: MongoClient[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = unique("health_crash")
    armed = threading.Event()
    run = Session.run

    def bug(self: Session) -> None:
        if self.o.key.startswith(db):
            armed.wait(60)
            raise RuntimeError("a bug, not a store being away")
        run(self)

    monkeypatch.setattr(Session, "run", bug)
    port = free_port()
    tailer = Tailer(settings.model_copy(update={"tailer_metrics_port": port}), [db], client=client).start()
    standby: Tailer | None = None
    try:
        wait_for(lambda: tailer.outboxes[0].lease.held, 30, what="the lease")
        assert healthz(port) == (200, {"status": "ok"})
        assert sample(scrape(port), "cdcflow_tailer_leader", source=f"{db}.outbox") == 1
        # A second tailer (a process of its own in production; its gauges would be its own) stands by:
        # another tailer leads this outbox, nothing is wrong with it.
        standby = Tailer(settings, [db], client=client, instance_id=f"standby:{os.getpid()}").start()
        wait_for(lambda: standby.outboxes[0].lease.fence is None and standby._threads[0].is_alive(), 10,
                 what="the standby started")
        assert standby.health() == [] and healthz(port) == (200, {"status": "ok"})

        armed.set()
        body = failing_health(port, 30)
        assert body["status"] == "failing"
        assert any("thread died" in r and "a bug" in r and db in r for r in body["reasons"]), body
    finally:
        armed.set()
        tailer.stop(30)
        if standby is not None:
            standby.stop(30)
        client.drop_database(db)
    with pytest.raises(OSError):  # the exporter is closed with the tailer: its port is free again
        healthz(port)




def test_healthz_fails_while_the_lease_is_lost_and_recovers(private_mongo: tuple[MongoServer, Settings]) -> None:
    server, base = private_mongo
    port, ttl = free_port(), 2.0
    settings = base.model_copy(update={"tailer_metrics_port": port, "tailer_lease_ttl_seconds": ttl})
    pid = server.process.pid()
    assert pid is not None
    client: MongoClient[Document] = mongo_client(settings)
    db = unique("health_lease")
    tailer = Tailer(settings, [db], client=client).start()
    try:
        wait_for(lambda: tailer.outboxes[0].lease.held, 30, what="the lease")
        assert healthz(port) == (200, {"status": "ok"})

        os.kill(pid, signal.SIGSTOP)  # MongoDB accepts connections but never answers: no renewal gets through
        try:
            body = failing_health(port, ttl + 10)
            assert any(f"lease of {db}.outbox lost" in r for r in body["reasons"]), body
        finally:
            os.kill(pid, signal.SIGCONT)
        # MongoDB answers again: the lease is taken back (nobody else took it), and the tailer is healthy.
        wait_for(lambda: healthz(port)[0] == 200, 60, what="/healthz ok again")
        assert tailer.outboxes[0].lease.held
    finally:
        tailer.stop(30)
        client.drop_database(db)
        client.close()
