"""The clickstream service (`clickstream_service`): page views stored in `page_views`, each with a
`PageViewed` event (topic `clickstream`, aggregate User, no version) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymongo.client_session import ClientSession

from cdc.event import Event, utcnow
from cdc.http_api import IsoDateTime, error_responses
from cdc.limits import MAX_ID_LENGTH, MAX_TEXT_LENGTH
from cdc.logs import get_logger
from cdc.outbox_writer import OutboxWriter
from cdc.schemas import TOPIC_CLICKSTREAM, PageViewed, payload_json
from cdc.settings import Settings
from producers.app import ServiceContext, context, create_service_app
from producers.bounds import MAX_CLOCK_SKEW_SECONDS

#: What the page-view routes can answer besides 201.
ERRORS = error_responses(400, 401, 403, 413, 422, 503, 504)

SERVICE = "clickstream"
SOURCE = "clickstream-service"
PAGE_VIEWS = "page_views"
MAX_BATCH = 1000

Document = dict[str, Any]

log = get_logger(__name__)


class PageViewIn(BaseModel):
    """One page view as a client reports it; `timestamp` defaults to now (naive times are UTC)."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    url: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH)
    product_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    referrer: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)
    timestamp: IsoDateTime | None = Field(
        default=None, description="When the page was viewed (default: now); at most a day in the future."
    )

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            when = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before the first representable UTC time
            raise ValueError("out of the representable range once converted to UTC") from None
        if when > datetime.now(UTC) + timedelta(seconds=MAX_CLOCK_SKEW_SECONDS):
            # The clickstream keeps a view for a retention period after it happened: a far-future view could
            # never be stored, so it is refused here rather than dead-lettered downstream.
            raise ValueError("more than a day in the future")
        return when


def page_view_event(view: PageViewIn, trace_id: str | None = None) -> Event:
    """The PageViewed event of one page view."""
    when = view.timestamp or utcnow()
    payload = PageViewed.build(
        user_id=view.user_id, url=view.url, product_id=view.product_id, referrer=view.referrer, timestamp=when
    )
    return Event.create(
        topic=TOPIC_CLICKSTREAM,
        aggregate_type="User",
        aggregate_id=view.user_id,
        type="PageViewed",
        payload=payload_json(payload),
        source_service=SOURCE,
        trace_id=trace_id,
    )


def record_page_views(writer: OutboxWriter, views: Sequence[PageViewIn]) -> list[str]:
    """Store page views and their events in one transaction; returns the event ids."""
    events = [page_view_event(view) for view in views]
    docs = [
        {
            "_id": e.event_id,
            "user_id": e.payload["user_id"],
            "url": e.payload["url"],
            "product_id": e.payload.get("product_id"),
            "referrer": e.payload.get("referrer"),
            "timestamp": view.timestamp or e.occurred_at,
        }
        for view, e in zip(views, events, strict=True)
    ]
    page_views = writer.database[PAGE_VIEWS]

    def work(session: ClientSession) -> tuple[list[str], list[Event]]:
        page_views.insert_many(docs, ordered=True, session=session)
        return [e.event_id for e in events], events

    ids = writer.transact(work)
    for e in events:
        log.debug("page_view", event_id=e.event_id, user_id=e.aggregate_id)
    return ids


def _setup(ctx: ServiceContext) -> None:
    ctx.db[PAGE_VIEWS].create_index([("user_id", 1), ("timestamp", 1)], name="user_time")


def _routes(app: FastAPI) -> None:
    @app.post("/pageviews", status_code=201, responses=ERRORS)
    def page_view(view: PageViewIn, ctx: ServiceContext = Depends(context)) -> dict[str, Any]:
        ids = ctx.run(lambda: record_page_views(ctx.writer, [view]))
        return {"event_id": ids[0]}

    @app.post("/pageviews/batch", status_code=201, responses=ERRORS)
    def page_views(
        views: Annotated[list[PageViewIn], Body(min_length=1, max_length=MAX_BATCH)],
        ctx: ServiceContext = Depends(context),
    ) -> dict[str, Any]:
        ids = ctx.run(lambda: record_page_views(ctx.writer, views))
        return {"count": len(ids), "event_ids": ids}


def create_app(
    settings: Settings, *, database: str | None = None, client_options: dict[str, Any] | None = None
) -> FastAPI:
    """The clickstream service app (database `clickstream_service` unless `database` is given)."""
    return create_service_app(
        SERVICE, settings, setup=_setup, routes=_routes, database=database, client_options=client_options
    )
