"""The HTTP APIs as real servers for the tests: `cdcflow serve NAME` in a child process on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from cdc.settings import REPO_ROOT
from tests.helpers import free_port, wait_for

#: 32 characters each; the fuzz and auth tests configure both kinds.
WRITE_KEY = "w" * 16 + "-test-write-key!"
READ_KEY = "r" * 16 + "-test-read-key!!"


@dataclass(frozen=True)
class Served:
    name: str
    url: str
    pid: int
    log: Path


@contextmanager
def serve(name: str, env: Mapping[str, str], log_dir: Path, *, host: str = "127.0.0.1") -> Iterator[Served]:
    """Run `cdcflow serve NAME` with `env` added to this environment; stop it (SIGTERM) afterwards."""
    port = free_port()
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", name, "--host", host, "--port", str(port)],
            cwd=REPO_ROOT, env={**os.environ, "CDCFLOW_LOG_JSON": "true", **env},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    health = "/healthz" if name == "read-api" else "/health"

    def up() -> bool:
        if child.poll() is not None:
            raise AssertionError(f"{name} exited with {child.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(url + health, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, what=f"{name} to answer {health}")
        yield Served(name, url, child.pid, log)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")
