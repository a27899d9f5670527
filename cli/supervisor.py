"""`cdcflow worker` without `--read-model`: one child process per read model, each restarted when it dies.

Faust gives each app one consumer group, so each read model runs in a process of its own. A child that exits
(crashed agent, kill -9, out of memory) is restarted after a backoff (`worker_restart_initial`, doubling, at
most `worker_restart_max`), and the others go on untouched. Deaths are logged at error level with the exit
status; a child that lived at least `worker_restart_quick_seconds` starts its count afresh. After
`worker_restart_give_up` quick deaths in a row (0: never), the read model is deemed unable to run here: the
supervisor logs it at critical level, stops every child and exits 1, so that whatever runs the supervisor
(systemd, Kubernetes, an operator) sees it.

SIGTERM/SIGINT: every child gets SIGTERM; those still running `worker_stop_timeout` seconds later are killed.
The supervisor then exits 0 (or 1 after giving up).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cdc.logs import get_logger

log = get_logger(__name__)

#: Seconds between two looks at the children.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a dead child, and when to give up."""

    initial: float = 1.0
    maximum: float = 30.0
    quick_seconds: float = 60.0
    give_up: int = 5
    stop_timeout: float = 30.0

    def delay(self, quick_deaths: int) -> float:
        """Seconds before the restart that follows the `quick_deaths`-th quick death in a row (1, 2, …)."""
        return float(min(self.initial * 2.0 ** max(0, quick_deaths - 1), self.maximum))


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    starts: int = 0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs `children` (name, argv) until SIGTERM/SIGINT, restarting the ones that die."""

    def __init__(
        self,
        children: Sequence[tuple[str, list[str]]],
        policy: RestartPolicy,
        *,
        popen: Callable[[list[str]], subprocess.Popen[bytes]] = subprocess.Popen,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = [Child(name, list(argv)) for name, argv in children]
        self.policy = policy
        self._popen = popen
        self._clock = clock
        self.stopping = False
        self.gave_up: str | None = None

    def request_stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        """Signal handler: stop at the next look (within POLL_SECONDS)."""
        self.stopping = True

    def run(self, install_signals: bool = True) -> int:
        """Start every child, supervise until stopped; the exit status of the supervisor."""
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        for child in self.children:
            self._start(child)
        while not self.stopping and self.gave_up is None:
            self.step()
            time.sleep(POLL_SECONDS)
        return self.shutdown()

    def step(self) -> None:
        """One look: note the children that died, restart those whose backoff is over."""
        now = self._clock()
        for child in self.children:
            if child.proc is not None:
                rc = child.proc.poll()
                if rc is not None:
                    self._died(child, rc, now)
            elif child.restart_at is not None and now >= child.restart_at and self.gave_up is None:
                self._start(child)

    def _start(self, child: Child) -> None:
        child.proc = self._popen(child.argv)
        child.started_at = self._clock()
        child.restart_at = None
        child.starts += 1
        child.pids.append(child.proc.pid)
        log.info("worker_process_started", read_model=child.name, pid=child.proc.pid, start=child.starts)

    def _died(self, child: Child, rc: int, now: float) -> None:
        lived = now - child.started_at
        pid = child.proc.pid if child.proc is not None else None
        child.proc = None
        child.quick_deaths = child.quick_deaths + 1 if lived < self.policy.quick_seconds else 1
        if self.policy.give_up and child.quick_deaths >= self.policy.give_up:
            self.gave_up = child.name
            log.critical("worker_process_crash_loop", read_model=child.name, pid=pid, returncode=rc,
                         quick_deaths=child.quick_deaths, within_seconds=self.policy.quick_seconds,
                         action="stopping every worker; exit 1")
            return
        delay = self.policy.delay(child.quick_deaths)
        child.restart_at = now + delay
        log.error("worker_process_exited", read_model=child.name, pid=pid, returncode=rc,
                  lived_seconds=round(lived, 1), quick_deaths=child.quick_deaths, restart_in=delay)

    def shutdown(self) -> int:
        """SIGTERM to every child, SIGKILL to those left after the stop timeout; the exit status."""
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.policy.stop_timeout
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_process_killed", read_model=child.name, pid=child.proc.pid,
                          after_seconds=self.policy.stop_timeout)
                child.proc.kill()
                child.proc.wait()
            log.info("worker_process_stopped", read_model=child.name, pid=child.proc.pid,
                     returncode=child.proc.returncode)
        return 1 if self.gave_up is not None else 0
