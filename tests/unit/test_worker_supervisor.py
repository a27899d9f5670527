"""The worker supervisor's restart policy, with fake processes and a fake clock; then with real processes
(no servers): a child that keeps dying makes it give up, a child that ignores SIGTERM is killed in time."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from cli.supervisor import RestartPolicy, Supervisor


class FakeProc:
    pids = iter(range(1000, 2000))

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(policy: RestartPolicy) -> tuple[Supervisor, Clock, list[FakeProc]]:
    clock, procs = Clock(), []

    def popen(argv: list[str]) -> FakeProc:
        procs.append(FakeProc(argv))
        return procs[-1]

    sup = Supervisor([("a", ["a"]), ("b", ["b"])], policy, popen=popen, clock=clock)  # type: ignore[arg-type]
    for child in sup.children:
        sup._start(child)
    return sup, clock, procs


def test_delays_double_up_to_the_maximum() -> None:
    policy = RestartPolicy(initial=1.0, maximum=10.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_dead_child_is_restarted_after_its_backoff_and_the_others_are_untouched() -> None:
    sup, clock, procs = make(RestartPolicy(initial=1.0, maximum=8.0, quick_seconds=60, give_up=0))
    a, b = procs
    clock.now = 5.0
    a.returncode = -9
    sup.step()
    assert sup.children[0].proc is None and sup.children[0].restart_at == 6.0
    clock.now = 5.9
    sup.step()
    assert len(procs) == 2
    clock.now = 6.0
    sup.step()
    assert len(procs) == 3 and procs[2].argv == ["a"] and sup.children[0].proc is procs[2]
    assert sup.children[1].proc is b and not b.signals and sup.children[1].starts == 1
    # dies quickly again: twice the delay; after a long life the count starts afresh
    clock.now = 7.0
    procs[2].returncode = 1
    sup.step()
    assert sup.children[0].restart_at == 9.0
    clock.now = 9.0
    sup.step()
    clock.now = 200.0
    procs[3].returncode = 1
    sup.step()
    assert sup.children[0].quick_deaths == 1 and sup.children[0].restart_at == 201.0


def test_after_n_quick_deaths_it_gives_up_and_stops_everything_with_exit_1() -> None:
    sup, clock, procs = make(RestartPolicy(initial=1.0, quick_seconds=60, give_up=3))
    for death in range(3):
        procs[-2 if death == 0 else -1].returncode = 3
        clock.now += 1
        sup.step()
        if death < 2:
            clock.now += 10
            sup.step()
    assert sup.gave_up == "a" and sup.children[0].proc is None
    b = sup.children[1].proc
    assert isinstance(b, FakeProc)
    assert sup.shutdown() == 1 and b.signals == [signal.SIGTERM]


def test_real_children_that_keep_dying_make_it_give_up_quickly() -> None:
    dies = [sys.executable, "-c", "import sys; sys.exit(3)"]
    sleeps = [sys.executable, "-c", "import time; time.sleep(60)"]
    sup = Supervisor([("dies", dies), ("sleeps", sleeps)],
                     RestartPolicy(initial=0.1, maximum=0.2, quick_seconds=30, give_up=3, stop_timeout=10))
    started = time.monotonic()
    assert sup.run(install_signals=False) == 1
    assert time.monotonic() - started < 15
    assert sup.gave_up == "dies" and sup.children[0].starts == 3 and sup.children[1].starts == 1
    sleeper = sup.children[1].proc
    assert sleeper is not None and sleeper.returncode == -signal.SIGTERM


def test_sigterm_stops_every_child_within_the_bound_killing_those_that_ignore_it() -> None:
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                "time.sleep(60)"]
    polite = [sys.executable, "-c", "import time; time.sleep(60)"]
    sup = Supervisor([("stubborn", stubborn), ("polite", polite)],
                     RestartPolicy(initial=0.1, give_up=0, stop_timeout=2.0),
                     popen=lambda argv: subprocess.Popen(argv, stdout=subprocess.PIPE))
    stopped_at: list[float] = []

    def stop_once_ready() -> None:  # SIGTERM only once the stubborn child ignores it
        while sup.children[0].proc is None:
            time.sleep(0.01)
        out = sup.children[0].proc.stdout
        assert out is not None and out.readline() == b"ready\n"
        stopped_at.append(time.monotonic())
        sup.request_stop()

    threading.Thread(target=stop_once_ready, daemon=True).start()
    assert sup.run(install_signals=False) == 0
    assert time.monotonic() - stopped_at[0] < 2.0 + 1.0
    procs = [c.proc for c in sup.children]
    assert procs[0] is not None and procs[0].returncode == -signal.SIGKILL
    assert procs[1] is not None and procs[1].returncode == -signal.SIGTERM
    for p in procs:
        assert p is not None and p.stdout is not None
        p.stdout.close()
