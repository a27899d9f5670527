"""A write and a read through each server, using the project's own connection helpers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Producer

from cdc.kafka import ensure_topics, kafka_config, producer_config
from cdc.mongo import mongo_client
from cdc.settings import Settings


def mongo_round_trip(settings: Settings) -> str:
    """Insert a document in a transaction and read it back."""
    client = mongo_client(settings)
    try:
        coll = client["cdcflow_smoke"]["items"]
        key = str(uuid.uuid4())
        with client.start_session() as session, session.start_transaction():
            coll.insert_one({"_id": key, "n": 1}, session=session)
        doc = coll.find_one({"_id": key})
        coll.delete_one({"_id": key})
        if doc is None or doc["n"] != 1:
            raise RuntimeError("document written in a transaction was not read back")
        return "transactional insert read back"
    finally:
        client.close()


def kafka_round_trip(settings: Settings) -> str:
    """Produce a record to a fresh topic and consume it back."""
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic], partitions=1)
    value = uuid.uuid4().bytes
    producer = Producer(producer_config(settings))
    producer.produce(topic, key=b"k", value=value)
    if producer.flush(15) != 0:
        raise RuntimeError("produce was not acknowledged")
    consumer = Consumer(kafka_config(settings, **{"group.id": topic, "auto.offset.reset": "earliest"}))
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() == value:
                break
        else:
            raise RuntimeError("produced record was not consumed back")
    finally:
        consumer.close()
    from cdc.kafka import admin_client

    admin_client(settings).delete_topics([topic])
    return "produced and consumed one record"


def postgres_round_trip(settings: Settings) -> str:
    """Write a row and read it back."""
    from cdc.connect import postgres_connect

    with postgres_connect(settings) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS cdcflow_smoke (id text PRIMARY KEY, n int)")
        key = str(uuid.uuid4())
        conn.execute("INSERT INTO cdcflow_smoke VALUES (%s, 1)", (key,))
        row = conn.execute("SELECT n FROM cdcflow_smoke WHERE id = %s", (key,)).fetchone()
        conn.execute("DELETE FROM cdcflow_smoke WHERE id = %s", (key,))
    if row is None or row[0] != 1:
        raise RuntimeError("row was not read back")
    return "row written and read back"


def cassandra_round_trip(settings: Settings) -> str:
    """Write a row in a smoke keyspace and read it back."""
    from cdc.connect import cassandra_cluster, cassandra_replication

    cluster = cassandra_cluster(settings)
    try:
        session = cluster.connect()
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS cdcflow_smoke WITH replication = {cassandra_replication(settings)}"
        )
        session.execute("CREATE TABLE IF NOT EXISTS cdcflow_smoke.items (id text PRIMARY KEY, n int)")
        key = str(uuid.uuid4())
        session.execute("INSERT INTO cdcflow_smoke.items (id, n) VALUES (%s, 1)", (key,))
        row = session.execute("SELECT n FROM cdcflow_smoke.items WHERE id = %s", (key,)).one()
        session.execute("DELETE FROM cdcflow_smoke.items WHERE id = %s", (key,))
    finally:
        cluster.shutdown()
    if row is None or row.n != 1:
        raise RuntimeError("row was not read back")
    return "row written and read back"


def neo4j_round_trip(settings: Settings) -> str:
    """Create a node and read it back."""
    from cdc.connect import neo4j_driver

    key = str(uuid.uuid4())
    with neo4j_driver(settings) as driver:
        driver.execute_query("CREATE (:CdcflowSmoke {id: $id, n: 1})", id=key)
        records, _, _ = driver.execute_query("MATCH (s:CdcflowSmoke {id: $id}) RETURN s.n AS n", id=key)
        driver.execute_query("MATCH (s:CdcflowSmoke {id: $id}) DELETE s", id=key)
    if not records or records[0]["n"] != 1:
        raise RuntimeError("node was not read back")
    return "node created and read back"


ROUND_TRIPS: dict[str, Callable[[Settings], str]] = {
    "mongo": mongo_round_trip,
    "kafka": kafka_round_trip,
    "postgres": postgres_round_trip,
    "cassandra": cassandra_round_trip,
    "neo4j": neo4j_round_trip,
}
