"""The write services as real processes: bodies over the limit are refused with 413 while memory stays bounded,
keys are required once configured, and `cdcflow serve` will not listen beyond loopback without one."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pymongo import MongoClient

from cdc.services import service_database
from cdc.settings import REPO_ROOT, Settings
from tests.helpers import unique
from tests.http_support import READ_KEY, WRITE_KEY, Served, peak_rss_bytes, serve

pytestmark = pytest.mark.integration

BODY_BYTES = 50 * 1024 * 1024  # what a client sent in the report: four at once took 2.3 GB
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def clickstream(settings: Settings, mongo: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    prefix = unique("limits") + "_"
    # CDCFLOW_ROLE=admin: the service's own MongoDB user reaches its real database only, not this test's.
    env = {"CDCFLOW_SERVICE_DB_PREFIX": prefix, "CDCFLOW_WRITE_API_KEY": WRITE_KEY, "CDCFLOW_READ_API_KEY": READ_KEY,
           "CDCFLOW_ROLE": "admin"}
    try:
        with serve("clickstream", env, tmp_path_factory.mktemp("limits")) as app:
            yield app
    finally:
        client: MongoClient[dict[str, object]] = MongoClient(settings.mongo_uri)
        client.drop_database(service_database(settings.model_copy(update={"service_db_prefix": prefix}), "clickstream"))
        client.close()


def send_large(url: str, chunked: bool) -> tuple[int, int]:
    """POST a 50 MB body over a raw socket, stopping as soon as the server answers: (status, bytes sent)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY_BYTES}"
    head = (
        f"POST /pageviews/batch HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {WRITE_KEY}\r\n{framing}\r\n\r\n"
    )
    sent = 0
    try:
        sock.sendall(head.encode())
        chunk = b"[" + b" " * (CHUNK - 1)
        while sent < BODY_BYTES:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came before the body was all sent
            data = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
            try:
                sock.sendall(data)
            except OSError:  # the server closed the connection after answering
                break
            sent += len(chunk)
        reply = b""
        while b"\r\n" not in reply:
            more = sock.recv(4096)
            if not more:
                break
            reply += more
    finally:
        sock.close()
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0
    return status, sent


def test_large_bodies_are_refused_with_413_and_memory_stays_bounded(clickstream: Served) -> None:
    http = httpx.Client(base_url=clickstream.url, headers={"Authorization": f"Bearer {WRITE_KEY}"}, timeout=60)
    for _ in range(20):  # warm up: the first requests load what a request needs
        assert http.post("/pageviews", json={"user_id": "u", "url": "/"}).status_code == 201
    before = peak_rss_bytes(clickstream.pid)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: send_large(clickstream.url, chunked=i % 2 == 1), range(8)))
    elapsed = time.monotonic() - started
    growth = peak_rss_bytes(clickstream.pid) - before
    print(f"8 x 50 MB bodies (4 chunked): {results}, {elapsed:.1f} s, peak RSS +{growth / 2**20:.1f} MiB")
    assert [status for status, _ in results] == [413] * 8
    assert all(sent < BODY_BYTES for _, sent in results), "the server should answer before the body is all sent"
    assert growth < 64 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB for bodies refused at 1 MiB"
    # The service still works, and a batch of 300 KiB is under the limit.
    batch = [{"user_id": "u", "url": f"/products/p-{i}", "referrer": "/" * 1000} for i in range(300)]
    assert http.post("/pageviews/batch", json=batch).status_code == 201
    http.close()


def test_keys_are_required_once_configured(clickstream: Served) -> None:
    view = {"user_id": "u", "url": "/"}
    assert httpx.post(f"{clickstream.url}/pageviews", json=view).status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * 32}
    assert httpx.post(f"{clickstream.url}/pageviews", json=view, headers=wrong).status_code == 401
    r = httpx.post(f"{clickstream.url}/pageviews", json=view, headers={"Authorization": f"Bearer {READ_KEY}"})
    assert r.status_code == 403
    assert httpx.get(f"{clickstream.url}/health").status_code == 200
    assert WRITE_KEY not in clickstream.log.read_text() and READ_KEY not in clickstream.log.read_text()


@pytest.mark.parametrize("name", ["product", "read-api"])
def test_serve_refuses_to_listen_beyond_loopback_without_a_key(name: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CDCFLOW_LOG_JSON": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "serve", name, "--host", "0.0.0.0", "--port", "1"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    variable = "CDCFLOW_READ_API_KEY" if name == "read-api" else "CDCFLOW_WRITE_API_KEY"
    assert len(lines) == 1 and lines[0].startswith(f"error: refusing to serve {name} on 0.0.0.0"), lines
    assert variable in lines[0]
