"""cdc/http_api.py on a small app of its own: keys (401/403), the body limit (413), the one error body."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Body, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from cdc.http_api import (
    ApiError,
    ApiKind,
    InsecureBindError,
    auth_headers,
    check_bind,
    install_error_handlers,
    install_guard,
    is_loopback,
)
from cdc.settings import Settings, load_settings
from tests.http_support import READ_KEY, WRITE_KEY

LIMIT = 4096


def keyed(**changes: Any) -> Settings:
    base = {"write_api_key": WRITE_KEY, "read_api_key": READ_KEY, "http_max_body_bytes": LIMIT}
    return load_settings(**{**base, **changes})


def small_app(settings: Settings, kind: ApiKind = ApiKind.WRITE) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_guard(app, settings, kind)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/echo")
    def echo(items: list[int] = Body()) -> dict[str, int]:
        return {"count": len(items)}

    return app


@pytest.fixture
def http() -> Iterator[TestClient]:
    with TestClient(small_app(keyed())) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_no_key_is_401_with_a_challenge(http: TestClient) -> None:
    r = http.post("/echo", json=[1])
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="cdcflow"'
    assert ApiError.model_validate(r.json()).detail.startswith("API key required")


@pytest.mark.parametrize("header", [bearer("x" * 32), bearer(""), {"Authorization": f"Basic {WRITE_KEY}"}])
def test_a_wrong_key_is_401_invalid_token(http: TestClient, header: dict[str, str]) -> None:
    r = http.post("/echo", json=[1], headers=header)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_a_read_key_on_a_write_api_is_403_and_the_reverse(http: TestClient) -> None:
    r = http.post("/echo", json=[1], headers=bearer(READ_KEY))
    assert r.status_code == 403 and "read key" in r.json()["detail"]
    with TestClient(small_app(keyed(), ApiKind.READ)) as read_api:
        assert read_api.post("/echo", json=[1], headers=bearer(WRITE_KEY)).status_code == 403
        assert read_api.post("/echo", json=[1], headers=bearer(READ_KEY)).status_code == 200


def test_the_right_key_passes_and_health_and_openapi_stay_open(http: TestClient) -> None:
    assert http.post("/echo", json=[1, 2], headers=bearer(WRITE_KEY)).json() == {"count": 2}
    assert http.post("/echo", json=[1], headers={"authorization": f"bearer  {WRITE_KEY} "}).status_code == 200
    assert http.get("/health").status_code == 200
    schema = http.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": "The write API key."
    }
    assert schema["paths"]["/echo"]["post"]["security"] == [{"apiKey": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_the_api_key_scheme_reads_x_api_key() -> None:
    with TestClient(small_app(keyed(http_auth_scheme="api-key"))) as http:
        assert http.post("/echo", json=[1], headers={"X-API-Key": WRITE_KEY}).status_code == 200
        r = http.post("/echo", json=[1], headers=bearer(WRITE_KEY))
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("APIKey")
        assert http.post("/echo", json=[1], headers={"X-API-Key": READ_KEY}).status_code == 403


def test_without_a_key_the_api_is_open() -> None:
    with TestClient(small_app(load_settings(write_api_key=None, read_api_key=None))) as http:
        assert http.post("/echo", json=[1]).status_code == 200


def test_a_short_key_is_refused_at_settings_time() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        load_settings(write_api_key="short")


def test_keys_never_show_in_repr_or_the_error_body(http: TestClient) -> None:
    settings = keyed()
    assert WRITE_KEY not in repr(settings) and READ_KEY not in repr(settings)
    r = http.post("/echo", json=[1], headers=bearer(READ_KEY))
    assert READ_KEY not in r.text and WRITE_KEY not in r.text


def test_a_body_over_the_limit_is_413_before_it_is_read(http: TestClient) -> None:
    big = b"[" + b"1," * LIMIT + b"1]"
    r = http.post("/echo", content=big, headers={**bearer(WRITE_KEY), "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"] == f"request body of {len(big)} bytes is over the limit of {LIMIT} bytes"


def test_a_chunked_body_over_the_limit_is_413(http: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: only counting tells
        yield b"["
        for _ in range(1000):  # 1000 x 1 KiB, far over the 4 KiB limit
            yield b"1," * 512
        yield b"1]"

    r = http.post("/echo", content=chunks(), headers={**bearer(WRITE_KEY), "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"] == f"request body over the limit of {LIMIT} bytes"


def test_a_body_under_the_limit_passes_and_a_bad_content_length_is_400(http: TestClient) -> None:
    r = http.post("/echo", json=list(range(100)), headers=bearer(WRITE_KEY))
    assert r.status_code == 200
    r = http.post("/echo", content=b"[1]", headers={**bearer(WRITE_KEY), "content-length": "x1"})
    assert r.status_code == 400


def test_every_error_is_the_one_error_body(http: TestClient) -> None:
    r = http.post("/echo", json={"not": "a list"}, headers=bearer(WRITE_KEY))
    assert r.status_code == 422
    body = ApiError.model_validate(r.json())
    assert isinstance(body.detail, str) and body.errors and body.errors[0].loc == ["body"]
    for response in (http.get("/nowhere", headers=bearer(WRITE_KEY)), http.delete("/echo", headers=bearer(WRITE_KEY))):
        assert response.status_code in (404, 405)
        assert set(response.json()) == {"detail"}
    assert http.delete("/echo", headers=bearer(WRITE_KEY)).headers["Allow"] == "POST"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("example.org", False)],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_the_key_of_that_kind() -> None:
    open_settings = load_settings(write_api_key=None, read_api_key=None)
    check_bind(open_settings, ApiKind.WRITE, "127.0.0.1", "product")
    with pytest.raises(InsecureBindError, match="CDCFLOW_WRITE_API_KEY"):
        check_bind(open_settings, ApiKind.WRITE, "0.0.0.0", "product")
    with pytest.raises(InsecureBindError, match="CDCFLOW_READ_API_KEY"):
        check_bind(load_settings(write_api_key=WRITE_KEY, read_api_key=None), ApiKind.READ, "0.0.0.0", "read-api")
    check_bind(load_settings(write_api_key=WRITE_KEY, read_api_key=None), ApiKind.WRITE, "0.0.0.0", "order")


def test_clients_send_the_key_of_the_api_they_call() -> None:
    settings = keyed()
    assert auth_headers(settings, ApiKind.WRITE) == {"Authorization": f"Bearer {WRITE_KEY}"}
    assert auth_headers(keyed(http_auth_scheme="api-key"), ApiKind.READ) == {"X-API-Key": READ_KEY}
    assert auth_headers(load_settings(write_api_key=None), ApiKind.WRITE) == {}


def test_iso_types_take_python_values_and_iso_strings_only() -> None:
    from datetime import UTC, date, datetime

    from pydantic import TypeAdapter

    from cdc.http_api import IsoDate, IsoDateTime

    when = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert TypeAdapter(IsoDateTime).validate_python(when) == when
    assert TypeAdapter(IsoDateTime).validate_python("2026-01-31T12:00:00Z") == when
    assert TypeAdapter(IsoDate).validate_python(date(2026, 1, 31)) == date(2026, 1, 31)
    for bad in (0, "0", "1769860800", 1.5):
        with pytest.raises(ValidationError, match="ISO-8601"):
            TypeAdapter(IsoDateTime).validate_python(bad)
        with pytest.raises(ValidationError, match="ISO-8601"):
            TypeAdapter(IsoDate).validate_python(bad)
