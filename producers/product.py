"""The product service (`product_service`): a catalogue with stock; a purchase decrements stock and writes
`InventoryDecremented` (topic `inventory`, aggregate Product, version = the product's new `version`) in the
same transaction, or writes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ReturnDocument, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database

from cdc.event import Event
from cdc.http_api import error_responses
from cdc.limits import MAX_ID_LENGTH, MAX_TEXT_LENGTH
from cdc.logs import get_logger
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import TOPIC_INVENTORY, InventoryDecremented, payload_json
from cdc.settings import Settings
from producers.app import ServiceContext, conflict, context, create_service_app, not_found
from producers.bounds import MAX_AMOUNT, MAX_QUANTITY, MAX_STOCK

SERVICE = "product"
SOURCE = "product-service"
PRODUCTS = "products"
PROJECTION = {"_id": 1, "name": 1, "price": 1, "stock": 1}
#: Most products one seed request may write: a larger one took over the 10 s request deadline here.
MAX_SEED = 1000

Document = dict[str, Any]
ProductId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[A-Za-z0-9._:-]+$")]

log = get_logger(__name__)


class InsufficientStockError(Exception):
    """Not enough stock left for the purchase."""


class UnknownProductError(Exception):
    """No such product."""


class ProductIn(BaseModel):
    """A catalogue entry to seed (upsert): name, price, stock."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH)
    price: Decimal = Field(ge=0, le=MAX_AMOUNT, max_digits=12, decimal_places=2)
    stock: int = Field(ge=0, le=MAX_STOCK)


class PurchaseResult(BaseModel):
    product_id: str
    quantity: int
    stock: int
    version: int
    event_id: str


def product_view(doc: Document) -> dict[str, Any]:
    """A product document (projected) as JSON."""
    return {"id": doc["_id"], "name": doc["name"], "price": str(doc["price"]), "stock": doc["stock"]}


def seed_catalogue(db: Database[Document], products: Sequence[ProductIn]) -> int:
    """Upsert products (name, price, stock; new ones start at version 0). Returns how many were written."""
    if not products:
        return 0
    ops = [
        UpdateOne(
            {"_id": p.id},
            {
                "$set": {"name": p.name, "price": str(p.price), "stock": p.stock},
                "$setOnInsert": {"version": 0},
            },
            upsert=True,
        )
        for p in products
    ]
    result = db[PRODUCTS].bulk_write(ops, ordered=False)
    return result.upserted_count + result.matched_count


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
            projection={"stock": 1, "version": 1},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None:
            if products.find_one({"_id": product_id}, {"_id": 1}, session=session) is None:
                raise UnknownProductError(product_id)
            raise InsufficientStockError(product_id)
        event = Event.create(
            topic=TOPIC_INVENTORY,
            aggregate_type="Product",
            aggregate_id=product_id,
            type="InventoryDecremented",
            version=doc["version"],
            source_service=SOURCE,
            trace_id=trace_id,
            payload=payload_json(
                InventoryDecremented(
                    product_id=product_id,
                    quantity=quantity,
                    stock_after=doc["stock"],
                    order_id=order_id,
                    customer_id=customer_id,
                )
            ),
        )
        return PurchaseResult(
            product_id=product_id,
            quantity=quantity,
            stock=doc["stock"],
            version=doc["version"],
            event_id=event.event_id,
        ), [event]

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
        """Seed (upsert) catalogue entries."""
        return {"written": ctx.run(lambda: seed_catalogue(ctx.db, products))}

    @app.post("/products/seed", responses=error_responses(401, 403, 422, 503, 504))
    def seed_demo(
        count: Annotated[int, Query(gt=0, le=MAX_SEED)] = 100,
        stock: Annotated[int, Query(ge=0, le=MAX_STOCK)] = 1_000_000,
        ctx: ServiceContext = Depends(context),
    ) -> dict[str, int]:
        """Seed the demo catalogue `p-0001`…`p-<count>` with `stock` each."""
        return {"written": ctx.run(lambda: seed_catalogue(ctx.db, demo_catalogue(count, stock)))}


def create_app(
    settings: Settings, *, database: str | None = None, client_options: dict[str, Any] | None = None
) -> FastAPI:
    """The product service app (database `product_service` unless `database` is given)."""
    return create_service_app(
        SERVICE, settings, setup=_setup, routes=_routes, database=database, client_options=client_options
    )
