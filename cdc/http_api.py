"""What every cdcflow HTTP API shares: the error body, API-key authentication and the request-body limit.

- One error model (`ApiError`) for every 4xx/5xx, declared per route with the codes it can return
  (`error_responses`); the exception handlers (`install_error_handlers`) produce nothing else.
- `ApiGuard`, a pure ASGI middleware in front of the app: checks the API key before anything else runs (401
  with WWW-Authenticate for a missing or wrong key, 403 for a key of the other kind: a read key on a write
  service or the reverse), then refuses a body over `http_max_body_bytes` with 413: at once when its
  Content-Length says so, and as soon as the count passes the limit for a chunked body, so at most the limit
  is ever held in memory. Health and the OpenAPI documents stay open.
- `check_bind`: an API without a key may listen on loopback only.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cdc.logs import get_logger
from cdc.settings import Settings

log = get_logger(__name__)

#: Paths that answer without a key: liveness and the API's own description.
OPEN_PATHS = frozenset({"/health", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
API_KEY_HEADER = "X-API-Key"
SECURITY_SCHEME = "apiKey"  # the name of the scheme in the OpenAPI document
REALM = "cdcflow"


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}([.,]\d{1,9})?)?)?([Zz]|[+-]\d{2}(:?\d{2})?)?$")


def _iso(pattern: re.Pattern[str], what: str, example: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, date):  # built in Python, not parsed from a request
            return value
        # Pydantic alone would also take a number (seconds since 1970) or "0": the schema says an ISO string.
        if not isinstance(value, str) or not pattern.match(value):
            raise ValueError(f"expected an ISO-8601 {what} string, e.g. {example}")
        return value

    return check


#: A date as the OpenAPI schema declares it: "YYYY-MM-DD", nothing else.
IsoDate = Annotated[date, BeforeValidator(_iso(_ISO_DATE, "date", "2026-01-31"))]
#: A time as an ISO-8601 string (an offset is optional: without one it is UTC), nothing else.
IsoDateTime = Annotated[datetime, BeforeValidator(_iso(_ISO_DATETIME, "date-time", "2026-01-31T12:00:00Z"))]


class ApiKind(enum.StrEnum):
    """Which key an API takes."""

    WRITE = "write"
    READ = "read"


class FieldError(BaseModel):
    """One invalid request field."""

    loc: list[str] = Field(description="Where: body, query, path or header, then the field's path.")
    msg: str


class ApiError(BaseModel):
    """The body of every 4xx/5xx answer."""

    detail: str = Field(description="Why the request failed, for a person to read.")
    errors: list[FieldError] | None = Field(default=None, description="Each invalid field (422 only).")
    kind: str | None = Field(default=None, description="What was not found (404 of the read API).")
    id: str | None = Field(default=None, description="The id that was not found (404 of the read API).")
    version: int | None = Field(
        default=None, description="The version the read model holds (409 of a read with min_version)."
    )


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be parsed",
    401: "No API key, or a wrong one",
    403: "An API key of the other kind (read vs write)",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "Request body over the size limit",
    422: "A parameter or body field is invalid",
    503: "A store is unavailable; retry after Retry-After seconds",
    504: "A store did not answer in time",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route that can answer with these error codes (all with `ApiError`)."""
    return {code: {"model": ApiError, "description": ERROR_DESCRIPTIONS[code]} for code in sorted(set(codes))}


def error_response(status: int, detail: str, headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An `ApiError` JSON response."""
    body = ApiError(detail=detail, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


# -- keys -------------------------------------------------------------------------------------------------


def api_key(settings: Settings, kind: ApiKind) -> str | None:
    """The configured key of `kind`, or None."""
    secret = settings.write_api_key if kind is ApiKind.WRITE else settings.read_api_key
    return secret.get_secret_value() if secret is not None else None


def auth_headers(settings: Settings, kind: ApiKind) -> dict[str, str]:
    """Headers a client sends to an API of `kind` (empty when no key is configured)."""
    key = api_key(settings, kind)
    if key is None:
        return {}
    if settings.http_auth_scheme == "bearer":
        return {"Authorization": f"Bearer {key}"}
    return {API_KEY_HEADER: key}


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or `localhost`; anything else reaches beyond the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to any interface
        return False


class InsecureBindError(Exception):
    """An API without a key asked to listen beyond loopback."""


def check_bind(settings: Settings, kind: ApiKind, host: str, name: str) -> None:
    """Raise InsecureBindError when API `name` would listen on `host` (not loopback) without a key."""
    if is_loopback(host) or api_key(settings, kind) is not None:
        return
    variable = "CDCFLOW_WRITE_API_KEY" if kind is ApiKind.WRITE else "CDCFLOW_READ_API_KEY"
    raise InsecureBindError(
        f"refusing to serve {name} on {host} without an API key: set {variable} (16+ characters) or bind 127.0.0.1"
    )


class _Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    WRONG = "wrong"
    OTHER_KIND = "other kind"


def _presented(headers: dict[bytes, bytes], scheme: str) -> str | None:
    if scheme == "bearer":
        raw = headers.get(b"authorization")
        if raw is None:
            return None
        method, _, token = raw.decode("latin-1").strip().partition(" ")
        return token.strip() if method.lower() == "bearer" else ""
    raw = headers.get(API_KEY_HEADER.lower().encode())
    return None if raw is None else raw.decode("latin-1").strip()


def _same(a: str, b: str | None) -> bool:
    # Constant time; the comparison runs even without a key so the timing says nothing either way.
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), (b or "\0").encode("utf-8")) and b is not None


# -- the guard --------------------------------------------------------------------------------------------


class BodyTooLargeError(StarletteHTTPException):
    """The body grew past the limit while it was read (raised from `receive`, answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes", headers={"Connection": "close"})


class ApiGuard:
    """Pure ASGI middleware: API key check, then the request-body limit (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, kind: ApiKind) -> None:
        self.app = app
        self.kind = kind
        self.scheme = settings.http_auth_scheme
        self.limit = settings.http_max_body_bytes
        self.own_key = api_key(settings, kind)
        self.other_key = api_key(settings, ApiKind.READ if kind is ApiKind.WRITE else ApiKind.WRITE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.own_key is not None and scope["path"] not in OPEN_PATHS:
            verdict = self._verdict(headers)
            if verdict is not _Verdict.OK:
                await self._refuse(verdict)(scope, receive, send)
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, "Content-Length is not a number")(scope, receive, send)
                return
            if int(declared) > self.limit:
                await error_response(
                    413, f"request body of {int(declared)} bytes is over the limit of {self.limit} bytes",
                    headers={"Connection": "close"},
                )(scope, receive, send)
                return
        await self._limited(scope, receive, send)

    def _verdict(self, headers: dict[bytes, bytes]) -> _Verdict:
        token = _presented(headers, self.scheme)
        if token is None:
            return _Verdict.MISSING
        own = _same(token, self.own_key)
        other = _same(token, self.other_key)
        if own:
            return _Verdict.OK
        return _Verdict.OTHER_KIND if other else _Verdict.WRONG

    def _refuse(self, verdict: _Verdict) -> JSONResponse:
        if verdict is _Verdict.OTHER_KIND:
            other = "read" if self.kind is ApiKind.WRITE else "write"
            return error_response(403, f"this is a {self.kind.value} API: a {other} key is not accepted here")
        if self.scheme == "bearer":
            challenge = f'Bearer realm="{REALM}"'
        else:
            challenge = f'APIKey realm="{REALM}", header="{API_KEY_HEADER}"'
        if verdict is _Verdict.WRONG:
            challenge += ', error="invalid_token"'
        how = "Authorization: Bearer KEY" if self.scheme == "bearer" else f"{API_KEY_HEADER}: KEY"
        detail = "API key required" if verdict is _Verdict.MISSING else "API key not valid"
        return error_response(401, f"{detail} ({how})", headers={"WWW-Authenticate": challenge})

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError as exc:  # read by something that did not turn it into a response
            if started:
                raise
            await error_response(413, str(exc.detail), headers=exc.headers)(scope, receive, send)


# -- wiring -----------------------------------------------------------------------------------------------


def install_guard(app: FastAPI, settings: Settings, kind: ApiKind) -> None:
    """Put `ApiGuard` in front of `app` and declare the key in its OpenAPI document (every route but OPEN_PATHS)."""
    app.add_middleware(ApiGuard, settings=settings, kind=kind)
    if api_key(settings, kind) is None:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        scheme = (
            {"type": "http", "scheme": "bearer", "description": f"The {kind.value} API key."}
            if settings.http_auth_scheme == "bearer"
            else {"type": "apiKey", "in": "header", "name": API_KEY_HEADER, "description": f"The {kind.value} API key."}
        )
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SECURITY_SCHEME] = scheme
        for path, operations in schema.get("paths", {}).items():
            if path in OPEN_PATHS:
                continue
            for operation in operations.values():
                operation["security"] = [{SECURITY_SCHEME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    return [
        FieldError(loc=[str(p) for p in err.get("loc", ())], msg=str(err.get("msg", "invalid")))
        for err in exc.errors()
    ]


def validation_detail(errors: Iterable[FieldError]) -> str:
    """One readable line from the field errors: `quantity: Input should be greater than 0; ...`."""
    parts = []
    for err in errors:
        where = ".".join(p for p in err.loc if p != "body") or "request"
        parts.append(f"{where}: {err.msg}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Validation errors, HTTP errors (404/405/413 ...) and anything unexpected, all as `ApiError`."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        return error_response(422, validation_detail(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The body never carries the exception's text: it can hold hosts, users, queries.
        log.error("unexpected_error", path=request.url.path, error_type=type(exc).__name__, exc_info=exc)
        return error_response(500, "internal error")
