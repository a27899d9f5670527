"""The event: one definition, shared by producers, the tailer, the stream workers and the sinks.

In MongoDB the event id is the outbox document's `_id`; on Kafka the value is the event as JSON (with
`event_id`), the key is `aggregate_id`, and the headers repeat event_id, type, version and trace id.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_serializer,
    field_validator,
)

from cdc.errors import InvalidEventError
from cdc.limits import MAX_ID_LENGTH

SCHEMA_VERSION = "1"

# Header names on Kafka records.
H_EVENT_ID = "event_id"
H_TYPE = "type"
H_VERSION = "version"
H_TRACE_ID = "trace_id"
H_SOURCE = "source_service"
H_SCHEMA = "schema_version"
# Event headers repeated as Kafka record headers, in this order, when present.
FORWARDED_HEADERS = (H_TRACE_ID, H_SOURCE, H_SCHEMA)

# What `str(uuid.UUID(...))` returns; ids already in this form skip building a UUID (the tailer's hot path).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, at millisecond precision (what BSON stores)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


class Event(BaseModel):
    """A domain event as written to an outbox and forwarded to Kafka. Immutable."""

    # allow_inf_nan=False: NaN and infinities are not JSON, so a payload holding one is refused.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    aggregate_type: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    # The Kafka key and every read model's key: an id like any other (cdc/limits.py says why 200).
    aggregate_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    type: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    version: int | None = Field(default=None, ge=1)
    occurred_at: datetime = Field(default_factory=utcnow)
    # JsonValue is checked by pydantic-core itself: only JSON types (no dates, bytes, ObjectIds, tuples).
    payload: dict[str, JsonValue] = Field(default_factory=dict)
    # Trace id, source service, schema version: short values, repeated as Kafka record headers.
    headers: dict[str, Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]] = Field(default_factory=dict)

    @field_validator("event_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if _CANONICAL_UUID.fullmatch(value):
            return value
        try:
            return str(uuid.UUID(value))
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"event_id must be a UUID string, got {value!r}") from exc

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            # BSON dates come back naive unless tz_aware; they are UTC by definition.
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @field_serializer("occurred_at", when_used="json")
    def _iso_utc(self, value: datetime) -> str:
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        topic: str,
        aggregate_type: str,
        aggregate_id: str,
        type: str,
        payload: Mapping[str, Any] | None = None,
        version: int | None = None,
        source_service: str = "",
        trace_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Event:
        """A new, validated event with a fresh id; raises InvalidEventError on bad fields."""
        headers = {H_SCHEMA: SCHEMA_VERSION, H_TRACE_ID: trace_id or uuid.uuid4().hex}
        if source_service:
            headers[H_SOURCE] = source_service
        data: dict[str, Any] = {
            "topic": topic,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "type": type,
            "version": version,
            "payload": dict(payload or {}),
            "headers": headers,
        }
        if occurred_at is not None:
            data["occurred_at"] = occurred_at
        return cls.parse(data)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Event:
        """Validate a mapping (JSON object or outbox document) into an Event, or raise InvalidEventError."""
        fields = dict(data)
        if "_id" in fields:
            fields.setdefault("event_id", fields.pop("_id"))
        # Outbox bookkeeping fields are not part of the event.
        for key in ("published", "published_at", "created_seq"):
            fields.pop(key, None)
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidEventError(_describe(exc)) from exc

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        """Decode Kafka value bytes; raises InvalidEventError for malformed JSON or a bad event."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidEventError(f"malformed JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidEventError(f"event must be a JSON object, got {type(data).__name__}")
        return cls.parse(data)

    # -- encodings ------------------------------------------------------------------------------------

    def to_document(self) -> dict[str, Any]:
        """The outbox document (without bookkeeping fields): `_id` is the event id."""
        doc = self.model_dump(mode="python")
        doc["_id"] = doc.pop("event_id")
        return doc

    def to_json(self) -> bytes:
        """The Kafka value: compact JSON, occurred_at as ISO-8601 UTC with milliseconds."""
        # The model's serializer writes bytes directly (model_dump_json would decode them to str first).
        return self.__pydantic_serializer__.to_json(self)

    def to_json_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict."""
        return self.model_dump(mode="json")

    def kafka_key(self) -> bytes:
        """The Kafka key: the aggregate id, so one aggregate's events share a partition."""
        return self.aggregate_id.encode()

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """Kafka record headers: event id, type, version, trace id, source, schema version."""
        headers = [(H_EVENT_ID, self.event_id.encode()), (H_TYPE, self.type.encode())]
        if self.version is not None:
            headers.append((H_VERSION, b"%d" % self.version))
        extra = self.headers
        for name in FORWARDED_HEADERS:
            value = extra.get(name)
            if value is not None:
                headers.append((name, value.encode()))
        return headers

    @property
    def trace_id(self) -> str | None:
        """The trace id carried in the headers, if any."""
        return self.headers.get(H_TRACE_ID)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "event"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid event: " + "; ".join(parts)
