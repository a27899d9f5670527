"""The app factory the example services share.

Each service is a FastAPI app with its own database and ONE pooled MongoClient, created in the lifespan
hook (pool size, min pool, server-selection and wait-queue timeouts from settings) and closed on shutdown.
Every MongoDB call of a request goes through the circuit breaker (`ServiceContext.run`). Errors are the one
error body of `cdc/http_api.py` (`{"detail": reason}`): 404 / 409 / 413 / 422 for bad requests, 401 / 403
without the write key (when one is configured), 503 + Retry-After while MongoDB is down or its pool is
exhausted, 504 when MongoDB did not answer within `breaker_call_timeout_ms` (a slow request is not an outage).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from cdc.errors import EventTooLargeError, InvalidEventError
from cdc.http_api import ApiKind, error_response, error_responses, install_error_handlers, install_guard
from cdc.logs import get_logger
from cdc.mongo import mongo_client
from cdc.outbox_writer import OutboxWriter
from cdc.services import service_database
from cdc.settings import Settings
from producers.breaker import BreakerHeartbeatListener, BreakerOpenError, CircuitBreaker, Failure, classify

Document = dict[str, Any]
T = TypeVar("T")

log = get_logger(__name__)


class ServiceError(Exception):
    """A request the service refuses, with its HTTP status and a reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def not_found(reason: str) -> ServiceError:
    return ServiceError(404, reason)


def conflict(reason: str) -> ServiceError:
    return ServiceError(409, reason)


@dataclass
class ServiceContext:
    """What a running service holds: its client, database, outbox writer and breaker."""

    name: str
    settings: Settings
    client: MongoClient[Document]
    db: Database[Document]
    writer: OutboxWriter
    breaker: CircuitBreaker

    def run(self, fn: Callable[[], T]) -> T:
        """Run MongoDB work through the circuit breaker."""
        return self.breaker.call(fn)


Setup = Callable[[ServiceContext], None]


def create_service_app(
    name: str,
    settings: Settings,
    *,
    setup: Setup,
    routes: Callable[[FastAPI], None],
    database: str | None = None,
    client_options: dict[str, Any] | None = None,
) -> FastAPI:
    """A FastAPI app for service `name` whose lifespan builds the one MongoClient and runs `setup`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failure_threshold,
            reset_seconds=settings.breaker_reset_seconds,
            call_timeout=settings.breaker_call_timeout_ms / 1000,
            name=f"{name}-mongo",
        )
        options = dict(client_options or {})
        heartbeat = BreakerHeartbeatListener(breaker)
        options["event_listeners"] = [*options.get("event_listeners", []), heartbeat]
        client = mongo_client(settings, appname=f"cdcflow-{name}", **options)
        db_name = database or service_database(settings, name)
        writer = OutboxWriter(client, db_name, max_event_bytes=settings.max_event_bytes)
        ctx = ServiceContext(name, settings, client, client.get_database(db_name), writer, breaker)
        try:
            writer.ensure_indexes()
            setup(ctx)
            app.state.ctx = ctx
            log.info("service started", service=name, database=db_name)
            yield
        finally:
            heartbeat.enabled = False
            client.close()
            log.info("service stopped", service=name)

    app = FastAPI(title=f"cdcflow {name} service", lifespan=lifespan)
    _install_error_handlers(app, settings)
    install_guard(app, settings, ApiKind.WRITE)

    @app.get("/health", responses=error_responses(503, 504))
    def health(request: Request) -> dict[str, str]:
        ctx: ServiceContext = request.app.state.ctx
        ctx.run(lambda: ctx.client.admin.command("ping"))
        return {"status": "ok", "service": name, "database": ctx.db.name, "breaker": ctx.breaker.state.value}

    routes(app)
    # Literal paths before templated ones (stable): /products/seed then /products/{product_id}. Either order
    # serves the same requests, but a 405 names the methods of the first path that matched, and its Allow
    # header must be the literal path's.
    app.router.routes.sort(key=lambda route: str(getattr(route, "path", "")).count("{"))
    return app


def context(request: Request) -> ServiceContext:
    """FastAPI dependency: the running service's context."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    install_error_handlers(app)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.reason)

    @app.exception_handler(EventTooLargeError)
    async def _too_large(request: Request, exc: EventTooLargeError) -> JSONResponse:
        return error_response(413, str(exc))

    @app.exception_handler(InvalidEventError)
    async def _invalid_event(request: Request, exc: InvalidEventError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(BreakerOpenError)
    async def _breaker_open(request: Request, exc: BreakerOpenError) -> JSONResponse:
        return error_response(
            503, f"{exc.reason}: circuit breaker open, retry later", headers={"Retry-After": exc.retry_after_header}
        )

    @app.exception_handler(PyMongoError)
    async def _mongo(request: Request, exc: PyMongoError) -> JSONResponse:
        # The driver's text names hosts and users: it goes to the log, never into the body.
        kind = classify(exc)
        log.warning("mongodb error", path=request.url.path, kind=kind.value, error=str(exc)[:500])
        if kind is Failure.OUTAGE:
            return error_response(503, "MongoDB unavailable", headers={"Retry-After": "1"})
        if kind is Failure.BUSY:
            return error_response(503, "too many requests waiting for MongoDB, retry", headers={"Retry-After": "1"})
        if kind is Failure.SLOW:
            limit = settings.breaker_call_timeout_ms / 1000
            return error_response(
                504, f"MongoDB did not answer within {limit:g} s; the request may or may not have taken effect"
            )
        return error_response(500, "database error")
