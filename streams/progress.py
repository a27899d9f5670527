"""How long-running jobs (replay, resnapshot) report their phases and progress, without knowing the display."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Told about a job's phases (with their expected totals) and how far each got."""

    def phase(self, name: str, total: int) -> None: ...

    def advance(self, events: int) -> None: ...


class NoProgress:
    """Progress that shows nothing (library calls, tests)."""

    def phase(self, name: str, total: int) -> None:
        return None

    def advance(self, events: int) -> None:
        return None
