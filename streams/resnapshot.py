"""`cdcflow resnapshot --service NAME`: re-emit a service's stored events to Kafka, e.g. after topic retention.

- `order`: the event store, `order_events` in the order service database, every order's events in version
  order (the unique (order_id, version) index serves the sort). The event store keeps no topic or headers, so
  the topic is `orders`, and the headers (trace id …) come from the event's outbox document while it still
  exists (published ones expire after `outbox_retention_seconds`), else schema version and source service.
- `product`: the stored state, one ProductSnapshot per product (its name, price and stock at its current
  version) from the `products` collection; the outbox is not an event store (published documents expire after
  `outbox_retention_seconds`), but the products collection always holds every product. A read model takes a
  snapshot at a later version than it has, or at the same version when its stock differs (a repair). The event
  id is derived from (database, product, version), so a second resnapshot of an unchanged product repeats it.
  A product at version 0 (stored before the catalogue had events) has no version to give: it is counted as
  `skipped_unversioned`, and its next seed or purchase creates it (ProductCreated).
- `clickstream`: its `outbox` documents, published or not, in creation order; only the retained ones come back.

Records are what the tailer sends (value = event JSON, key = aggregate id, the same headers), through the
tailer's idempotent publisher; same event ids and versions, so every sink applies them at most once in effect.
Nothing in MongoDB is modified, and reads are batched (one query per batch) to keep the load on it light.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection

from cdc.acks import InFlight, Sent
from cdc.errors import CdcError, InvalidEventError
from cdc.event import H_SCHEMA, H_SOURCE, SCHEMA_VERSION, Event, utcnow
from cdc.logs import get_logger
from cdc.mongo import mongo_client
from cdc.outbox import CREATION_ORDER, OUTBOX_COLLECTION
from cdc.publisher import Publisher
from cdc.schemas import TOPIC_INVENTORY, TOPIC_ORDERS, ProductSnapshot, payload_json
from cdc.services import service_database as name_of
from cdc.settings import Settings
from streams.progress import NoProgress, Progress

log = get_logger(__name__)

Document = dict[str, Any]

SERVICES = ("order", "product", "clickstream")

#: Documents per MongoDB batch (and per outbox header lookup).
BATCH = 500

#: The order service's event store and source name (producers/order.py).
ORDER_EVENTS = "order_events"
ORDER_SOURCE = "order-service"
#: The product service's state and source name (producers/product.py).
PRODUCTS = "products"
PRODUCT_SOURCE = "product-service"
#: Namespace of the snapshot event ids (uuid5 of database/product/version).
SNAPSHOT_NAMESPACE = uuid.UUID("5b3f3d1e-7a61-4f0c-9c56-2f0d6c1b8a47")


class ResnapshotError(CdcError):
    """Events could not be re-emitted (unknown service, Kafka refused or did not acknowledge them)."""


@dataclass
class ResnapshotReport:
    """What a resnapshot did."""

    service: str
    database: str
    source: str
    topics: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    unversioned: int = 0
    seconds: float = 0.0

    @property
    def events(self) -> int:
        """Events re-emitted and acknowledged."""
        return sum(self.topics.values())

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"service": self.service, "database": self.database, "source": self.source, "events": self.events,
                "topics": self.topics, "skipped_invalid": self.skipped, "skipped_unversioned": self.unversioned,
                "seconds": round(self.seconds, 3)}


def _check_refusals(inflight: InFlight) -> None:
    if inflight.refusals:
        first = inflight.refusals[0]
        raise ResnapshotError(f"kafka refused {len(inflight.refusals)} event(s), e.g. {first.event_id} on "
                              f"{first.topic}: {first.refused}")


def service_database(settings: Settings, service: str) -> str:
    """The database of `service` (with the configured prefix); ResnapshotError for an unknown service."""
    if service not in SERVICES:
        raise ResnapshotError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    return name_of(settings, service)


def _order_events(database: Any, skipped: list[str]) -> Iterator[Event]:
    """The event store's events, order by order, in version order, with headers from the outbox if kept."""
    events: Collection[Document] = database[ORDER_EVENTS]
    outbox: Collection[Document] = database[OUTBOX_COLLECTION]
    cursor = events.find({}).sort([("order_id", ASCENDING), ("version", ASCENDING)]).batch_size(BATCH)
    batch: list[Document] = []

    def flush() -> Iterator[Event]:
        ids = [d["_id"] for d in batch]
        headers = {
            d["_id"]: d.get("headers") or {}
            for d in outbox.find({"_id": {"$in": ids}}, projection={"headers": 1})
        }
        for d in batch:
            fields = {
                "_id": d["_id"], "topic": TOPIC_ORDERS, "aggregate_type": "Order", "aggregate_id": d["order_id"],
                "type": d["type"], "version": d["version"], "occurred_at": d["occurred_at"],
                "payload": d.get("payload") or {},
                "headers": headers.get(d["_id"]) or {H_SCHEMA: SCHEMA_VERSION, H_SOURCE: ORDER_SOURCE},
            }
            try:
                yield Event.parse(fields)
            except InvalidEventError as exc:
                skipped.append(str(d.get("_id")))
                log.error("resnapshot_skipped", event_id=str(d.get("_id")), error=str(exc))
        batch.clear()

    for doc in cursor:
        batch.append(doc)
        if len(batch) >= BATCH:
            yield from flush()
    if batch:
        yield from flush()


def _outbox_events(database: Any, skipped: list[str]) -> Iterator[Event]:
    """Every outbox document (published or not) in creation order."""
    outbox: Collection[Document] = database[OUTBOX_COLLECTION]
    for doc in outbox.find({}).sort(CREATION_ORDER).batch_size(BATCH):
        try:
            yield Event.parse(doc)
        except InvalidEventError as exc:
            skipped.append(str(doc.get("_id")))
            log.error("resnapshot_skipped", event_id=str(doc.get("_id")), error=str(exc))


def snapshot_event_id(database: str, product_id: str, version: int) -> str:
    """The id of a product's snapshot at `version`: the same on every resnapshot of the same state."""
    return str(uuid.uuid5(SNAPSHOT_NAMESPACE, f"{database}/{product_id}/{version}"))


def _product_snapshots(database: Any, skipped: list[str], unversioned: list[str]) -> Iterator[Event]:
    """One ProductSnapshot per product, at its current version, in product id order."""
    products: Collection[Document] = database[PRODUCTS]
    trace_id = uuid.uuid4().hex  # one trace for the whole resnapshot
    taken_at = utcnow()
    for doc in products.find({}).sort("_id", ASCENDING).batch_size(BATCH):
        product_id = str(doc.get("_id"))
        version = doc.get("version")
        if not isinstance(version, int) or version < 1:
            unversioned.append(product_id)
            log.warning("resnapshot_unversioned_product", product_id=product_id,
                        hint="no event describes it yet; its next seed or purchase creates it")
            continue
        try:
            payload = ProductSnapshot.build(product_id=product_id, name=doc.get("name"), price=doc.get("price"),
                                      stock=doc.get("stock"))
            event = Event.create(
                topic=TOPIC_INVENTORY, aggregate_type="Product", aggregate_id=product_id, type="ProductSnapshot",
                version=version, payload=payload_json(payload), source_service=PRODUCT_SOURCE, trace_id=trace_id,
                occurred_at=taken_at,
            )
        except InvalidEventError as exc:
            skipped.append(product_id)
            log.error("resnapshot_skipped", product_id=product_id, error=str(exc))
            continue
        yield event.model_copy(update={"event_id": snapshot_event_id(database.name, product_id, version)})


def resnapshot(
    settings: Settings,
    service: str,
    *,
    topic: str | None = None,
    progress: Progress | None = None,
    timeout: float = 120.0,
) -> ResnapshotReport:
    """Re-emit `service`'s stored events to Kafka; returns once Kafka acknowledged every one of them.

    `topic` sends everything there instead of each event's own topic (tests, staging); the event's `topic`
    field is rewritten to match, as if it had been produced for that topic.
    """
    database_name = service_database(settings, service)
    source = {"order": ORDER_EVENTS, "product": PRODUCTS}.get(service, OUTBOX_COLLECTION)
    report = ResnapshotReport(service, database_name, source)
    bar: Progress = progress or NoProgress()
    started = time.perf_counter()
    client = mongo_client(settings)
    publisher = Publisher(settings, source=f"resnapshot-{service}")
    inflight = InFlight()
    skipped: list[str] = []
    unversioned: list[str] = []
    sent: dict[str, int] = {}
    try:
        database = client.get_database(database_name)
        try:
            total = int(database[source].estimated_document_count())
        except Exception:  # a count is only for the progress bar
            total = 0
        bar.phase(f"resnapshot {service}", total)
        log.info("resnapshot_starting", service=service, database=database_name, source=source, estimate=total)
        if service == "order":
            events = _order_events(database, skipped)
        elif service == "product":
            events = _product_snapshots(database, skipped, unversioned)
        else:
            events = _outbox_events(database, skipped)
        acked = 0
        for event in events:
            if topic:
                event = event.model_copy(update={"topic": topic})
            entry = Sent(event.event_id, None, None, topic=event.topic)
            publisher.send_event(event, entry, inflight)
            sent[event.topic] = sent.get(event.topic, 0) + 1
            if publisher.fatal:
                raise ResnapshotError(f"kafka producer failed: {publisher.fatal}")
            _check_refusals(inflight)
            done = len(inflight.take_done_prefix())
            if done:
                acked += done
                bar.advance(done)
        deadline = time.monotonic() + timeout
        while publisher.outstanding() and time.monotonic() < deadline and not inflight.failed:
            publisher.flush(0.5)
            _check_refusals(inflight)
            done = len(inflight.take_done_prefix())
            acked += done
            bar.advance(done)
        _check_refusals(inflight)
        acked += len(inflight.take_done_prefix())
        if inflight.failed or publisher.fatal:
            raise ResnapshotError(f"kafka refused events: {inflight.failed or publisher.fatal}")
        if publisher.outstanding() or acked != sum(sent.values()):
            raise ResnapshotError(
                f"kafka did not acknowledge {sum(sent.values()) - acked} of {sum(sent.values())} events "
                f"within {timeout:.0f}s"
            )
        report.topics = sent
        report.skipped = len(skipped)
        report.unversioned = len(unversioned)
        return report
    finally:
        publisher.close(timeout=5.0)
        client.close()
        report.seconds = time.perf_counter() - started
        log.info("resnapshot_done", service=service, database=database_name, events=report.events,
                 topics=report.topics, skipped=report.skipped, unversioned=report.unversioned,
                 seconds=round(report.seconds, 3))

