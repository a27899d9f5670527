"""The event: validation, encodings, headers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.outbox import outbox_document
from cdc.schemas import OrderCreated, PageViewed, parse_payload, payload_json


def make(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "topic": "orders",
        "aggregate_type": "Order",
        "aggregate_id": "o-1",
        "type": "OrderCreated",
        "version": 1,
        "payload": {"order_id": "o-1", "customer_id": "c-1", "items": [
            {"product_id": "p-1", "quantity": 2, "unit_price": "9.50"}], "total": "19.00"},
        "source_service": "order",
    }
    fields.update(overrides)
    return Event.create(**fields)  # type: ignore[arg-type]


def test_create_fills_id_time_and_headers() -> None:
    event = make()
    uuid.UUID(event.event_id)
    assert event.occurred_at.tzinfo is not None
    assert event.headers["source_service"] == "order" and event.trace_id


def test_json_round_trip_is_identity() -> None:
    event = make()
    assert Event.from_json(event.to_json()) == event
    assert json.loads(event.to_json())["occurred_at"].endswith("Z")


def test_document_round_trip_drops_bookkeeping() -> None:
    event = make()
    doc = outbox_document(event)
    assert doc["_id"] == event.event_id and "published" not in doc
    assert Event.parse(doc) == event


def test_naive_datetime_is_taken_as_utc() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    assert make(occurred_at=naive).occurred_at == naive.replace(tzinfo=UTC)
    other = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert make(occurred_at=other).occurred_at == naive.replace(tzinfo=UTC)


def test_kafka_key_and_headers() -> None:
    event = make()
    assert event.kafka_key() == b"o-1"
    headers = dict(event.kafka_headers())
    assert headers["event_id"] == event.event_id.encode()
    assert headers["type"] == b"OrderCreated" and headers["version"] == b"1"
    assert headers["trace_id"] == event.headers["trace_id"].encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "malformed JSON"),
        (json.dumps({"topic": "orders"}).encode(), "aggregate_type"),
    ],
)
def test_bad_bytes_raise_invalid_event_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEventError, match=reason):
        Event.from_json(raw)


@pytest.mark.parametrize(
    "overrides",
    [{"topic": "bad topic!"}, {"aggregate_id": ""}, {"version": 0}, {"payload": {"x": float("nan")}},
     {"payload": {"x": object()}}],
)
def test_invalid_fields_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidEventError):
        make(**overrides)


def test_event_is_immutable() -> None:
    event = make()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        event.type = "Other"  # type: ignore[misc]


def test_payload_schema_validation() -> None:
    assert isinstance(parse_payload(make()), OrderCreated)
    with pytest.raises(InvalidEventError, match="unknown event type"):
        parse_payload(make(type="Nope"))
    with pytest.raises(InvalidEventError, match="items"):
        parse_payload(make(payload={"order_id": "o", "customer_id": "c", "items": [], "total": "1"}))


@given(
    user=st.text(min_size=1, max_size=30),
    url=st.text(min_size=1, max_size=80),
    product=st.none() | st.text(min_size=1, max_size=10),
)
def test_page_view_round_trips_through_json(user: str, url: str, product: str | None) -> None:
    payload = payload_json(PageViewed(user_id=user, url=url, product_id=product, timestamp=datetime.now(UTC)))
    event = Event.create(topic="clickstream", aggregate_type="User", aggregate_id=user, type="PageViewed",
                         payload=payload)
    decoded = Event.from_json(event.to_json())
    assert decoded == event
    assert parse_payload(decoded) == parse_payload(event)
