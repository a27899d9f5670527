"""OpenTelemetry tracing across the pipeline's hops: request -> outbox -> tailer -> Kafka -> worker.

A service's request span (producers/app.py) is the parent of the outbox write (cdc/outbox_writer.py), which
stamps its W3C `traceparent` into every event's headers: it is stored with the outbox document and, as a Kafka
record header, travels with the record. The tailer continues it with a PRODUCER span per event (cdc/session.py)
and sends its own span's traceparent on; the worker continues that with a CONSUMER span per record
(streams/app.py). One request is therefore one trace, whatever the processes in between.

Off by default (`CDCFLOW_TRACING_EXPORTER=none`). Then nothing is imported beyond this module, `enabled()` is
a module-level flag, and the hot paths (the tailer's per-event loop, the worker's batch loop) test that flag
once per event or batch and do nothing else. An event that carries no traceparent (written while tracing was
off) starts no trace downstream: the tailer and the workers only continue traces, they never start one.

The tracer provider is this module's own, not OpenTelemetry's global one, so tests can install an in-memory
exporter (`install`) and start over (`reset`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cdc.logs import get_logger

if TYPE_CHECKING:  # imported lazily: a process with tracing off never loads the SDK
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanKind, Tracer

    from cdc.settings import Settings

#: The W3C trace context header, in an event's headers and on Kafka records.
TRACEPARENT = "traceparent"
# version 00: trace id (32 hex, not all zero), span id (16 hex, not all zero), flags.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

log = get_logger(__name__)

_lock = threading.Lock()
_enabled = False
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def enabled() -> bool:
    """True when spans are recorded and exported (a provider is installed)."""
    return _enabled


def setup(settings: Settings, service: str) -> bool:
    """Install the exporter the settings name, once per process (`none`: nothing); True when tracing is on.

    A provider installed before (a test's `install`) is kept."""
    if _provider is not None:
        return True
    if settings.tracing_exporter == "none":
        return False
    exporter = _exporter(settings)
    install(exporter, service=service, sample_ratio=settings.tracing_sample_ratio,
            batch=settings.tracing_exporter == "otlp")
    log.info("tracing_enabled", exporter=settings.tracing_exporter, service=service,
             sample_ratio=settings.tracing_sample_ratio)
    return True


def _exporter(settings: Settings) -> SpanExporter:
    if settings.tracing_exporter == "console":
        import sys

        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One JSON object per line on stdout (logs go to stderr).
        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        from cdc.errors import CdcError

        raise CdcError("CDCFLOW_TRACING_EXPORTER=otlp needs the OTLP exporter: pip install 'cdcflow[otlp]'") from exc
    return OTLPSpanExporter(endpoint=settings.tracing_otlp_endpoint)


def install(exporter: SpanExporter, *, service: str = "cdcflow", sample_ratio: float = 1.0,
            batch: bool = False) -> TracerProvider:
    """Record spans and hand them to `exporter` (tests: an InMemorySpanExporter); replaces a previous one."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    global _enabled, _provider, _tracer
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    with _lock:
        old = _provider
        _provider, _tracer, _enabled = provider, provider.get_tracer("cdcflow"), True
    if old is not None:
        old.shutdown()
    return provider


def reset() -> None:
    """Stop tracing (flushing what is pending); `setup` or `install` may start it again."""
    global _enabled, _provider, _tracer
    with _lock:
        old, _provider, _tracer, _enabled = _provider, None, None, False
    if old is not None:
        old.shutdown()


def shutdown() -> None:
    """Flush every pending span (the end of a process)."""
    provider = _provider
    if provider is not None:
        provider.force_flush()


def _kind(name: str) -> SpanKind:
    from opentelemetry.trace import SpanKind

    return SpanKind[name]


def parse(traceparent: str | bytes | None) -> Context | None:
    """The context a W3C traceparent names (as a remote parent), or None when absent or malformed."""
    if traceparent is None:
        return None
    if isinstance(traceparent, bytes):
        try:
            traceparent = traceparent.decode("ascii")
        except UnicodeDecodeError:
            return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    trace_id, span_id, flags = (int(g, 16) for g in match.groups())
    if not trace_id or not span_id:
        return None
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 0x01))
    return set_span_in_context(NonRecordingSpan(parent))


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent of `span` (None for an invalid span)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The traceparent of the current span (a request's, an outbox write's), or None when tracing is off or
    no span is current."""
    if not _enabled:
        return None
    from opentelemetry.trace import get_current_span

    return traceparent_of(get_current_span())


def start_span(
    name: str, *, parent: Context | None = None, kind: str = "INTERNAL",
    attributes: Mapping[str, Any] | None = None, start_time: int | None = None,
) -> Span:
    """A started span (the caller ends it), child of `parent` or of the current span; a no-op span when off."""
    tracer = _tracer
    if tracer is None:
        from opentelemetry.trace import INVALID_SPAN

        return INVALID_SPAN
    return tracer.start_span(name, context=parent, kind=_kind(kind), attributes=dict(attributes or {}),
                             start_time=start_time)


def with_traceparent(headers: Iterable[tuple[str, bytes]], traceparent: str | None) -> list[tuple[str, bytes]]:
    """`headers` with their traceparent replaced by `traceparent` (added when absent, removed when None)."""
    out = [(k, v) for k, v in headers if k != TRACEPARENT]
    if traceparent is not None:
        out.append((TRACEPARENT, traceparent.encode()))
    return out


def header(headers: Sequence[tuple[str, bytes]], name: str = TRACEPARENT) -> bytes | None:
    """The value of header `name` (the last one, as Kafka clients read it), or None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def fail(span: Span, reason: str) -> None:
    """Mark `span` as failed with `reason`."""
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, reason[:500]))


class TraceMiddleware:
    """ASGI middleware: each HTTP request is a SERVER span, child of the caller's `traceparent` if it sent one,
    current while the request runs (so the outbox write below it is its child)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or not _enabled:
            await self.app(scope, receive, send)
            return
        from opentelemetry import context
        from opentelemetry.trace import set_span_in_context

        method = str(scope.get("method", "GET"))
        parent = parse(dict(scope.get("headers") or ()).get(b"traceparent"))
        span = start_span(f"{method} {scope.get('path', '')}", parent=parent, kind="SERVER",
                          attributes={"http.request.method": method, "url.path": str(scope.get("path", ""))})
        token = context.attach(set_span_in_context(span))
        status = 500

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except BaseException as exc:
            fail(span, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                fail(span, f"HTTP {status}")
            context.detach(token)
            span.end()
