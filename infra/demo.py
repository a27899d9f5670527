"""The main job for a fresh machine: servers up, then a smoke round trip through each."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from cdc.settings import Settings
from infra import stack
from infra.smoke import ROUND_TRIPS


def run_demo(settings: Settings) -> None:
    """Bring the stack up and prove each server with a write and a read."""
    console = Console()
    with console.status("starting servers (the first run installs them: a few minutes)…"):
        statuses = stack.up(settings)
    table = Table(title="smoke round trips")
    for col in ("server", "endpoint", "start s", "round trip", "ms"):
        table.add_column(col)
    for st in statuses:
        t0 = time.perf_counter()
        result = ROUND_TRIPS[st.name](settings)
        ms = (time.perf_counter() - t0) * 1000
        table.add_row(st.name, st.endpoint, f"{st.seconds or 0:.1f}", result, f"{ms:.0f}")
    console.print(table)
