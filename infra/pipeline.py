"""The pipeline's own processes (services, tailer, workers) as children, for the demo and end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cdc.settings import Settings
from infra.errors import StartError

SERVICES = ("product", "order", "clickstream")


@dataclass
class Child:
    """One child process of the pipeline and its log file."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 10) -> str:
        """The end of its log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Pipeline:
    """Starts `cdcflow serve …`, `cdcflow tail` and `cdcflow worker` as child processes; stops them cleanly."""

    settings: Settings
    log_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    def _spawn(self, name: str, args: Sequence[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        child = Child(name, [sys.executable, "-m", "cli", *args], self.log_dir / f"{name}.log")
        env = {**os.environ, "CDCFLOW_LOG_JSON": "true", **self.env}
        fd = os.open(child.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # logs are ours alone
        with open(fd, "ab") as log:
            child.proc = subprocess.Popen(
                child.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.children.append(child)
        return child

    def service_url(self, name: str) -> str:
        """Base URL of an example service."""
        port = getattr(self.settings, f"{name}_port")
        return f"http://{self.settings.services_host}:{port}"

    def start_services(self, timeout: float = 60.0) -> None:
        """Start the three example services and wait until each answers /health."""
        for name in SERVICES:
            self._spawn(f"service-{name}", ["serve", name])
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            for name in SERVICES:
                child = next(c for c in self.children if c.name == f"service-{name}")
                while True:
                    if not child.alive():
                        raise StartError(child.name, f"exited during start-up:\n{child.log_tail()}")
                    with contextlib.suppress(httpx.HTTPError):
                        if http.get(f"{self.service_url(name)}/health").status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise StartError(child.name, f"no answer on /health after {timeout:.0f}s")
                    time.sleep(0.3)

    def start_tailer(self) -> Child:
        """Start the change-stream tailer."""
        return self._spawn("tailer", ["tail"])

    def start_workers(self) -> Child:
        """Start the stream workers for every read model (one supervisor, one process per read model)."""
        return self._spawn("workers", ["worker"])

    def check_alive(self) -> None:
        """Raise StartError naming the first child that died."""
        for child in self.children:
            if not child.alive():
                raise StartError(child.name, f"exited unexpectedly:\n{child.log_tail()}")

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every child (workers and tailer flush and checkpoint), wait, SIGKILL stragglers."""
        for child in reversed(self.children):
            if child.alive() and child.proc is not None:
                child.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                codes[child.name] = child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                codes[child.name] = child.proc.wait()
        self.children.clear()
        return codes

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
