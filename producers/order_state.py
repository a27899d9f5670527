"""The order aggregate, pure: its state, how events change it (`apply`, `fold_order`) and which command is
allowed in which state (`decide`). No I/O here; `producers.order` stores and serves it.

Lifecycle:  CREATED --pay--> PAID --ship--> SHIPPED --deliver--> DELIVERED
            CREATED|PAID --cancel--> CANCELLED
            refunds (partial or whole) once paid; the order is REFUNDED when everything paid went back.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cdc.schemas import (
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderItem,
    OrderRefunded,
    OrderShipped,
    PaymentConfirmed,
)

ORDER_EVENT_TYPES = (
    "OrderCreated",
    "PaymentConfirmed",
    "OrderShipped",
    "OrderDelivered",
    "OrderRefunded",
    "OrderCancelled",
)
CENT = Decimal("0.01")


class OrderStatus(enum.StrEnum):
    NEW = "NEW"  # no event yet: the order does not exist
    CREATED = "CREATED"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"
    REFUNDED = "REFUNDED"


class OrderNotFoundError(Exception):
    """A command for an order that has no events."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"Order {order_id} not found")
        self.reason = str(self)


class TransitionError(Exception):
    """A command that the order's current state does not allow; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OrderState(BaseModel):
    """An order as of `version` (0 = does not exist). Immutable; JSON round-trips (snapshots)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str
    version: int = 0
    status: OrderStatus = OrderStatus.NEW
    customer_id: str | None = None
    items: tuple[OrderItem, ...] = ()
    total: Decimal = Decimal("0.00")
    currency: str = "EUR"
    paid_amount: Decimal = Decimal("0.00")
    payment_id: str | None = None
    refunded_amount: Decimal = Decimal("0.00")
    carrier: str | None = None
    tracking_number: str | None = None
    cancel_reason: str | None = None
    refunds: int = Field(default=0, ge=0)

    def to_document(self) -> dict[str, Any]:
        """JSON-ready form (decimals as strings) for snapshots and HTTP."""
        return self.model_dump(mode="json")

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> OrderState:
        return cls.model_validate(dict(doc))


# -- events ---------------------------------------------------------------------------------------------


def apply(state: OrderState, event_type: str, payload: Mapping[str, Any], version: int) -> OrderState:
    """The state after one event (events are trusted: they passed `decide` when written)."""
    if version != state.version + 1:
        raise ValueError(f"order {state.order_id}: event version {version} after version {state.version}")
    changes: dict[str, Any] = {"version": version}
    if event_type == "OrderCreated":
        created = OrderCreated.model_validate(payload)
        changes.update(
            status=OrderStatus.CREATED,
            customer_id=created.customer_id,
            items=tuple(created.items),
            total=created.total,
            currency=created.currency,
        )
    elif event_type == "PaymentConfirmed":
        paid = PaymentConfirmed.model_validate(payload)
        changes.update(status=OrderStatus.PAID, paid_amount=paid.amount, payment_id=paid.payment_id)
    elif event_type == "OrderShipped":
        shipped = OrderShipped.model_validate(payload)
        changes.update(
            status=OrderStatus.SHIPPED, carrier=shipped.carrier, tracking_number=shipped.tracking_number
        )
    elif event_type == "OrderDelivered":
        OrderDelivered.model_validate(payload)
        changes.update(status=OrderStatus.DELIVERED)
    elif event_type == "OrderRefunded":
        refunded = OrderRefunded.model_validate(payload)
        total_refunded = state.refunded_amount + refunded.amount
        changes.update(refunded_amount=total_refunded, refunds=state.refunds + 1)
        if total_refunded >= state.paid_amount:
            changes.update(status=OrderStatus.REFUNDED)
    elif event_type == "OrderCancelled":
        cancelled = OrderCancelled.model_validate(payload)
        changes.update(status=OrderStatus.CANCELLED, cancel_reason=cancelled.reason)
    else:
        raise ValueError(f"not an order event: {event_type!r}")
    return state.model_copy(update=changes)


@dataclass(frozen=True)
class StoredEvent:
    """An order event as the aggregate sees it."""

    type: str
    version: int
    payload: Mapping[str, Any] = field(default_factory=dict)


def fold_order(
    events: Iterable[StoredEvent], state: OrderState | None = None, *, order_id: str = ""
) -> OrderState:
    """Fold events (in version order) onto `state` (or a new order): snapshot + tail, or a full replay."""
    current = state if state is not None else OrderState(order_id=order_id)
    for event in events:
        current = apply(current, event.type, event.payload, event.version)
    return current


# -- commands -------------------------------------------------------------------------------------------


class CreateOrder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    customer_id: str = Field(min_length=1, max_length=200)
    items: list[OrderItem] = Field(min_length=1, max_length=500)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


class ConfirmPayment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    amount: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=2)
    payment_id: str | None = Field(default=None, max_length=200)


class ShipOrder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    carrier: str = Field(default="DHL", min_length=1, max_length=100)
    tracking_number: str | None = Field(default=None, max_length=200)


class DeliverOrder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RefundOrder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    amount: Decimal | None = Field(default=None, gt=0, max_digits=12, decimal_places=2)
    reason: str = Field(default="", max_length=1000)


class CancelOrder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    reason: str = Field(default="", max_length=1000)


Command = CreateOrder | ConfirmPayment | ShipOrder | DeliverOrder | RefundOrder | CancelOrder
OrderPayload = (
    OrderCreated | PaymentConfirmed | OrderShipped | OrderDelivered | OrderRefunded | OrderCancelled
)


def order_total(items: Iterable[OrderItem]) -> Decimal:
    return sum((item.unit_price * item.quantity for item in items), Decimal("0")).quantize(CENT)


def decide(state: OrderState, command: Command) -> tuple[str, OrderPayload]:
    """The event (type, payload model) that `command` produces in `state`.

    Raises OrderNotFoundError (no such order) or TransitionError (not allowed now, with the reason).
    """
    oid = state.order_id
    status = state.status
    if isinstance(command, CreateOrder):
        if status is not OrderStatus.NEW:
            raise TransitionError(f"Order {oid} already exists")
        return "OrderCreated", OrderCreated.build(
            order_id=oid,
            customer_id=command.customer_id,
            items=command.items,
            total=order_total(command.items),
            currency=command.currency,
        )
    if status is OrderStatus.NEW:
        raise OrderNotFoundError(oid)
    if isinstance(command, ConfirmPayment):
        if status is OrderStatus.CANCELLED:
            raise TransitionError("Cannot pay a cancelled order")
        if status is not OrderStatus.CREATED:
            raise TransitionError("Order already paid")
        amount = command.amount if command.amount is not None else state.total
        if amount != state.total:
            raise TransitionError(f"Payment amount {amount} does not match the order total {state.total}")
        return "PaymentConfirmed", PaymentConfirmed.build(
            order_id=oid, amount=amount, payment_id=command.payment_id
        )
    if isinstance(command, ShipOrder):
        if status is OrderStatus.CREATED:
            raise TransitionError("Cannot ship an order before payment")
        if status is not OrderStatus.PAID:
            raise TransitionError(f"Cannot ship an order that is {status.value.lower()}")
        return "OrderShipped", OrderShipped.build(
            order_id=oid,
            carrier=command.carrier,
            tracking_number=command.tracking_number or f"TRK-{oid[:12]}",
        )
    if isinstance(command, DeliverOrder):
        if status is not OrderStatus.SHIPPED:
            raise TransitionError(f"Cannot deliver an order that is {status.value.lower()} (not shipped)")
        return "OrderDelivered", OrderDelivered.build(order_id=oid)
    if isinstance(command, RefundOrder):
        if status is OrderStatus.REFUNDED:
            raise TransitionError("Order already refunded")
        if state.paid_amount <= 0:
            raise TransitionError("Cannot refund an order that was not paid")
        remaining = state.paid_amount - state.refunded_amount
        amount = command.amount if command.amount is not None else remaining
        if amount > remaining:
            raise TransitionError(f"Refund {amount} exceeds the refundable amount {remaining}")
        return "OrderRefunded", OrderRefunded.build(order_id=oid, amount=amount, reason=command.reason)
    if isinstance(command, CancelOrder):
        if status in (OrderStatus.CANCELLED, OrderStatus.REFUNDED):
            raise TransitionError(f"Order already {status.value.lower()}")
        if status not in (OrderStatus.CREATED, OrderStatus.PAID):
            raise TransitionError(f"Cannot cancel an order that is {status.value.lower()}")
        return "OrderCancelled", OrderCancelled.build(order_id=oid, reason=command.reason)
    raise TypeError(f"unknown command {type(command).__name__}")
