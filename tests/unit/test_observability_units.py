"""The pure parts of observability: `--version`, Kafka name prefixes, W3C traceparent parsing, the exporter's
`/healthz` answers, tracing off by default."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from importlib.metadata import version

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cdc import tracing
from cdc.metrics import Exporter, start_exporter
from cdc.settings import Settings
from cli.main import app


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"cdcflow {version('cdcflow')}\n"


def test_prefixes_name_topics_and_groups() -> None:
    s = Settings(kafka_topic_prefix="staging.")
    assert s.kafka_topic("orders") == "staging.orders" and s.logical_topic("staging.orders") == "orders"
    assert s.logical_topic("orders") == "orders"
    assert s.kafka_group("cdcflow.order_view") == "staging.cdcflow.order_view"  # the topic prefix by default
    assert Settings(kafka_topic_prefix="a.", kafka_group_prefix="").kafka_group("g") == "g"
    assert Settings().kafka_topic("orders") == "orders"
    for bad in ("has space", "slash/", "x" * 101):
        with pytest.raises(ValidationError):
            Settings(kafka_topic_prefix=bad)


def test_traceparent_parsing_takes_only_valid_w3c_values() -> None:
    from opentelemetry.trace import get_current_span

    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ctx = tracing.parse(good.encode())
    assert ctx is not None
    span_context = get_current_span(ctx).get_span_context()
    assert (span_context.trace_id, span_context.span_id) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    assert span_context.is_remote and span_context.trace_flags.sampled
    for bad in (None, b"\xff", "", "garbage", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"):
        assert tracing.parse(bad) is None, bad


def test_with_traceparent_replaces_or_removes_the_header() -> None:
    headers = [("event_id", b"e"), ("traceparent", b"old")]
    assert tracing.with_traceparent(headers, "new") == [("event_id", b"e"), ("traceparent", b"new")]
    assert tracing.with_traceparent(headers, None) == [("event_id", b"e")]
    assert tracing.header([("traceparent", b"a"), ("traceparent", b"b")]) == b"b"


def test_tracing_is_off_by_default() -> None:
    tracing.reset()
    assert Settings().tracing_exporter == "none"
    assert not tracing.setup(Settings(), "test") and not tracing.enabled()
    assert tracing.current_traceparent() is None
    assert not tracing.start_span("x").get_span_context().is_valid


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_exporter_answers_healthz_from_its_check_and_serves_metrics() -> None:
    reasons: list[str] = []

    def check() -> list[str]:
        if reasons == ["boom"]:
            raise RuntimeError("cannot tell")
        return reasons

    exporter = start_exporter(0, health=check)
    assert exporter is None  # port 0: no exporter
    exporter = Exporter("127.0.0.1", 0, check)
    try:
        assert _get(exporter.port, "/healthz") == (200, b'{"status": "ok"}')
        reasons.append("thread died: x")
        status, body = _get(exporter.port, "/healthz")
        assert status == 503 and json.loads(body) == {"status": "failing", "reasons": ["thread died: x"]}
        reasons[:] = ["boom"]
        status, body = _get(exporter.port, "/healthz")
        assert status == 503 and "health check failed: RuntimeError: cannot tell" in json.loads(body)["reasons"][0]
        status, body = _get(exporter.port, "/metrics")
        assert status == 200 and b"cdcflow_events_total" in body
    finally:
        exporter.close()
