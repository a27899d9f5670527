"""The service databases of DESIGN.md: one per service, each holding that service's state and its outbox."""

from __future__ import annotations

from cdc.settings import Settings

SERVICE_DATABASES = {
    "product": "product_service",
    "order": "order_service",
    "clickstream": "clickstream_service",
}


def service_database(settings: Settings, service: str) -> str:
    """The database name of `service` (with the configured prefix)."""
    return f"{settings.service_db_prefix}{SERVICE_DATABASES[service]}"
