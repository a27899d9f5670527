"""Payload schemas of the event types: one definition, used by producers to build and by sinks to validate.

Topics and types:
- `inventory` (aggregate Product, versioned: `version` is the product's version after the change):
  ProductCreated, ProductUpdated, StockAdjusted (catalogue writes), InventoryDecremented (a purchase), and
  ProductSnapshot (a product's whole state, made by `cdcflow resnapshot`; the service never writes one)
- `orders` (aggregate Order, versioned 1, 2, 3 …): OrderCreated, PaymentConfirmed, OrderShipped,
  OrderDelivered, OrderRefunded, OrderCancelled
- `clickstream` (aggregate User): PageViewed

Every string field has a maximum length (cdc/limits.py), so an event that could not be delivered downstream is
refused where it is built: `Payload.build(...)` raises InvalidEventError for a bad field, and so does the outbox
writer for an event whose payload is invalid.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.limits import (
    CURRENCY_PATTERN,
    MAX_CARRIER_LENGTH,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_STOCK,
    MAX_TEXT_LENGTH,
    MAX_URL_LENGTH,
)

TOPIC_INVENTORY = "inventory"
TOPIC_ORDERS = "orders"
TOPIC_CLICKSTREAM = "clickstream"
TOPICS = (TOPIC_INVENTORY, TOPIC_ORDERS, TOPIC_CLICKSTREAM)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of `topic`."""
    return f"{topic}.dlq"


def _describe(event_type: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
    return f"invalid {event_type} payload: {where}: {first.get('msg')}"


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def build(cls, **fields: Any) -> Self:
        """The payload, or InvalidEventError naming the bad field. Producers build payloads from what a client
        sent with this, so a bad field is a refused event (HTTP 422 in the services), not a ValidationError."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidEventError(_describe(cls.__name__, exc)) from exc


# -- inventory ----------------------------------------------------------------------------------------


class ProductCreated(_Payload):
    """A product entered the catalogue (version 1) with its name, price and first stock level."""

    product_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    stock: int = Field(ge=0, le=MAX_STOCK)


class ProductUpdated(_Payload):
    """A product's catalogue details changed: its name and price now (its stock did not change)."""

    product_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)


class StockAdjusted(_Payload):
    """A product's stock was set to a new level outside a purchase (a restock, or a correction down):
    `change` = `stock_after` minus the level before, never 0."""

    product_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    change: int = Field(ge=-MAX_STOCK, le=MAX_STOCK)
    stock_after: int = Field(ge=0, le=MAX_STOCK)

    @field_validator("change")
    @classmethod
    def _a_change(cls, value: int) -> int:
        if value == 0:
            raise ValueError("a stock adjustment changes the stock (0 is no adjustment)")
        return value


class InventoryDecremented(_Payload):
    """Stock of a product went down by `quantity` (a purchase); `stock_after` is the new level."""

    product_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    quantity: int = Field(gt=0)
    stock_after: int = Field(ge=0, le=MAX_STOCK)
    order_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    customer_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)


class ProductSnapshot(_Payload):
    """A product's whole state at the event's version, read from the products collection by `cdcflow
    resnapshot --service product`: not a change, so a read model takes it at its version or a later one."""

    product_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    stock: int = Field(ge=0, le=MAX_STOCK)


# -- orders ---------------------------------------------------------------------------------------------


class OrderItem(_Payload):
    """One line of an order."""

    product_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    quantity: int = Field(gt=0)
    unit_price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)


class OrderCreated(_Payload):
    """A customer placed an order."""

    order_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    customer_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    items: list[OrderItem] = Field(min_length=1)
    total: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    currency: str = Field(default="EUR", min_length=3, max_length=3, pattern=CURRENCY_PATTERN)


class PaymentConfirmed(_Payload):
    """The order was paid."""

    order_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    amount: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    payment_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)


class OrderShipped(_Payload):
    """The order left the warehouse."""

    order_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    carrier: str = Field(min_length=1, max_length=MAX_CARRIER_LENGTH)
    tracking_number: str = Field(min_length=1, max_length=MAX_ID_LENGTH)


class OrderDelivered(_Payload):
    """The order reached the customer."""

    order_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)


class OrderRefunded(_Payload):
    """Money went back to the customer (the whole order, or part of it)."""

    order_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    reason: str = Field(default="", max_length=MAX_TEXT_LENGTH)


class OrderCancelled(_Payload):
    """The order was cancelled before shipping."""

    order_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    reason: str = Field(default="", max_length=MAX_TEXT_LENGTH)


# -- clickstream ----------------------------------------------------------------------------------------


class PageViewed(_Payload):
    """A visitor viewed a page (optionally a product page)."""

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    product_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    referrer: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    timestamp: datetime


PAYLOADS: dict[str, type[_Payload]] = {
    "ProductCreated": ProductCreated,
    "ProductUpdated": ProductUpdated,
    "StockAdjusted": StockAdjusted,
    "InventoryDecremented": InventoryDecremented,
    "ProductSnapshot": ProductSnapshot,
    "OrderCreated": OrderCreated,
    "PaymentConfirmed": PaymentConfirmed,
    "OrderShipped": OrderShipped,
    "OrderDelivered": OrderDelivered,
    "OrderRefunded": OrderRefunded,
    "OrderCancelled": OrderCancelled,
    "PageViewed": PageViewed,
}

#: Event types of the inventory topic that a product's catalogue and purchases write (ProductSnapshot is not one:
#: resnapshot makes it from the stored state).
PRODUCT_EVENT_TYPES = frozenset({"ProductCreated", "ProductUpdated", "StockAdjusted", "InventoryDecremented"})

TOPIC_OF_TYPE: dict[str, str] = {
    "ProductCreated": TOPIC_INVENTORY,
    "ProductUpdated": TOPIC_INVENTORY,
    "StockAdjusted": TOPIC_INVENTORY,
    "InventoryDecremented": TOPIC_INVENTORY,
    "ProductSnapshot": TOPIC_INVENTORY,
    "OrderCreated": TOPIC_ORDERS,
    "PaymentConfirmed": TOPIC_ORDERS,
    "OrderShipped": TOPIC_ORDERS,
    "OrderDelivered": TOPIC_ORDERS,
    "OrderRefunded": TOPIC_ORDERS,
    "OrderCancelled": TOPIC_ORDERS,
    "PageViewed": TOPIC_CLICKSTREAM,
}


def payload_json(model: _Payload) -> dict[str, Any]:
    """A payload model as a JSON-ready dict (decimals as strings, times as ISO-8601)."""
    return model.model_dump(mode="json")


def parse_payload(event: Event) -> _Payload:
    """The typed payload of `event`; InvalidEventError for an unknown type or an invalid payload."""
    model = PAYLOADS.get(event.type)
    if model is None:
        raise InvalidEventError(f"unknown event type {event.type!r}")
    try:
        return model.model_validate(event.payload)
    except ValidationError as exc:
        raise InvalidEventError(_describe(event.type, exc)) from exc
