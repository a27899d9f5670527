"""Every string an event carries has a maximum length, and an event over it is refused where it is written."""

from __future__ import annotations

import types
import typing
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel

from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.limits import MAX_ID_LENGTH, MAX_TEXT_LENGTH
from cdc.outbox_writer import validate_event
from cdc.schemas import PAYLOADS, TOPIC_OF_TYPE, InventoryDecremented, OrderCancelled, ProductCreated

# A valid payload of every type: the base each over-long field is tried on.
SAMPLES: dict[str, dict[str, Any]] = {
    "ProductCreated": {"product_id": "p-1", "name": "Lamp", "price": "9.99", "stock": 5},
    "ProductUpdated": {"product_id": "p-1", "name": "Lamp", "price": "9.99"},
    "StockAdjusted": {"product_id": "p-1", "change": 3, "stock_after": 8},
    "InventoryDecremented": {"product_id": "p-1", "quantity": 1, "stock_after": 4, "order_id": "o-1",
                             "customer_id": "c-1"},
    "ProductSnapshot": {"product_id": "p-1", "name": "Lamp", "price": "9.99", "stock": 5},
    "OrderCreated": {"order_id": "o-1", "customer_id": "c-1", "total": "9.99", "currency": "EUR",
                     "items": [{"product_id": "p-1", "quantity": 1, "unit_price": "9.99"}]},
    "PaymentConfirmed": {"order_id": "o-1", "amount": "9.99", "payment_id": "pay-1"},
    "OrderShipped": {"order_id": "o-1", "carrier": "DHL", "tracking_number": "TRK-1"},
    "OrderDelivered": {"order_id": "o-1"},
    "OrderRefunded": {"order_id": "o-1", "amount": "1.00", "reason": "broken"},
    "OrderCancelled": {"order_id": "o-1", "reason": "changed mind"},
    "PageViewed": {"user_id": "u-1", "url": "/p/1", "product_id": "p-1", "referrer": "/",
                   "timestamp": "2026-01-01T00:00:00Z"},
}


def _is_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_is_str(a) for a in typing.get_args(annotation))
    return False


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


Path = tuple[str | int, ...]


def string_fields(model: type[BaseModel], prefix: Path = ()) -> list[tuple[Path, int]]:
    """(path, max_length) of every string field of `model`, nested models (lists of them) included."""
    out: list[tuple[Path, int]] = []
    for name, info in model.model_fields.items():
        nested = _nested_model(info.annotation)
        if nested is not None:
            out += string_fields(nested, (*prefix, name, 0))
        elif _is_str(info.annotation):
            limits = [m.max_length for m in info.metadata if isinstance(m, annotated_types.MaxLen)]
            assert limits, f"{model.__name__}.{name} is a string without a maximum length"
            out.append(((*prefix, name), limits[0]))
    return out


CASES = [(t, path, limit) for t, model in PAYLOADS.items() for path, limit in string_fields(model)]


def _with(payload: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(payload)
    target: Any = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


def _event(event_type: str, payload: dict[str, Any], aggregate_id: str = "a-1") -> Event:
    return Event.create(topic=TOPIC_OF_TYPE[event_type], aggregate_type="X", aggregate_id=aggregate_id,
                        type=event_type, version=1, payload=payload)


def test_every_payload_type_has_a_sample_and_every_string_a_limit() -> None:
    assert set(SAMPLES) == set(PAYLOADS)
    for event_type, payload in SAMPLES.items():
        validate_event(_event(event_type, payload))
    assert all(limit <= MAX_TEXT_LENGTH for _, _, limit in CASES)
    ids = [(t, p) for t, p, limit in CASES if p[-1] in ("product_id", "order_id", "customer_id", "user_id")]
    assert ids and all(limit == MAX_ID_LENGTH for t, p, limit in CASES if (t, p) in ids)


@pytest.mark.parametrize(
    ("event_type", "path", "limit"), CASES, ids=[f"{t}.{'.'.join(map(str, p))}" for t, p, _ in CASES]
)
def test_the_writer_refuses_a_string_over_its_limit_and_takes_one_at_it(
    event_type: str, path: tuple[str | int, ...], limit: int
) -> None:
    sample = SAMPLES[event_type]
    # At the limit: a value of the field's own shape (a currency must still be three capitals).
    at_limit = "EUR" if path[-1] == "currency" else "x" * limit
    validate_event(_event(event_type, _with(sample, path, at_limit)))
    too_long = "EURO" if path[-1] == "currency" else "x" * (limit + 1)
    with pytest.raises(InvalidEventError, match=rf"invalid {event_type} payload: {'.'.join(map(str, path))}"):
        validate_event(_event(event_type, _with(sample, path, too_long)))


def test_aggregate_id_over_the_id_limit_is_refused() -> None:
    _event("OrderDelivered", SAMPLES["OrderDelivered"], aggregate_id="a" * MAX_ID_LENGTH)
    with pytest.raises(InvalidEventError, match="aggregate_id: String should have at most 200 characters"):
        _event("OrderDelivered", SAMPLES["OrderDelivered"], aggregate_id="a" * (MAX_ID_LENGTH + 1))


def test_a_header_over_the_id_limit_is_refused() -> None:
    with pytest.raises(InvalidEventError, match=r"headers\.trace_id"):
        Event.create(topic="orders", aggregate_type="Order", aggregate_id="o-1", type="OrderDelivered",
                     payload=SAMPLES["OrderDelivered"], trace_id="t" * (MAX_ID_LENGTH + 1))


def test_building_a_payload_with_a_bad_field_raises_invalid_event_error() -> None:
    """Producers build payloads from client input: a bad field is a refused event (422), not a ValidationError."""
    with pytest.raises(InvalidEventError, match="invalid InventoryDecremented payload: order_id"):
        InventoryDecremented.build(product_id="p", quantity=1, stock_after=0, order_id="o" * (MAX_ID_LENGTH + 1))
    with pytest.raises(InvalidEventError, match="invalid OrderCancelled payload: reason"):
        OrderCancelled.build(order_id="o", reason="r" * (MAX_TEXT_LENGTH + 1))
    with pytest.raises(InvalidEventError, match="invalid ProductCreated payload: stock"):
        ProductCreated.build(product_id="p", name="n", price="1.00", stock=2**31)
