"""Background server processes we own: started detached, tracked by pid file, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from cdc.retry import poll_until
from infra.secrets import write_private


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


wait_until = poll_until


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3 is the state; "Z" is a zombie we have not reaped (it holds no resources or ports).
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


#: Words in the name of an environment variable that may hold a secret (cdcflow's own settings, DSNs, URIs).
_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "DSN", "URI", "CREDENTIAL", "SASL", "KEY")


def server_environment() -> dict[str, str]:
    """Our environment without what may hold a secret: a server process needs none of cdcflow's settings, and
    its environment is readable by other processes of its user (and by root)."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CDCFLOW_") and not any(word in name.upper() for word in _SECRET_WORDS)
    }


class ManagedProcess:
    """One server process of ours, known by the pid file `<runtime_dir>/<name>.pid`."""

    def __init__(self, name: str, runtime_dir: Path) -> None:
        self.name = name
        self.runtime_dir = runtime_dir
        self.pid_file = runtime_dir / f"{name}.pid"
        self.log_file = runtime_dir / f"{name}.log"

    def pid(self) -> int | None:
        """The pid of our running process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and self._is_ours(pid):
            return pid
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        return None

    def _is_ours(self, pid: int) -> bool:
        # Guard against pid reuse: our processes carry CDCFLOW_SERVER=<name> in their environment.
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return True
        if not environ:
            # Empty while the process is in the middle of an exec (the java launcher re-execs itself).
            return True
        return f"CDCFLOW_SERVER={self.name}".encode() in environ.split(b"\0")

    def running(self) -> bool:
        """True when our process is alive."""
        return self.pid() is not None

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> int:
        """Start argv detached (own session), output appended to the log file; returns the pid.

        The process runs under umask 077 (what it writes is its user's alone) with `env` added to ours: pass no
        secret in `env` or `argv` (both are visible to other local users in /proc); use a 0600 file.
        """
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        full_env = server_environment()
        full_env.update(env or {})
        full_env["CDCFLOW_SERVER"] = self.name
        cmd = list(argv)
        fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(cwd) if cwd else None,
                env=full_env,
                start_new_session=True,
                # Exec as `user` directly (no runuser/su parent), so the pid we keep is the server's own.
                user=user,
                group=user,
                umask=0o077,
            )
        write_private(self.pid_file, str(proc.pid))
        return proc.pid

    def exited_early(self) -> bool:
        """True when we started it and it has already died (start-up failure)."""
        return self.pid_file.exists() and self.pid() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the process log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
        """Signal our process (SIGTERM by default), wait, SIGKILL if it lingers. True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        try:
            wait_until(lambda: not pid_alive(pid), timeout, what=f"{self.name} exit")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 10, what=f"{self.name} exit after SIGKILL")
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        return True

    def kill9(self) -> bool:
        """kill -9 our process and wait until it is really gone (for crash tests)."""
        return self.stop(timeout=15, sig=signal.SIGKILL)
