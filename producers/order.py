"""The order service (`order_service`), event-sourced.

- `order_events`: append-only, one document per event, unique index on (order_id, version): two concurrent
  appends can never both get version N. The loser's transaction fails (write conflict → the driver retries
  it; duplicate key → we retry it) and re-reads the order; after `order_append_retry_seconds` it gets 409.
- `order_snapshots`: the state every `order_snapshot_interval` events; state = snapshot + events after it.
- every event also goes to the outbox (topic `orders`, aggregate Order, same version) in the same transaction.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Path
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymongo import ASCENDING, IndexModel
from pymongo.client_session import ClientSession
from pymongo.errors import DuplicateKeyError

from cdc.event import Event
from cdc.http_api import error_responses
from cdc.limits import MAX_ID_LENGTH
from cdc.logs import get_logger
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import TOPIC_ORDERS, OrderItem, payload_json
from cdc.settings import Settings
from producers.app import ServiceContext, ServiceError, conflict, context, create_service_app, not_found
from producers.bounds import MAX_AMOUNT, MAX_QUANTITY
from producers.order_state import (
    CancelOrder,
    Command,
    ConfirmPayment,
    CreateOrder,
    DeliverOrder,
    OrderNotFoundError,
    OrderState,
    RefundOrder,
    ShipOrder,
    StoredEvent,
    TransitionError,
    decide,
    fold_order,
)

SERVICE = "order"
SOURCE = "order-service"
EVENTS = "order_events"
SNAPSHOTS = "order_snapshots"

Document = dict[str, Any]
OrderId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[A-Za-z0-9._:-]+$")]

log = get_logger(__name__)


class ConcurrencyError(Exception):
    """Appends to the same order kept colliding until the retry deadline."""


def _stored(doc: Document) -> StoredEvent:
    return StoredEvent(type=doc["type"], version=doc["version"], payload=doc["payload"])


class OrderStore:
    """Event store of orders in one service database, writing through the outbox writer."""

    def __init__(
        self, writer: OutboxWriter, *, snapshot_interval: int = 100, retry_seconds: float = 5.0
    ) -> None:
        self.writer = writer
        self.events = writer.database[EVENTS]
        self.snapshots = writer.database[SNAPSHOTS]
        self.snapshot_interval = snapshot_interval
        self.retry_seconds = retry_seconds

    def ensure_indexes(self) -> None:
        self.events.create_indexes(
            [
                IndexModel(
                    [("order_id", ASCENDING), ("version", ASCENDING)], name="order_version", unique=True
                ),
            ]
        )

    # -- reading ----------------------------------------------------------------------------------------

    def load(self, order_id: str, session: ClientSession | None = None) -> OrderState:
        """Latest snapshot + the events after it."""
        snap = self.snapshots.find_one({"_id": order_id}, session=session)
        state = OrderState.from_document(snap["state"]) if snap else OrderState(order_id=order_id)
        tail = self.events.find(
            {"order_id": order_id, "version": {"$gt": state.version}}, session=session
        ).sort("version", ASCENDING)
        return fold_order((_stored(doc) for doc in tail), state)

    def replay(self, order_id: str) -> OrderState:
        """Every event from version 1, ignoring snapshots."""
        docs = self.events.find({"order_id": order_id}).sort("version", ASCENDING)
        return fold_order((_stored(doc) for doc in docs), order_id=order_id)

    # -- writing ----------------------------------------------------------------------------------------

    def execute(self, order_id: str, command: Command, *, trace_id: str | None = None) -> OrderState:
        """Decide on `command` against the current state and append its event (order_events, snapshot when
        due, outbox) in one transaction. Raises OrderNotFoundError, TransitionError or ConcurrencyError."""
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                state, event = self.writer.transact(lambda s: self._append(s, order_id, command, trace_id))
            except DuplicateKeyError:
                # Someone else committed this version first: re-read and decide again.
                if time.monotonic() >= deadline:
                    raise ConcurrencyError(order_id) from None
                continue
            log.info(
                "order_event",
                event_id=event.event_id,
                order_id=order_id,
                type=event.type,
                version=event.version,
                status=state.status.value,
            )
            return state

    def _append(
        self, session: ClientSession, order_id: str, command: Command, trace_id: str | None
    ) -> tuple[tuple[OrderState, Event], list[Event]]:
        state = self.load(order_id, session)
        event_type, payload = decide(state, command)
        version = state.version + 1
        event = Event.create(
            topic=TOPIC_ORDERS,
            aggregate_type="Order",
            aggregate_id=order_id,
            type=event_type,
            version=version,
            payload=payload_json(payload),
            source_service=SOURCE,
            trace_id=trace_id,
        )
        self.events.insert_one(
            {
                "_id": event.event_id,
                "order_id": order_id,
                "version": version,
                "type": event_type,
                "payload": event.payload,
                "occurred_at": event.occurred_at,
            },
            session=session,
        )
        new_state = fold_order([StoredEvent(event_type, version, event.payload)], state)
        if version % self.snapshot_interval == 0:
            self.snapshots.replace_one(
                {"_id": order_id},
                {"_id": order_id, "version": version, "state": new_state.to_document()},
                upsert=True,
                session=session,
            )
        return (new_state, event), [event]


# -- HTTP -----------------------------------------------------------------------------------------------


class OrderItemIn(BaseModel):
    """One line of a new order."""

    model_config = ConfigDict(extra="forbid")
    product_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    quantity: int = Field(gt=0, le=MAX_QUANTITY)
    unit_price: Decimal = Field(ge=0, le=MAX_AMOUNT, max_digits=12, decimal_places=2)


class CreateOrderIn(BaseModel):
    """A new order; its total (the sum of quantity x unit price) may not exceed MAX_AMOUNT."""

    model_config = ConfigDict(extra="forbid")
    order_id: str | None = Field(
        default=None, min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[A-Za-z0-9._:-]+$"
    )
    customer_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    items: list[OrderItemIn] = Field(min_length=1, max_length=500)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")

    @model_validator(mode="after")
    def _total_fits(self) -> CreateOrderIn:
        total = sum((item.unit_price * item.quantity for item in self.items), Decimal(0))
        if total > MAX_AMOUNT:
            raise ValueError(f"the order total {total} is over the largest amount an order may have ({MAX_AMOUNT})")
        return self

    def order_items(self) -> list[OrderItem]:
        return [OrderItem(**item.model_dump()) for item in self.items]


def _store(ctx: ServiceContext) -> OrderStore:
    return OrderStore(
        ctx.writer,
        snapshot_interval=ctx.settings.order_snapshot_interval,
        retry_seconds=ctx.settings.order_append_retry_seconds,
    )


def _run(ctx: ServiceContext, order_id: str, command: Command) -> dict[str, Any]:
    try:
        return ctx.run(lambda: _store(ctx).execute(order_id, command)).to_document()
    except OrderNotFoundError as exc:
        raise not_found(exc.reason) from None
    except TransitionError as exc:
        raise conflict(exc.reason) from None
    except ConcurrencyError:
        raise conflict(f"Concurrent modification of order {order_id}, retry") from None


def _setup(ctx: ServiceContext) -> None:
    _store(ctx).ensure_indexes()


#: Operations that take a new order's id (OpenAPI links, so clients and fuzzers can follow a created order).
ORDER_LINKS = {
    "GetOrder": "get_order_orders__order_id__get",
    **{f"{step.title()}Order": f"{step}_orders__order_id__{step}_post"
       for step in ("pay", "ship", "deliver", "refund", "cancel")},
}

#: What a lifecycle step can answer besides 200: no such order (404), not allowed now (409), bad body.
STEP_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422, 503, 504)


def _routes(app: FastAPI) -> None:
    @app.post("/orders", status_code=201, responses={**error_responses(400, 401, 403, 409, 413, 422, 503, 504), 201: {
        "description": "The new order",
        "links": {name: {"operationId": operation, "parameters": {"order_id": "$response.body#/order_id"}}
                  for name, operation in ORDER_LINKS.items()},
    }})
    def create_order(body: CreateOrderIn, ctx: ServiceContext = Depends(context)) -> dict[str, Any]:
        order_id = body.order_id or str(uuid.uuid4())
        command = CreateOrder(customer_id=body.customer_id, items=body.order_items(), currency=body.currency)
        return _run(ctx, order_id, command)

    @app.get("/orders/{order_id}", responses=error_responses(401, 403, 404, 422, 503, 504))
    def get_order(order_id: OrderId, ctx: ServiceContext = Depends(context)) -> dict[str, Any]:
        state = ctx.run(lambda: _store(ctx).load(order_id))
        if state.version == 0:
            raise not_found(f"Order {order_id} not found")
        return state.to_document()

    @app.post("/orders/{order_id}/pay", responses=STEP_ERRORS)
    def pay(
        order_id: OrderId,
        body: Annotated[ConfirmPayment | None, Body()] = None,
        ctx: ServiceContext = Depends(context),
    ) -> dict[str, Any]:
        return _run(ctx, order_id, body or ConfirmPayment())

    @app.post("/orders/{order_id}/ship", responses=STEP_ERRORS)
    def ship(
        order_id: OrderId,
        body: Annotated[ShipOrder | None, Body()] = None,
        ctx: ServiceContext = Depends(context),
    ) -> dict[str, Any]:
        return _run(ctx, order_id, body or ShipOrder())

    @app.post("/orders/{order_id}/deliver", responses=error_responses(401, 403, 404, 409, 422, 503, 504))
    def deliver(order_id: OrderId, ctx: ServiceContext = Depends(context)) -> dict[str, Any]:
        return _run(ctx, order_id, DeliverOrder())

    @app.post("/orders/{order_id}/refund", responses=STEP_ERRORS)
    def refund(
        order_id: OrderId,
        body: Annotated[RefundOrder | None, Body()] = None,
        ctx: ServiceContext = Depends(context),
    ) -> dict[str, Any]:
        return _run(ctx, order_id, body or RefundOrder())

    @app.post("/orders/{order_id}/cancel", responses=STEP_ERRORS)
    def cancel(
        order_id: OrderId,
        body: Annotated[CancelOrder | None, Body()] = None,
        ctx: ServiceContext = Depends(context),
    ) -> dict[str, Any]:
        return _run(ctx, order_id, body or CancelOrder())


def create_app(
    settings: Settings, *, database: str | None = None, client_options: dict[str, Any] | None = None
) -> FastAPI:
    """The order service app (database `order_service` unless `database` is given)."""
    return create_service_app(
        SERVICE, settings, setup=_setup, routes=_routes, database=database, client_options=client_options
    )


__all__ = ["ConcurrencyError", "OrderStore", "ServiceError", "create_app"]
