"""Payload schemas of the event types: one definition, used by producers to build and by sinks to validate.

Topics and types:
- `inventory` (aggregate Product): InventoryDecremented
- `orders` (aggregate Order, versioned 1, 2, 3 …): OrderCreated, PaymentConfirmed, OrderShipped,
  OrderDelivered, OrderRefunded, OrderCancelled
- `clickstream` (aggregate User): PageViewed
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cdc.errors import InvalidEventError
from cdc.event import Event

TOPIC_INVENTORY = "inventory"
TOPIC_ORDERS = "orders"
TOPIC_CLICKSTREAM = "clickstream"
TOPICS = (TOPIC_INVENTORY, TOPIC_ORDERS, TOPIC_CLICKSTREAM)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of `topic`."""
    return f"{topic}.dlq"


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# -- inventory ----------------------------------------------------------------------------------------


class InventoryDecremented(_Payload):
    """Stock of a product went down by `quantity` (a purchase); `stock_after` is the new level."""

    product_id: str = Field(min_length=1)
    quantity: int = Field(gt=0)
    stock_after: int = Field(ge=0)
    order_id: str | None = None
    customer_id: str | None = None


# -- orders ---------------------------------------------------------------------------------------------


class OrderItem(_Payload):
    """One line of an order."""

    product_id: str = Field(min_length=1)
    quantity: int = Field(gt=0)
    unit_price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)


class OrderCreated(_Payload):
    """A customer placed an order."""

    order_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    items: list[OrderItem] = Field(min_length=1)
    total: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    currency: str = "EUR"


class PaymentConfirmed(_Payload):
    """The order was paid."""

    order_id: str = Field(min_length=1)
    amount: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    payment_id: str | None = None


class OrderShipped(_Payload):
    """The order left the warehouse."""

    order_id: str = Field(min_length=1)
    carrier: str = Field(min_length=1)
    tracking_number: str = Field(min_length=1)


class OrderDelivered(_Payload):
    """The order reached the customer."""

    order_id: str = Field(min_length=1)


class OrderRefunded(_Payload):
    """Money went back to the customer (the whole order, or part of it)."""

    order_id: str = Field(min_length=1)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    reason: str = ""


class OrderCancelled(_Payload):
    """The order was cancelled before shipping."""

    order_id: str = Field(min_length=1)
    reason: str = ""


# -- clickstream ----------------------------------------------------------------------------------------


class PageViewed(_Payload):
    """A visitor viewed a page (optionally a product page)."""

    user_id: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000)
    product_id: str | None = None
    referrer: str | None = None
    timestamp: datetime


PAYLOADS: dict[str, type[_Payload]] = {
    "InventoryDecremented": InventoryDecremented,
    "OrderCreated": OrderCreated,
    "PaymentConfirmed": PaymentConfirmed,
    "OrderShipped": OrderShipped,
    "OrderDelivered": OrderDelivered,
    "OrderRefunded": OrderRefunded,
    "OrderCancelled": OrderCancelled,
    "PageViewed": PageViewed,
}

TOPIC_OF_TYPE: dict[str, str] = {
    "InventoryDecremented": TOPIC_INVENTORY,
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
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise InvalidEventError(f"invalid {event.type} payload: {where}: {first.get('msg')}") from exc
