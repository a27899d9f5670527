"""The HTTP read API (FastAPI): the queries of `sinks/queries.py` over HTTP, for `cdcflow serve read-api`.

GET /orders/{id}, /customers/{id}/recommendations, /products/{id}/also-bought, /users/{id}/clicks?day= (or
?from=&to=; paginated: ?limit=&after=), /top-products?day=, /healthz. Every error is the one error body of
`cdc/http_api.py`: unknown ids 404 (with `kind` and `id`), bad parameters 422, no read key (when one is
configured) 401, a write key 403, a read model whose store is down 503 with Retry-After, a query past
`read_api_query_timeout_seconds` 504. The OpenAPI schema is served at /openapi.json (docs at /docs).
The sinks are created once, in the lifespan, and shared by every request (their clients are thread-safe).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse

from cdc.http_api import (
    ApiKind,
    IsoDate,
    IsoDateTime,
    error_response,
    error_responses,
    install_error_handlers,
    install_guard,
)
from cdc.limits import MAX_ID_LENGTH
from cdc.logs import get_logger
from cdc.settings import Settings
from sinks import queries
from sinks.base import SinkTimeoutError, TransientSinkError
from sinks.queries import DEFAULT_CLICKS_PAGE, MAX_CLICKS_PAGE, MAX_LIMIT, BadQuery, NotFound, ReadModels

log = get_logger(__name__)

#: Seconds a client should wait before retrying when a store is down.
RETRY_AFTER_SECONDS = 2

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many results at most.")]
Day = Annotated[IsoDate | None, Query(description="UTC day, YYYY-MM-DD (default: today).")]
#: An id in a path: as long as the events' ids may be.
Id = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)]
#: What a lookup can answer besides 200.
LOOKUP_ERRORS = error_responses(401, 403, 404, 422, 503, 504)


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
    install_error_handlers(app)
    install_guard(app, settings, ApiKind.READ)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, exc.reason, kind=exc.kind, id=exc.key)

    @app.exception_handler(BadQuery)
    async def _bad_query(request: Request, exc: BadQuery) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(TransientSinkError)
    async def _unavailable(request: Request, exc: TransientSinkError) -> JSONResponse:
        # The driver's text names hosts and users: it goes to the log, never into the body.
        if isinstance(exc, SinkTimeoutError):
            log.warning("read_model_timeout", path=request.url.path, error=str(exc)[:300])
            return error_response(
                504, f"the read model did not answer within {settings.read_api_query_timeout_seconds:g} s"
            )
        log.warning("read_model_unavailable", path=request.url.path, error=str(exc)[:300])
        return error_response(
            503, "read model unavailable, retry later", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )

    def models(request: Request) -> ReadModels:
        result: ReadModels = request.app.state.models
        return result

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the API process is up (it does not probe the stores; it needs no key)."""
        return {"status": "ok"}

    @app.get("/orders/{order_id}", tags=["order view"], responses=LOOKUP_ERRORS)
    def get_order(request: Request, order_id: Id) -> dict[str, Any]:
        """An order's current state and version, from the order view."""
        return queries.order(models(request), order_id)

    @app.get("/customers/{customer_id}/recommendations", tags=["purchase graph"], responses=LOOKUP_ERRORS)
    def get_recommendations(request: Request, customer_id: Id, limit: Limit = 5) -> dict[str, Any]:
        """Products bought by customers who bought what this customer bought, minus what they own.
        404: a customer without purchases."""
        return queries.recommendations(models(request), customer_id, limit)

    @app.get("/products/{product_id}/also-bought", tags=["purchase graph"], responses=LOOKUP_ERRORS)
    def get_also_bought(request: Request, product_id: Id, limit: Limit = 5) -> dict[str, Any]:
        """Customers who bought this product also bought these. 404: a product never purchased."""
        return queries.also_bought(models(request), product_id, limit)

    @app.get("/users/{user_id}/clicks", tags=["clickstream"], responses=LOOKUP_ERRORS)
    def get_clicks(
        request: Request,
        user_id: Id,
        day: Day = None,
        start: Annotated[IsoDateTime | None, Query(alias="from", description="Window start (ISO-8601).")] = None,
        end: Annotated[IsoDateTime | None, Query(alias="to", description="Window end, exclusive (ISO-8601).")] = None,
        limit: Annotated[
            int, Query(ge=1, le=MAX_CLICKS_PAGE, description="Page size: how many views at most.")
        ] = DEFAULT_CLICKS_PAGE,
        after: Annotated[
            str | None, Query(max_length=100, description="The `next` cursor of the previous page.")
        ] = None,
    ) -> dict[str, Any]:
        """A user's page views on a day, or in a window of at most 31 days; oldest first, a page at a time
        (`next`: the cursor of the following page, null on the last). 404: a user without page views."""
        return queries.clicks(models(request), user_id, day=day, start=start, end=end, limit=limit, after=after)

    @app.get("/top-products", tags=["clickstream"], responses=error_responses(401, 403, 422, 503, 504))
    def get_top_products(request: Request, day: Day = None, limit: Limit = 10) -> dict[str, Any]:
        """The day's most viewed products."""
        return queries.top_products(models(request), day, limit)

    return app
