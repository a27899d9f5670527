"""Shared helpers of the tailer integration tests (no tests here): events, a verifying consumer, subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pymongo.collection import Collection

from cdc.event import Event, utcnow
from cdc.kafka import ensure_topics, kafka_config
from cdc.outbox import outbox_document
from cdc.settings import Settings

Document = dict[str, Any]


def make_events(topic: str, aggregates: int, per_aggregate: int) -> list[Document]:
    """Outbox documents for `aggregates` aggregates with versions 1..per_aggregate, interleaved round-robin
    (creation order = version order within each aggregate)."""
    run = uuid.uuid4().hex[:6]
    base = utcnow()
    docs: list[Document] = []
    tick = 0
    for version in range(1, per_aggregate + 1):
        for a in range(aggregates):
            tick += 1
            event = Event.create(
                topic=topic, aggregate_type="Order", aggregate_id=f"agg-{run}-{a}", type="OrderShipped",
                version=version, payload={"n": tick}, source_service="test",
                occurred_at=base + timedelta(milliseconds=tick),
            )
            docs.append(outbox_document(event))
    return docs


def continue_events(docs: list[Document], per_aggregate: int) -> list[Document]:
    """The next `per_aggregate` versions of every aggregate in `docs`, interleaved round-robin."""
    last: dict[str, Document] = {}
    for doc in docs:
        if doc["version"] > last.get(doc["aggregate_id"], {"version": 0})["version"]:
            last[doc["aggregate_id"]] = doc
    base = utcnow()
    out: list[Document] = []
    for step in range(1, per_aggregate + 1):
        for tick, (aggregate_id, doc) in enumerate(last.items()):
            event = Event.create(
                topic=doc["topic"], aggregate_type=doc["aggregate_type"], aggregate_id=aggregate_id,
                type=doc["type"], version=doc["version"] + step, payload={"step": step}, source_service="test",
                occurred_at=base + timedelta(milliseconds=step * len(last) + tick),
            )
            out.append(outbox_document(event))
    return out


def insert_events(outbox: Collection[Document], docs: list[Document], batch: int = 200,
                  pause: float = 0.0, transactional: bool = True) -> None:
    """Insert in commit batches (one transaction each), in creation order."""
    client = outbox.database.client
    for i in range(0, len(docs), batch):
        chunk = docs[i : i + batch]
        if transactional:
            with client.start_session() as session, session.start_transaction():
                outbox.insert_many(chunk, session=session)
        else:
            outbox.insert_many(chunk)
        if pause:
            time.sleep(pause)


class Writer(threading.Thread):
    """Inserts events in the background (a service writing its outbox while the test breaks things).

    `allowed` caps how many it writes until `allow()` raises it: a test that waits for progress after each
    fault then always has events left to write, however fast the machine."""

    def __init__(self, outbox: Collection[Document], docs: list[Document], batch: int = 100,
                 pause: float = 0.0, allowed: int | None = None) -> None:
        super().__init__(daemon=True)
        self.outbox, self.docs, self.batch, self.pause = outbox, docs, batch, pause
        self.error: BaseException | None = None
        self.written = 0
        self._allowed = len(docs) if allowed is None else allowed
        self._more = threading.Condition()

    def allow(self, count: int) -> None:
        """Let it write up to `count` events in all (never fewer than already allowed)."""
        with self._more:
            self._allowed = max(self._allowed, min(count, len(self.docs)))
            self._more.notify_all()

    def run(self) -> None:
        try:
            while self.written < len(self.docs):
                with self._more:
                    if not self._more.wait_for(lambda: self._allowed > self.written, timeout=300):
                        raise TimeoutError(f"writer held at {self.written} events for 300 s")
                    end = min(self._allowed, self.written + self.batch)
                insert_events(self.outbox, self.docs[self.written : end], batch=self.batch)
                self.written = end
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc
            raise


def header_map(msg: Message) -> dict[str, bytes]:
    """A record's headers as a dict (bytes values only)."""
    raw = msg.headers() or []
    items = list(raw.items()) if isinstance(raw, dict) else list(raw)
    return {k: v for k, v in items if isinstance(v, bytes)}


@dataclass
class Record:
    partition: int
    offset: int
    key: str
    event_id: str
    version: int | None
    headers: dict[str, bytes]
    timestamp: float = 0.0  # the record's CreateTime: when its producer took it (seconds)


class TopicReader:
    """Reads a topic from the beginning, accumulating records across calls."""

    def __init__(self, settings: Settings, topic: str) -> None:
        ensure_topics(settings, [topic])
        self.topic = topic
        self.consumer = Consumer(kafka_config(settings, **{
            "group.id": f"verify-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }))
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        self.records: list[Record] = []
        self.ids: set[str] = set()

    def produced_since(self, when: float, seconds: float = 0.1) -> bool:
        """True once a record produced after `when` (wall clock) was read."""
        self.poll(seconds)
        return any(r.timestamp > when for r in self.records[-1000:])

    def seen(self, seconds: float = 0.1) -> int:
        """Distinct events read so far, after polling for `seconds`."""
        self.poll(seconds)
        return len(self.ids)

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, timeout=0.2):
                if msg.error():
                    continue
                headers = header_map(msg)
                value, key, partition, offset = msg.value(), msg.key(), msg.partition(), msg.offset()
                assert value is not None and key is not None and partition is not None and offset is not None
                event = Event.from_json(value)
                self.records.append(Record(partition, offset, key.decode(), event.event_id, event.version,
                                           headers, msg.timestamp()[1] / 1000))
                self.ids.add(event.event_id)

    def wait_for(self, expected: set[str], timeout: float, diagnose: Callable[[], str] | None = None) -> None:
        """Until every expected id was read; fails at the deadline with how many are missing, the topic's
        end offsets (records on the broker, read or not) and `diagnose()` (e.g. the tailer's counts)."""
        deadline = time.monotonic() + timeout
        while not expected <= self.ids:
            if time.monotonic() > deadline:
                missing = expected - self.ids
                ends = self.end_offsets()
                raise AssertionError(f"{len(missing)} of {len(expected)} events missing on Kafka after "
                                     f"{timeout:.0f}s, e.g. {sorted(missing)[:3]}; read {len(self.records)} "
                                     f"records, end offsets {ends} (sum {sum(ends.values())})"
                                     + (f"; {diagnose()}" if diagnose else ""))
            self.poll(0.5)

    def end_offsets(self) -> dict[int, int]:
        """The high watermark of each partition (-1 when the broker does not answer)."""
        out: dict[int, int] = {}
        for tp in self.consumer.assignment():
            try:
                out[tp.partition] = self.consumer.get_watermark_offsets(tp, timeout=5)[1]
            except KafkaException:
                out[tp.partition] = -1
        return out

    def close(self) -> None:
        self.consumer.close()


def assert_per_aggregate_order(records: list[Record]) -> None:
    """Within each aggregate (one partition, by key), versions first appear in increasing order; duplicates
    (at-least-once) may repeat a suffix but never let a later version arrive before an earlier one."""
    by_key: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_key[r.key].append(r)
    for key, recs in by_key.items():
        assert len({r.partition for r in recs}) == 1, f"aggregate {key} spread over partitions"
        recs.sort(key=lambda r: r.offset)
        seen: set[int] = set()
        highest = 0
        for r in recs:
            assert r.version is not None
            if r.version in seen:
                continue
            assert r.version == highest + 1, (
                f"aggregate {key}: version {r.version} arrived first after {highest} (offset {r.offset})"
            )
            seen.add(r.version)
            highest = r.version


def tailer_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CDCFLOW_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CDCFLOW_MONGO_URI": settings.mongo_uri,
        "CDCFLOW_LOG_JSON": "true",
        **extra,
    })
    # An explicit bootstrap address means "not the local broker": pass its credentials along explicitly too.
    if settings.kafka_sasl is not None:
        mechanism, user, password = settings.kafka_sasl
        env.update({"CDCFLOW_KAFKA_SASL_MECHANISM": mechanism, "CDCFLOW_KAFKA_SASL_USERNAME": user,
                    "CDCFLOW_KAFKA_SASL_PASSWORD": password})
    return env


def spawn_tailer(settings: Settings, databases: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """`cdcflow tail -d …` as a child process, logs appended to `log`."""
    argv = [
        str(Path(sys.executable).parent / "cdcflow"), "tail", *[arg for d in databases for arg in ("-d", d)]
    ]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=tailer_env(settings, **env), stdout=out, stderr=out,
                                start_new_session=True)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def fetcher_pids(log: Path) -> set[int]:
    """Pids of the change-stream fetchers that the tailers logging to `log` started."""
    pids: set[int] = set()
    for line in log.read_text(errors="replace").splitlines():
        if "fetcher_started" in line:
            with contextlib.suppress(ValueError):
                pids.add(int(json.loads(line)["pid"]))
    return pids


def running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def scrape(port: int, source: str) -> dict[str, float]:
    """The exporter's samples of one outbox, as {name or name:label_value: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("source") != source:
                continue
            extra = [v for k, v in sorted(sample.labels.items()) if k not in ("source", "le")]
            le = sample.labels.get("le")
            name = ":".join([sample.name, *extra] + ([f"le={le}"] if le else []))
            samples[name] = sample.value
    return samples
