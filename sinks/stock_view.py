"""Postgres product stock view: one row per product, its stock level and version as the product service has them.

Every inventory event carries the product's version after it: ProductCreated (the first stock level),
StockAdjusted (a new level), InventoryDecremented (a purchase: level after it, units sold), ProductUpdated (name or
price: only the version moves). An event at or below the row's version changes nothing. ProductSnapshot (from
`cdcflow resnapshot`) is the product's whole state: taken at a later version, and at the row's own version when
its stock differs (so a resnapshot repairs a row that missed changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar

from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.schemas import (
    InventoryDecremented,
    ProductCreated,
    ProductSnapshot,
    ProductUpdated,
    StockAdjusted,
    parse_payload,
)
from sinks.base import PermanentSinkError
from sinks.postgres import PostgresFoldSink


@dataclass(frozen=True)
class StockRow:
    """The stock view row."""

    product_id: str
    stock: int
    units_sold: int = 0
    version: int = 0
    last_order_id: str | None = None
    updated_at: datetime | None = None
    last_event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        data = asdict(self)
        data["updated_at"] = None if self.updated_at is None else self.updated_at.isoformat()
        return data


def apply_stock_event(row: StockRow | None, event: Event) -> StockRow | None:
    """The stock row after `event`; None when it changes nothing. InvalidEventError for a non-inventory event."""
    payload = parse_payload(event)
    version = event.version if event.version is not None else (row.version if row else 0)
    if isinstance(payload, ProductSnapshot):
        if row is not None and (version < row.version or (version == row.version and row.stock == payload.stock)):
            return None
    elif row is not None and event.version is not None and event.version <= row.version:
        return None
    units_sold = row.units_sold if row else 0
    last_order_id = row.last_order_id if row else None
    if isinstance(payload, InventoryDecremented):
        stock = payload.stock_after
        units_sold += payload.quantity
        last_order_id = payload.order_id
    elif isinstance(payload, ProductCreated | ProductSnapshot):
        stock = payload.stock
    elif isinstance(payload, StockAdjusted):
        stock = payload.stock_after
    elif isinstance(payload, ProductUpdated):
        if row is None:
            # Name and price only: without the product's earlier events there is no stock level to show yet.
            return None
        stock = row.stock
    else:
        raise InvalidEventError(f"{event.type} is not an inventory event")
    return StockRow(
        product_id=payload.product_id,
        stock=stock,
        units_sold=units_sold,
        version=version,
        last_order_id=last_order_id,
        updated_at=event.occurred_at,
        last_event_id=event.event_id,
    )


def stock_key(event: Event) -> str:
    """The product an inventory event belongs to."""
    product_id = event.payload.get("product_id")
    return product_id if isinstance(product_id, str) and product_id else event.aggregate_id


class StockViewSink(PostgresFoldSink[StockRow]):
    """The `stock_view` read model on Postgres."""

    name: ClassVar[str] = "stock_view"
    event_types: ClassVar[frozenset[str]] = frozenset(
        {"ProductCreated", "ProductUpdated", "StockAdjusted", "InventoryDecremented", "ProductSnapshot"}
    )
    table: ClassVar[str] = "stock_view"
    key_column: ClassVar[str] = "product_id"
    columns: ClassVar[tuple[str, ...]] = (
        "product_id", "stock", "units_sold", "version", "last_order_id", "updated_at", "last_event_id",
    )
    column_ddl: ClassVar[str] = (
        "stock integer NOT NULL, units_sold integer NOT NULL, version integer NOT NULL, last_order_id text, "
        "updated_at timestamptz, last_event_id uuid"
    )

    def key_of(self, event: Event) -> str:
        return stock_key(event)

    def fold(self, row: StockRow | None, event: Event) -> StockRow | None:
        try:
            return apply_stock_event(row, event)
        except InvalidEventError as exc:
            raise PermanentSinkError(str(exc), event_id=event.event_id) from exc

    def to_db(self, row: StockRow) -> tuple[Any, ...]:
        return (row.product_id, row.stock, row.units_sold, row.version, row.last_order_id, row.updated_at,
                row.last_event_id)

    def from_db(self, values: Sequence[Any]) -> StockRow:
        product_id, stock, units_sold, version, last_order_id, updated_at, last_event_id = values
        return StockRow(product_id, stock, units_sold, version, last_order_id, updated_at,
                        None if last_event_id is None else str(last_event_id))

    def row_json(self, row: StockRow) -> dict[str, Any]:
        return row.to_json()
