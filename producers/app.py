"""The app factory the example services share.

Each service is a FastAPI app with its own database and ONE pooled MongoClient, created in the lifespan
hook (pool size, min pool, server-selection and wait-queue timeouts from settings) and closed on shutdown.
Every MongoDB call of a request goes through the circuit breaker (`ServiceContext.run`). Errors are JSON
`{"detail": reason}`: 404 / 409 / 422 for bad requests, 503 + Retry-After while MongoDB is down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cdc.errors import EventTooLargeError, InvalidEventError
from cdc.logs import get_logger
from cdc.mongo import mongo_client
from cdc.outbox_writer import OutboxWriter
from cdc.services import service_database
from cdc.settings import Settings
from producers.breaker import BreakerHeartbeatListener, BreakerOpenError, CircuitBreaker, is_outage

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
    _install_error_handlers(app)

    @app.get("/health")
    def health(request: Request) -> dict[str, str]:
        ctx: ServiceContext = request.app.state.ctx
        ctx.run(lambda: ctx.client.admin.command("ping"))
        return {"status": "ok", "service": name, "database": ctx.db.name, "breaker": ctx.breaker.state.value}

    routes(app)
    return app


def context(request: Request) -> ServiceContext:
    """FastAPI dependency: the running service's context."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts), "errors": _jsonable_errors(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(EventTooLargeError)
    async def _too_large(request: Request, exc: EventTooLargeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(InvalidEventError)
    async def _invalid_event(request: Request, exc: InvalidEventError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(BreakerOpenError)
    async def _breaker_open(request: Request, exc: BreakerOpenError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"{exc.reason}: circuit breaker open, retry later"},
            status_code=503,
            headers={"Retry-After": exc.retry_after_header},
        )

    @app.exception_handler(PyMongoError)
    async def _mongo(request: Request, exc: PyMongoError) -> JSONResponse:
        if is_outage(exc):
            return JSONResponse(
                {"detail": "MongoDB unavailable"}, status_code=503, headers={"Retry-After": "1"}
            )
        if exc.timeout:
            return JSONResponse(
                {"detail": "MongoDB did not answer in time, retry"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        log.error("unexpected MongoDB error", path=request.url.path, error=str(exc)[:500])
        return JSONResponse({"detail": "Database error"}, status_code=500)


def _jsonable_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))} for err in exc.errors()
    ]
