"""Lost history, a corrupted or missing checkpoint, the outbox dropped and recreated: nothing missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo import MongoClient

from cdc.mongo import mongo_client
from cdc.outbox import Document
from cdc.settings import Settings
from cdc.tailer import Tailer
from infra.servers.base import Server
from infra.servers.mongo import MongoServer
from tests.helpers import free_port, unique, wait_for
from tests.integration.test_tailer_support import (
    TopicReader,
    assert_per_aggregate_order,
    insert_events,
    make_events,
)

# `client` (a MongoClient) comes from tests/conftest.py; the tailer also needs Kafka up.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka")]


@pytest.fixture
def tiny_oplog(settings: Settings, kafka: Server) -> Iterator[Settings]:
    """A private SecantusDB keeping only 200 oplog entries (it prunes every 1,000 writes)."""
    server = MongoServer(settings, instance=unique("mongo_tinyoplog"), port=free_port(),
                         extra_args=["--oplog-max-entries", "200"])
    server.ensure_running()
    try:
        yield settings.model_copy(update={"mongo_uri_override": server.uri})
    finally:
        server.stop()
        import shutil

        shutil.rmtree(server.data_dir, ignore_errors=True)


def test_history_lost_runs_catch_up(tiny_oplog: Settings) -> None:
    settings = tiny_oplog
    client = mongo_client(settings)
    db, topic = unique("tail_lost"), unique("tail_topic")
    first, lost = make_events(topic, 10, 5), make_events(topic, 10, 150)
    reader = TopicReader(settings, topic)
    try:
        tailer = Tailer(settings, [db], client=client).start()
        insert_events(client[db].outbox, first, batch=10)
        reader.wait_for({d["_id"] for d in first}, timeout=60)
        assert tailer.stop(30)
        # 1,500 single-document commits while no tailer runs: the checkpoint's token falls off the oplog.
        for doc in lost:
            client[db].outbox.insert_one(doc)
        tailer = Tailer(settings, [db], client=client).start()
        reader.wait_for({d["_id"] for d in lost}, timeout=120)
        wait_for(lambda: tailer.outboxes[0].catchups == 1, 30,
                 what="catch-up scan after ChangeStreamHistoryLost")
        assert tailer.stop(30)
        reader.poll(0.5)
        assert_per_aggregate_order(reader.records)
    finally:
        reader.close()
        client.close()


@pytest.mark.parametrize("damage", ["corrupted", "foreign", "missing"])
def test_bad_checkpoint_runs_catch_up(settings: Settings, client: MongoClient[Document], damage: str) -> None:
    db, topic = unique("tail_ckpt"), unique("tail_topic")
    key = f"{db}.outbox"
    checkpoints = client[settings.tailer_state_database]["checkpoints"]
    first, later = make_events(topic, 5, 4), make_events(topic, 5, 20)
    reader = TopicReader(settings, topic)
    try:
        tailer = Tailer(settings, [db], client=client).start()
        insert_events(client[db].outbox, first)
        reader.wait_for({d["_id"] for d in first}, timeout=60)
        assert tailer.stop(30)
        insert_events(client[db].outbox, later, batch=10)
        if damage == "corrupted":
            checkpoints.update_one({"_id": key}, {"$set": {"token": {"_data": "00deadbeef"}}})
        elif damage == "foreign":  # a valid token of another collection
            with client["elsewhere"]["c"].watch() as stream:
                token = stream.resume_token
            checkpoints.update_one({"_id": key}, {"$set": {"token": token}})
        else:
            checkpoints.delete_one({"_id": key})
        tailer = Tailer(settings, [db], client=client).start()
        reader.wait_for({d["_id"] for d in later}, timeout=60)
        wait_for(lambda: tailer.outboxes[0].catchups == 1, 30, what="catch-up scan")
        assert tailer.stop(30)
        assert_per_aggregate_order(reader.records)
    finally:
        reader.close()
        client.drop_database(db)


def test_outbox_dropped_and_recreated(settings: Settings, client: MongoClient[Document]) -> None:
    db, topic = unique("tail_drop"), unique("tail_topic")
    before, after, later = make_events(topic, 5, 4), make_events(topic, 5, 4), make_events(topic, 5, 4)
    reader = TopicReader(settings, topic)
    tailer = Tailer(settings, [db], client=client).start()
    try:
        insert_events(client[db].outbox, before)
        reader.wait_for({d["_id"] for d in before}, timeout=60)
        client[db].drop_collection("outbox")
        # Recreated at once: these land while the tailer learns its stream is over.
        insert_events(client[db].outbox, after, batch=5)
        reader.wait_for({d["_id"] for d in after}, timeout=60)
        insert_events(client[db].outbox, later, batch=5)
        reader.wait_for({d["_id"] for d in later}, timeout=60)
        wait_for(lambda: tailer.outboxes[0].catchups >= 2, 10, what="catch-up after the drop")
    finally:
        assert tailer.stop(30)
        reader.close()
        client.drop_database(db)
