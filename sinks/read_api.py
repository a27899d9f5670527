"""The HTTP read API (FastAPI): the queries of `sinks/queries.py` over HTTP, for `cdcflow serve read-api`.

GET /orders/{id}, /customers/{id}/recommendations, /products/{id}/also-bought, /users/{id}/clicks?day= (or
?from=&to=), /top-products?day=, /healthz. Unknown ids: 404 with the reason; bad parameters: 422; a read model
whose store is down: 503 with Retry-After. The OpenAPI schema is served at /openapi.json (docs at /docs).
The sinks are created once, in the lifespan, and shared by every request (their clients are thread-safe).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from cdc.logs import get_logger
from cdc.settings import Settings
from sinks import queries
from sinks.base import TransientSinkError
from sinks.queries import MAX_LIMIT, BadQuery, NotFound, ReadModels

log = get_logger(__name__)

#: Seconds a client should wait before retrying when a store is down.
RETRY_AFTER_SECONDS = 2

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many results at most.")]


def create_app(settings: Settings, namespace: str | None = None) -> FastAPI:
    """The read API over the read models in `namespace` (default: settings.sink_namespace)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = ReadModels(settings, namespace)
        failed = models.warm_up()  # a store that is down now is retried on the first request for it
        app.state.models = models
        log.info("read_api_started", namespace=namespace or settings.sink_namespace, unavailable=sorted(failed))
        try:
            yield
        finally:
            models.close()
            log.info("read_api_stopped")

    app = FastAPI(
        title="cdcflow read API",
        description="Queries over the cdcflow read models: order view, purchase graph, clickstream.",
        version="1",
        lifespan=lifespan,
    )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": exc.reason, "kind": exc.kind, "id": exc.key})

    @app.exception_handler(BadQuery)
    async def _bad_query(request: Request, exc: BadQuery) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(TransientSinkError)
    async def _unavailable(request: Request, exc: TransientSinkError) -> JSONResponse:
        log.warning("read_model_unavailable", path=request.url.path, error=str(exc)[:300])
        return JSONResponse(
            status_code=503,
            content={"detail": f"read model unavailable: {exc}"},
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    def models(request: Request) -> ReadModels:
        result: ReadModels = request.app.state.models
        return result

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the API process is up (it does not probe the stores)."""
        return {"status": "ok"}

    @app.get("/orders/{order_id}", tags=["order view"], responses={404: {"description": "Unknown order"}})
    def get_order(request: Request, order_id: str) -> dict[str, Any]:
        """An order's current state and version, from the order view."""
        return queries.order(models(request), order_id)

    @app.get(
        "/customers/{customer_id}/recommendations",
        tags=["purchase graph"],
        responses={404: {"description": "Customer without purchases"}},
    )
    def get_recommendations(request: Request, customer_id: str, limit: Limit = 5) -> dict[str, Any]:
        """Products bought by customers who bought what this customer bought, minus what they own."""
        return queries.recommendations(models(request), customer_id, limit)

    @app.get(
        "/products/{product_id}/also-bought",
        tags=["purchase graph"],
        responses={404: {"description": "Product never purchased"}},
    )
    def get_also_bought(request: Request, product_id: str, limit: Limit = 5) -> dict[str, Any]:
        """Customers who bought this product also bought these."""
        return queries.also_bought(models(request), product_id, limit)

    @app.get("/users/{user_id}/clicks", tags=["clickstream"], responses={404: {"description": "Unknown user"}})
    def get_clicks(
        request: Request,
        user_id: str,
        day: Annotated[date | None, Query(description="UTC day, YYYY-MM-DD (default: today).")] = None,
        start: Annotated[datetime | None, Query(alias="from", description="Window start (ISO-8601).")] = None,
        end: Annotated[datetime | None, Query(alias="to", description="Window end, exclusive (ISO-8601).")] = None,
    ) -> dict[str, Any]:
        """A user's page views on a day, or in a window of at most 31 days; oldest first."""
        return queries.clicks(
            models(request), user_id, day=day, start=_utc(start), end=_utc(end)
        )

    @app.get("/top-products", tags=["clickstream"])
    def get_top_products(
        request: Request,
        day: Annotated[date | None, Query(description="UTC day, YYYY-MM-DD (default: today).")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many results at most.")] = 10,
    ) -> dict[str, Any]:
        """The day's most viewed products."""
        return queries.top_products(models(request), day, limit)

    return app


def _utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return queries.parse_time(when.isoformat())
