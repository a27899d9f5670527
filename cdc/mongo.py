"""The MongoDB client: one pooled client per process, built from settings."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient

from cdc.settings import Settings

Document = dict[str, Any]


def client_options(settings: Settings) -> dict[str, Any]:
    """The MongoClient keyword options from settings (pool, timeouts, app name)."""
    return {
        "maxPoolSize": settings.mongo_max_pool_size,
        "minPoolSize": settings.mongo_min_pool_size,
        "serverSelectionTimeoutMS": settings.mongo_server_selection_timeout_ms,
        "waitQueueTimeoutMS": settings.mongo_wait_queue_timeout_ms,
        "connectTimeoutMS": settings.mongo_server_selection_timeout_ms,
        "appname": "cdcflow",
    }


def mongo_client(settings: Settings, **overrides: Any) -> MongoClient[Document]:
    """A pooled MongoClient with the pool and timeout settings; create one per process and share it."""
    options: dict[str, Any] = {**client_options(settings), "tz_aware": True}
    options.update(overrides)
    return MongoClient(settings.mongo_uri, **options)
