"""The product service (`product_service`): a catalogue with stock. Every change of a product writes its event
(topic `inventory`, aggregate Product, version = the product's new `version`) in the same transaction, or
writes nothing:

- seeding (`POST /products`, `POST /products/seed`) creates a product (ProductCreated, version 1), changes its
  name or price (ProductUpdated) and sets its stock (StockAdjusted, with the signed change); a product that is
  already as asked writes nothing, so a re-seed churns neither versions nor events;
- a purchase decrements stock (InventoryDecremented), or answers 409 and writes nothing.

A product stored at version 0 (written before the catalogue had events, so no event ever described it) gets its
ProductCreated from the next write that touches it (a seed, or a purchase: then before its InventoryDecremented).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from pymongo import InsertOne, ReturnDocument, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from cdc.event import Event
from cdc.http_api import error_responses
from cdc.limits import MAX_ID_LENGTH, MAX_NAME_LENGTH, MAX_STOCK
from cdc.logs import get_logger
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import (
    TOPIC_INVENTORY,
    InventoryDecremented,
    ProductCreated,
    ProductUpdated,
    StockAdjusted,
    payload_json,
)
from cdc.settings import Settings
from producers.app import ServiceContext, ServiceError, conflict, context, create_service_app, not_found
from producers.bounds import MAX_AMOUNT, MAX_QUANTITY

SERVICE = "product"
SOURCE = "product-service"
PRODUCTS = "products"
PROJECTION = {"_id": 1, "name": 1, "price": 1, "stock": 1}
ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
CENT = Decimal("0.01")

#: Most products one seed request may write: a larger one took over the 10 s request deadline here.
MAX_SEED = 1000
#: Products per seed transaction: each one's change and events commit together; a large seed is several.
SEED_CHUNK = 500
#: How long a seed chunk retries when a concurrent write moved one of its products.
SEED_RETRY_SECONDS = 5.0

Document = dict[str, Any]
ProductId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]

log = get_logger(__name__)


class InsufficientStockError(Exception):
    """Not enough stock left for the purchase."""


class UnknownProductError(Exception):
    """No such product."""


class DuplicateProductError(ValueError):
    """A seed names the same product twice."""


class CatalogueConflictError(Exception):
    """Concurrent writes kept moving the products of a seed until its retry deadline."""


class _ProductMoved(Exception):
    """A product changed between this transaction's read and its write: read again."""


class ProductIn(BaseModel):
    """A catalogue entry to seed (upsert): name, price, stock."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    price: Decimal = Field(ge=0, le=MAX_AMOUNT, max_digits=12, decimal_places=2)
    stock: int = Field(ge=0, le=MAX_STOCK)


class PurchaseResult(BaseModel):
    product_id: str
    quantity: int
    stock: int
    version: int
    event_id: str


@dataclass
class SeedResult:
    """What a seed did: products per outcome (created, updated, stock_adjusted, unchanged) and events written."""

    outcomes: Counter[str] = field(default_factory=Counter)
    events: int = 0

    def add(self, other: SeedResult) -> None:
        self.outcomes.update(other.outcomes)
        self.events += other.events

    def to_json(self) -> dict[str, int]:
        """The HTTP answer: `written` = products created or changed, then each outcome and the events."""
        changed = sum(n for outcome, n in self.outcomes.items() if outcome != "unchanged")
        return {
            "written": changed,
            **{k: self.outcomes[k] for k in ("created", "updated", "stock_adjusted", "unchanged")},
            "events": self.events,
        }


def product_view(doc: Document) -> dict[str, Any]:
    """A product document (projected) as JSON."""
    return {"id": doc["_id"], "name": doc["name"], "price": str(doc["price"]), "stock": doc["stock"]}


CatalogueChange = ProductCreated | ProductUpdated | StockAdjusted


def seed_changes(current: Document | None, wanted: ProductIn) -> list[CatalogueChange]:
    """The events (payloads, in order) that bring the stored product `current` to `wanted`; [] when it already
    is. A product that no event described yet (absent, or at version 0) is created."""
    price = wanted.price.quantize(CENT)
    if current is None or not current.get("version"):
        return [ProductCreated.build(product_id=wanted.id, name=wanted.name, price=price, stock=wanted.stock)]
    out: list[CatalogueChange] = []
    if current.get("name") != wanted.name or Decimal(str(current.get("price"))) != price:
        out.append(ProductUpdated.build(product_id=wanted.id, name=wanted.name, price=price))
    if current.get("stock") != wanted.stock:
        before = int(current.get("stock") or 0)
        out.append(StockAdjusted.build(product_id=wanted.id, change=wanted.stock - before, stock_after=wanted.stock))
    return out


def _outcome(changes: Sequence[CatalogueChange]) -> str:
    if not changes:
        return "unchanged"
    if isinstance(changes[0], ProductCreated):
        return "created"
    return "updated" if isinstance(changes[0], ProductUpdated) else "stock_adjusted"


def _event(
    product_id: str, payload: CatalogueChange | InventoryDecremented, version: int, trace_id: str | None
) -> Event:
    return Event.create(
        topic=TOPIC_INVENTORY,
        aggregate_type="Product",
        aggregate_id=product_id,
        type=type(payload).__name__,
        version=version,
        source_service=SOURCE,
        trace_id=trace_id,
        payload=payload_json(payload),
    )


def _seed_work(
    session: ClientSession, *, db: Database[Document], products: Sequence[ProductIn], trace_id: str
) -> tuple[SeedResult, list[Event]]:
    """One transaction of a seed: read the products, write those that differ, with their events."""
    stored = {
        d["_id"]: d for d in db[PRODUCTS].find({"_id": {"$in": [p.id for p in products]}}, session=session)
    }
    result = SeedResult()
    writes: list[InsertOne[Document] | UpdateOne] = []
    events: list[Event] = []
    for wanted in products:
        current = stored.get(wanted.id)
        changes = seed_changes(current, wanted)
        result.outcomes[_outcome(changes)] += 1
        if not changes:
            continue
        before = int(current.get("version") or 0) if current is not None else 0
        version = 0 if isinstance(changes[0], ProductCreated) else before
        for payload in changes:
            version += 1
            events.append(_event(wanted.id, payload, version, trace_id))
        state = {"name": wanted.name, "price": str(wanted.price.quantize(CENT)), "stock": wanted.stock,
                 "version": version}
        if current is None:
            writes.append(InsertOne({"_id": wanted.id, **state}))
        else:
            # Guarded by the version read above (None also matches a document without one): a purchase committed
            # in between makes this transaction read again.
            writes.append(UpdateOne({"_id": wanted.id, "version": current.get("version")}, {"$set": state}))
    if writes:
        done = db[PRODUCTS].bulk_write(writes, ordered=True, session=session)
        if done.inserted_count + done.matched_count != len(writes):
            raise _ProductMoved()
    result.events = len(events)
    return result, events


def seed_catalogue(
    writer: OutboxWriter,
    products: Sequence[ProductIn],
    *,
    trace_id: str | None = None,
    retry_seconds: float = SEED_RETRY_SECONDS,
) -> SeedResult:
    """Create or update products, each change with its event in the same transaction (chunks of SEED_CHUNK
    products); products already as asked write nothing.

    Raises DuplicateProductError for a product id given twice, CatalogueConflictError when concurrent writes
    kept moving the products past `retry_seconds`, InvalidEventError for an event that may not be written (then
    that chunk writes nothing).
    """
    twice = sorted(pid for pid, n in Counter(p.id for p in products).items() if n > 1)
    if twice:
        raise DuplicateProductError(f"product id given more than once: {', '.join(twice[:5])}")
    trace = trace_id or uuid.uuid4().hex  # one trace for every event of this seed
    result = SeedResult()
    for start in range(0, len(products), SEED_CHUNK):
        chunk = products[start : start + SEED_CHUNK]
        deadline = time.monotonic() + retry_seconds
        while True:
            try:
                result.add(writer.transact(partial(_seed_work, db=writer.database, products=chunk, trace_id=trace)))
                break
            except (_ProductMoved, DuplicateKeyError):
                # A purchase or another seed committed first (or created the product): read and decide again.
                if time.monotonic() >= deadline:
                    raise CatalogueConflictError(f"products kept changing during the seed: {chunk[0].id} …") from None
    log.info("catalogue_seeded", trace_id=trace, events=result.events, **result.outcomes)
    return result


def demo_catalogue(count: int, stock: int = 1_000_000, rng: random.Random | None = None) -> list[ProductIn]:
    """`count` products `p-0001`… with plausible names and prices."""
    rng = rng or random.Random(42)
    kinds = [
        "Lamp",
        "Chair",
        "Kettle",
        "Backpack",
        "Headphones",
        "Mug",
        "Notebook",
        "Jacket",
        "Watch",
        "Desk",
    ]
    return [
        ProductIn(
            id=f"p-{i:04d}",
            name=f"{rng.choice(kinds)} {i}",
            price=Decimal(rng.randint(199, 19999)) / 100,
            stock=stock,
        )
        for i in range(1, count + 1)
    ]


def purchase(
    writer: OutboxWriter,
    product_id: str,
    quantity: int,
    *,
    order_id: str | None = None,
    customer_id: str | None = None,
    trace_id: str | None = None,
) -> PurchaseResult:
    """Decrement stock by `quantity` and write InventoryDecremented, in one transaction.

    Raises UnknownProductError or InsufficientStockError (and then nothing is written).
    """
    products = writer.database[PRODUCTS]

    def work(session: ClientSession) -> tuple[PurchaseResult, list[Event]]:
        doc = products.find_one_and_update(
            {"_id": product_id, "stock": {"$gte": quantity}},
            {"$inc": {"stock": -quantity, "version": 1}},
            projection={"name": 1, "price": 1, "stock": 1, "version": 1},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None:
            if products.find_one({"_id": product_id}, {"_id": 1}, session=session) is None:
                raise UnknownProductError(product_id)
            raise InsufficientStockError(product_id)
        events: list[Event] = []
        if doc["version"] == 1:
            # It was at version 0: stored before the catalogue had events. Its ProductCreated (as it was before
            # this purchase) comes first, so its events still describe all of it.
            created = ProductCreated.build(product_id=product_id, name=doc.get("name"), price=doc.get("price"),
                                           stock=doc["stock"] + quantity)
            events.append(_event(product_id, created, 1, trace_id))
            products.update_one({"_id": product_id}, {"$inc": {"version": 1}}, session=session)
            doc["version"] = 2
        payload = InventoryDecremented.build(
            product_id=product_id,
            quantity=quantity,
            stock_after=doc["stock"],
            order_id=order_id,
            customer_id=customer_id,
        )
        event = _event(product_id, payload, doc["version"], trace_id)
        return PurchaseResult(
            product_id=product_id,
            quantity=quantity,
            stock=doc["stock"],
            version=doc["version"],
            event_id=event.event_id,
        ), [*events, event]

    result = writer.transact(work)
    log.info(
        "purchase",
        event_id=result.event_id,
        product_id=product_id,
        quantity=quantity,
        stock=result.stock,
        version=result.version,
    )
    return result


def _setup(ctx: ServiceContext) -> None:
    ctx.db[PRODUCTS].create_index("name", name="name")


def _routes(app: FastAPI) -> None:
    @app.get("/products/{product_id}", responses=error_responses(401, 403, 404, 422, 503, 504))
    def get_product(product_id: ProductId, ctx: ServiceContext = Depends(context)) -> dict[str, Any]:
        doc = ctx.run(lambda: ctx.db[PRODUCTS].find_one({"_id": product_id}, PROJECTION))
        if doc is None:
            raise not_found(f"Product {product_id} not found")
        return product_view(doc)

    @app.post("/products/{product_id}/purchase", responses=error_responses(401, 403, 404, 409, 422, 503, 504))
    def purchase_product(
        product_id: ProductId,
        quantity: Annotated[int, Query(gt=0, le=MAX_QUANTITY, description="How many to buy (positive integer)")],
        order_id: Annotated[str | None, Query(min_length=1, max_length=MAX_ID_LENGTH)] = None,
        customer_id: Annotated[str | None, Query(min_length=1, max_length=MAX_ID_LENGTH)] = None,
        ctx: ServiceContext = Depends(context),
    ) -> PurchaseResult:
        try:
            return ctx.run(
                lambda: purchase(ctx.writer, product_id, quantity, order_id=order_id, customer_id=customer_id)
            )
        except UnknownProductError:
            raise not_found(f"Product {product_id} not found") from None
        except InsufficientStockError:
            raise conflict("Insufficient stock") from None

    @app.post("/products", status_code=200, responses={**error_responses(400, 401, 403, 413, 422, 503, 504), 200: {
        "description": "How many products were written",
        "links": {
            "GetProduct": {"operationId": "get_product_products__product_id__get",
                           "parameters": {"product_id": "$request.body#/0/id"}},
            "PurchaseProduct": {"operationId": "purchase_product_products__product_id__purchase_post",
                                "parameters": {"product_id": "$request.body#/0/id"}},
        },
    }})
    def seed_products(
        products: Annotated[list[ProductIn], Body(min_length=1, max_length=MAX_SEED)],
        ctx: ServiceContext = Depends(context),
    ) -> dict[str, int]:
        """Seed catalogue entries: create new ones, update those that differ (each with its event)."""
        return _seed(ctx, products)

    @app.post("/products/seed", responses=error_responses(401, 403, 422, 503, 504))
    def seed_demo(
        count: Annotated[int, Query(gt=0, le=MAX_SEED)] = 100,
        stock: Annotated[int, Query(ge=0, le=MAX_STOCK)] = 1_000_000,
        ctx: ServiceContext = Depends(context),
    ) -> dict[str, int]:
        """Seed the demo catalogue `p-0001`…`p-<count>` with `stock` each."""
        return _seed(ctx, demo_catalogue(count, stock))


def _seed(ctx: ServiceContext, products: Sequence[ProductIn]) -> dict[str, int]:
    try:
        return ctx.run(lambda: seed_catalogue(ctx.writer, products)).to_json()
    except DuplicateProductError as exc:
        raise ServiceError(422, str(exc)) from None
    except CatalogueConflictError as exc:
        raise conflict(f"{exc}, retry") from None


def create_app(
    settings: Settings, *, database: str | None = None, client_options: dict[str, Any] | None = None
) -> FastAPI:
    """The product service app (database `product_service` unless `database` is given)."""
    return create_service_app(
        SERVICE, settings, setup=_setup, routes=_routes, database=database, client_options=client_options
    )
