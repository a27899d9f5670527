"""Postgres order view: one row per order, its current state and version.

The fold (`apply_order_event`) is a pure function; the sink batches it (see sinks/postgres.py). An event at or
below the row's version changes nothing; events without a version are deduplicated by event id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.schemas import (
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderRefunded,
    OrderShipped,
    PaymentConfirmed,
    parse_payload,
)
from sinks.base import PermanentSinkError
from sinks.postgres import PostgresFoldSink

ORDER_EVENT_TYPES = frozenset(
    {"OrderCreated", "PaymentConfirmed", "OrderShipped", "OrderDelivered", "OrderRefunded", "OrderCancelled"}
)

ZERO = Decimal("0.00")


@dataclass(frozen=True)
class OrderRow:
    """The order view row."""

    order_id: str
    customer_id: str | None = None
    status: str = "unknown"
    items: tuple[tuple[str, int, Decimal], ...] = ()  # (product_id, quantity, unit_price)
    total: Decimal | None = None
    currency: str | None = None
    paid_amount: Decimal | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    refunded_amount: Decimal = ZERO
    cancel_reason: str | None = None
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        data = asdict(self)
        data["items"] = [
            {"product_id": p, "quantity": q, "unit_price": str(u)} for p, q, u in self.items
        ]
        for name in ("total", "paid_amount", "refunded_amount"):
            data[name] = None if data[name] is None else str(data[name])
        for name in ("created_at", "updated_at"):
            data[name] = None if data[name] is None else data[name].isoformat()
        return data


def apply_order_event(row: OrderRow | None, event: Event) -> OrderRow | None:
    """The order row after `event`; None if the event is stale (its version is not above the row's).

    Raises InvalidEventError for a payload that does not validate or a type that is not an order event.
    """
    if row is not None and event.version is not None and event.version <= row.version:
        return None
    payload = parse_payload(event)
    base = row or OrderRow(order_id=str(getattr(payload, "order_id", event.aggregate_id)))
    common: dict[str, Any] = {
        "version": event.version if event.version is not None else base.version,
        "updated_at": event.occurred_at,
        "last_event_id": event.event_id,
    }
    if isinstance(payload, OrderCreated):
        return replace(
            base,
            customer_id=payload.customer_id,
            status="created" if base.status == "unknown" else base.status,
            items=tuple((i.product_id, i.quantity, i.unit_price) for i in payload.items),
            total=payload.total,
            currency=payload.currency,
            created_at=event.occurred_at,
            **common,
        )
    if isinstance(payload, PaymentConfirmed):
        return replace(base, status="paid", paid_amount=payload.amount, **common)
    if isinstance(payload, OrderShipped):
        return replace(
            base, status="shipped", carrier=payload.carrier, tracking_number=payload.tracking_number, **common
        )
    if isinstance(payload, OrderDelivered):
        return replace(base, status="delivered", **common)
    if isinstance(payload, OrderRefunded):
        refunded = base.refunded_amount + payload.amount
        full = base.total is not None and refunded >= base.total
        return replace(
            base, status="refunded" if full else "partially_refunded", refunded_amount=refunded, **common
        )
    if isinstance(payload, OrderCancelled):
        return replace(base, status="cancelled", cancel_reason=payload.reason or None, **common)
    raise InvalidEventError(f"{event.type} is not an order event")


def fold_orders(events: Sequence[Event]) -> dict[str, OrderRow]:
    """Reference fold: every order's row after `events` applied one at a time (duplicates by id skipped)."""
    rows: dict[str, OrderRow] = {}
    seen: set[str] = set()
    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        key = order_key(event)
        new = apply_order_event(rows.get(key), event)
        if new is not None:
            rows[key] = new
    return rows


def order_key(event: Event) -> str:
    """The order an event belongs to: payload.order_id, else the aggregate id."""
    order_id = event.payload.get("order_id")
    return order_id if isinstance(order_id, str) and order_id else event.aggregate_id


class OrderViewSink(PostgresFoldSink[OrderRow]):
    """The `order_view` read model on Postgres."""

    name: ClassVar[str] = "order_view"
    event_types: ClassVar[frozenset[str]] = ORDER_EVENT_TYPES
    table: ClassVar[str] = "order_view"
    key_column: ClassVar[str] = "order_id"
    columns: ClassVar[tuple[str, ...]] = (
        "order_id", "customer_id", "status", "items", "total", "currency", "paid_amount", "carrier",
        "tracking_number", "refunded_amount", "cancel_reason", "version", "created_at", "updated_at",
        "last_event_id",
    )
    column_ddl: ClassVar[str] = (
        "customer_id text, status text NOT NULL, items jsonb NOT NULL DEFAULT '[]', total numeric(14,2), "
        "currency text, paid_amount numeric(14,2), carrier text, tracking_number text, "
        "refunded_amount numeric(14,2) NOT NULL DEFAULT 0, cancel_reason text, version integer NOT NULL, "
        "created_at timestamptz, updated_at timestamptz, last_event_id uuid"
    )

    def key_of(self, event: Event) -> str:
        return order_key(event)

    def fold(self, row: OrderRow | None, event: Event) -> OrderRow | None:
        try:
            return apply_order_event(row, event)
        except InvalidEventError as exc:
            raise PermanentSinkError(str(exc), event_id=event.event_id) from exc

    def to_db(self, row: OrderRow) -> tuple[Any, ...]:
        items = json.dumps([{"product_id": p, "quantity": q, "unit_price": str(u)} for p, q, u in row.items])
        return (
            row.order_id, row.customer_id, row.status, items, row.total, row.currency, row.paid_amount,
            row.carrier, row.tracking_number, row.refunded_amount, row.cancel_reason, row.version,
            row.created_at, row.updated_at, row.last_event_id,
        )

    def from_db(self, values: Sequence[Any]) -> OrderRow:
        (order_id, customer_id, status, items, total, currency, paid, carrier, tracking, refunded, reason,
         version, created_at, updated_at, last_event_id) = values
        return OrderRow(
            order_id=order_id,
            customer_id=customer_id,
            status=status,
            items=tuple((i["product_id"], int(i["quantity"]), Decimal(i["unit_price"])) for i in items or []),
            total=total,
            currency=currency,
            paid_amount=paid,
            carrier=carrier,
            tracking_number=tracking,
            refunded_amount=refunded,
            cancel_reason=reason,
            version=version,
            created_at=created_at,
            updated_at=updated_at,
            last_event_id=None if last_event_id is None else str(last_event_id),
        )

    def row_json(self, row: OrderRow) -> dict[str, Any]:
        return row.to_json()
