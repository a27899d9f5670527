"""The HTTP read API (FastAPI): the queries of `sinks/queries.py` over HTTP, for `cdcflow serve read-api`.

GET /orders/{id} (?min_version=&wait_ms=: read-your-writes), /customers/{id}/recommendations,
/products/{id}/also-bought, /users/{id}/clicks?day= (or ?from=&to=; paginated: ?limit=&after=),
/top-products?day=, /healthz. Every error is the one error body of
`cdc/http_api.py`: unknown ids 404 (with `kind` and `id`), bad parameters 422, no read key (when one is
configured) 401, a write key 403, a read model whose store is down 503 with Retry-After, a query past
`read_api_query_timeout_seconds` 504 with Retry-After; an order view behind `min_version` (now, or still after
waiting wait_ms) 409 with Retry-After and the `version` it holds. The OpenAPI schema is served at /openapi.json
(docs at /docs).
The sinks are created once, in the lifespan, and shared by every request (their clients are thread-safe).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

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
from sinks.queries import (
    DEFAULT_CLICKS_PAGE,
    MAX_CLICKS_PAGE,
    MAX_LIMIT,
    BadQuery,
    Behind,
    NotFound,
    ReadModels,
)
from sinks.waits import VersionWatch, WaitersFull

log = get_logger(__name__)

#: Seconds a client should wait before retrying when a store is down.
RETRY_AFTER_SECONDS = 2

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many results at most.")]
Day = Annotated[IsoDate | None, Query(description="UTC day, YYYY-MM-DD (default: today).")]
#: An id in a path: as long as the events' ids may be.
Id = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)]
#: What a lookup can answer besides 200.
LOOKUP_ERRORS = error_responses(401, 403, 404, 422, 503, 504)
#: Seconds a read-your-writes client should wait before asking again (the pipeline's usual delay is far less).
CATCH_UP_RETRY_SECONDS = 1
#: The order view keeps versions in a Postgres integer: no version beyond this can ever be reached.
MAX_VERSION = 2**31 - 1
MinVersion = Annotated[
    int | None,
    Query(ge=1, le=MAX_VERSION, description="Read-your-writes: the version the order service answered a write with; "
                                            "the order view must hold it or a later one."),
]
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
#: GET /orders/{id}: a lookup, plus read-your-writes' 409; 409, 503 and 504 with Retry-After.
#: "Not caught up yet" is a 4xx, not a 5xx: it is an expected state of an asynchronous pipeline, not a server
#: fault (a 5xx would set off the retries and alerts meant for one).
ORDER_ERRORS: dict[int | str, dict[str, Any]] = {
    **LOOKUP_ERRORS,
    409: {**error_responses(409)[409], "headers": _RETRY_AFTER,
          "description": "The order view holds an older version than min_version (now, or still after wait_ms)"},
    503: {**LOOKUP_ERRORS[503], "headers": _RETRY_AFTER},
    504: {**LOOKUP_ERRORS[504], "headers": _RETRY_AFTER},
}


def create_app(settings: Settings, namespace: str | None = None) -> FastAPI:
    """The read API over the read models in `namespace` (default: settings.sink_namespace)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = ReadModels(settings, namespace)
        failed = models.warm_up()  # a store that is down now is retried on the first request for it
        app.state.models = models
        app.state.order_watch = queries.order_watch(models, settings.read_api_max_waiters)
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

    @app.exception_handler(Behind)
    async def _behind(request: Request, exc: Behind) -> JSONResponse:
        return error_response(409, str(exc), headers={"Retry-After": str(CATCH_UP_RETRY_SECONDS)},
                              kind="order", id=exc.order_id, version=exc.version)

    @app.exception_handler(WaitersFull)
    async def _waiters_full(request: Request, exc: WaitersFull) -> JSONResponse:
        log.warning("read_api_waiters_full", path=request.url.path, waiting=settings.read_api_max_waiters)
        return error_response(503, "too many requests are waiting for the order view to catch up, retry later",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(BadQuery)
    async def _bad_query(request: Request, exc: BadQuery) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(TransientSinkError)
    async def _unavailable(request: Request, exc: TransientSinkError) -> JSONResponse:
        # The driver's text names hosts and users: it goes to the log, never into the body.
        if isinstance(exc, SinkTimeoutError):
            log.warning("read_model_timeout", path=request.url.path, error=str(exc)[:300])
            return error_response(
                504, f"the read model did not answer within {settings.read_api_query_timeout_seconds:g} s",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
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

    max_wait = settings.read_api_max_wait_ms

    @app.get("/orders/{order_id}", tags=["order view"], responses=ORDER_ERRORS)
    async def get_order(
        request: Request,
        order_id: Id,
        min_version: MinVersion = None,
        # The bound is a setting, so it is given here (a default) where the OpenAPI document can state it.
        wait_ms: int = Query(0, ge=0, le=max_wait, description=f"How long to wait (ms, at most {max_wait}) for the "
                                                               "order view to reach min_version (1 when not given); "
                                                               "0: answer at once."),
    ) -> dict[str, Any]:
        """An order's current state and version, from the order view.

        Read-your-writes: with `min_version` (the version the order service returned) the answer is a state at
        that version or later: at once, or after waiting up to `wait_ms`. 409 (with Retry-After): the order view
        holds an older version, or (after a wait) no row yet; `version` is what it holds. 404: no row, no wait."""
        if min_version is None and wait_ms == 0:
            return await run_in_threadpool(queries.order, models(request), order_id)
        watch: VersionWatch = request.app.state.order_watch
        return await queries.order_at_version(models(request), watch, order_id, min_version or 1, wait_ms)

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
