"""The shape every local server has: install, start, health, stop."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path

from cdc.retry import poll_until
from cdc.settings import Settings
from infra.errors import StartError, UnreachableError
from infra.process import ManagedProcess, port_open
from infra.secrets import private_dir


@dataclass
class ServerStatus:
    """What `infra status` reports for one server."""

    name: str
    endpoint: str
    local: bool
    running: bool
    healthy: bool
    pid: int | None = None
    detail: str = ""
    seconds: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


class Server(abc.ABC):
    """A server infra/ can install and run locally; or an external one it only health-checks."""

    name: str = ""
    #: The environment variable that points cdcflow at an external server of this kind.
    uri_setting: str = ""
    #: The setting that moves the local server's main port.
    port_setting: str = ""
    #: Seconds `start` may wait for health before giving up.
    start_timeout: float = 120.0

    def __init__(self, settings: Settings, *, instance: str | None = None) -> None:
        self.settings = settings
        # `instance` lets tests run a second, private copy (own name, data dir, ports via settings).
        self.instance = instance or self.name
        self.process = ManagedProcess(self.instance, settings.runtime_dir)

    @property
    def data_dir(self) -> Path:
        """This server's data folder."""
        return self.settings.data_dir / self.instance

    @property
    def local(self) -> bool:
        """True when infra/ runs this server (its address was not configured)."""
        return self.settings.is_local(self.name)

    @property
    def admin_settings(self) -> Settings:
        """The settings with the local servers' admin credentials (infra and health checks act as admin)."""
        return self.settings.as_role("admin")

    @property
    @abc.abstractmethod
    def endpoint(self) -> str:
        """The address clients use (no secrets)."""

    @property
    @abc.abstractmethod
    def ports(self) -> list[int]:
        """TCP ports the local server listens on (checked free before start)."""

    @abc.abstractmethod
    def install(self) -> None:
        """Make the server runnable here: idempotent, skips what is already there."""

    @abc.abstractmethod
    def launch(self) -> None:
        """Start the (installed, not running) local server process; do not wait for health."""

    @abc.abstractmethod
    def check_health(self) -> str:
        """One real round trip; returns a short detail, raises on failure."""

    def provision(self, deadline: float) -> None:
        """After `launch`: create or update the server's users from the generated passwords, if it has to be
        done while it runs (default: nothing; most servers are provisioned before they start)."""
        return None

    def stop(self) -> bool:
        """Stop our local process (SIGTERM, then SIGKILL). True if one was running."""
        return self.process.stop(timeout=60)

    # -- shared behaviour --------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """(healthy, detail) without raising."""
        if self.local and not port_open(self.ports[0]):
            # Skip the client entirely: drivers log every refused connection loudly.
            return False, f"nothing accepts connections on port {self.ports[0]}"
        try:
            return True, self.check_health()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]

    def ensure_running(self) -> ServerStatus:
        """Install if needed, start if not running, wait for health; returns the status with timing."""
        start = time.monotonic()
        if not self.local:
            ok, detail = self.healthy()
            if not ok:
                raise UnreachableError(
                    self.name,
                    f"{self.uri_setting} points at {self.endpoint}, which is unreachable ({detail}); "
                    f"fix {self.uri_setting} or unset it to use the local server",
                )
            return self._status(True, detail, time.monotonic() - start)
        if not self.process.running():
            self.install()
            busy = [p for p in self.ports if port_open(p)]
            if busy:
                raise StartError(
                    self.name,
                    f"port {busy[0]} is already taken by another process; stop that process or choose "
                    f"another port ({self.port_setting or f'CDCFLOW_{self.name.upper()}_PORT'} and related settings)",
                )
            # Data (and the passwords) are ours alone: 0700 folders; the servers write under umask 077.
            private_dir(self.settings.data_dir)
            private_dir(self.settings.runtime_dir)
            private_dir(self.data_dir)
            self.launch()
        self.provision(time.monotonic() + self.start_timeout)
        self.wait_healthy(self.start_timeout)
        ok, detail = self.healthy()
        return self._status(ok, detail, time.monotonic() - start)

    def wait_healthy(self, timeout: float) -> None:
        """Wait for a successful health check, or raise StartError with the log tail."""
        detail = ""

        def ready() -> bool:
            nonlocal detail
            if self.local and self.process.exited_early():
                raise StartError(self.name, f"process exited during start-up; log {self.process.log_file}:\n"
                                 + self.process.log_tail())
            ok, detail = self.healthy()
            return ok

        try:
            poll_until(ready, timeout, 0.5, what=f"{self.name} healthy")
        except TimeoutError:
            raise StartError(
                self.name, f"not healthy after {timeout:.0f}s ({detail}); log {self.process.log_file}"
            ) from None

    def status(self) -> ServerStatus:
        """Current status without starting anything."""
        ok, detail = self.healthy()
        return self._status(ok, detail, None)

    def _status(self, ok: bool, detail: str, seconds: float | None) -> ServerStatus:
        pid = self.process.pid() if self.local else None
        return ServerStatus(
            name=self.name,
            endpoint=self.endpoint,
            local=self.local,
            running=pid is not None or (not self.local and ok),
            healthy=ok,
            pid=pid,
            detail=detail,
            seconds=seconds,
        )
