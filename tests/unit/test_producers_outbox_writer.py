"""Event validation before an outbox write: schema, topic, encoded size (default limit 1 MiB)."""

from __future__ import annotations

import pytest

from cdc.errors import EventTooLargeError, InvalidEventError
from cdc.event import Event
from cdc.outbox_writer import DEFAULT_MAX_EVENT_BYTES, encoded_size, validate_event
from cdc.settings import Settings


def page_view(**payload: object) -> Event:
    body = {"user_id": "u-1", "url": "/", "timestamp": "2024-05-01T10:00:00Z", **payload}
    return Event.create(
        topic="clickstream", aggregate_type="User", aggregate_id="u-1", type="PageViewed", payload=body
    )


def test_default_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_EVENT_BYTES == 1024 * 1024
    assert Settings().max_event_bytes == 1024 * 1024


def test_a_normal_event_passes() -> None:
    validate_event(page_view())


def test_oversized_event_is_refused_with_a_clear_error() -> None:
    event = page_view(note="x" * (1024 * 1024))  # an extra field the payload schema ignores
    assert encoded_size(event) > DEFAULT_MAX_EVENT_BYTES
    with pytest.raises(EventTooLargeError, match=r"over the 1048576-byte limit"):
        validate_event(event)


def test_limit_is_configurable() -> None:
    event = page_view(url="/" + "a" * 1500)
    validate_event(event)
    with pytest.raises(EventTooLargeError):
        validate_event(event, max_bytes=1024)


def test_invalid_payload_and_wrong_topic_are_refused() -> None:
    with pytest.raises(InvalidEventError, match="invalid PageViewed payload"):
        validate_event(
            Event.create(
                topic="clickstream",
                aggregate_type="User",
                aggregate_id="u",
                type="PageViewed",
                payload={"user_id": "u"},
            )
        )
    with pytest.raises(InvalidEventError, match="belongs on topic 'clickstream'"):
        validate_event(
            Event.create(
                topic="orders",
                aggregate_type="User",
                aggregate_id="u-1",
                type="PageViewed",
                payload=page_view().payload,
            )
        )
    with pytest.raises(InvalidEventError, match="unknown event type"):
        validate_event(
            Event.create(topic="orders", aggregate_type="Order", aggregate_id="o", type="OrderTeleported")
        )
