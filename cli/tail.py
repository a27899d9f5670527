"""`cdcflow tail`: the change-stream tailer as a command (SIGTERM: flush, checkpoint, exit 0)."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from types import FrameType
from typing import Annotated

import typer

from cdc.settings import Settings
from cdc.tailer import Reset, Tailer, timestamp_of


def parse_iso_time(value: str) -> datetime:
    """An ISO-8601 time; naive means UTC. Raises typer.BadParameter on a bad value."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO-8601 time: {value!r}") from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def register(app: typer.Typer) -> None:
    """Add `cdcflow tail` to the command line."""

    @app.command()
    def tail(
        ctx: typer.Context,
        reset: Annotated[
            bool, typer.Option("--reset", help="Forget the resume tokens: restart from --from, or catch up from the "
                                               "last event known to be on Kafka.")
        ] = False,
        from_time: Annotated[
            str | None,
            typer.Option("--from", metavar="ISO-TIME", help="With --reset: resume at this time (UTC)."),
        ] = None,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
        database: Annotated[
            list[str] | None,
            typer.Option("--database", "-d", help="Service database to watch (repeatable; default: all)."),
        ] = None,
    ) -> None:
        """Tail the outboxes with change streams and forward every event to Kafka."""
        settings: Settings = ctx.obj
        if from_time is not None and not reset:
            raise typer.BadParameter("--from needs --reset")
        reset_spec: Reset | None = None
        databases = database or settings.tailer_databases
        if reset:
            start = parse_iso_time(from_time) if from_time else None
            what = (f"resume every outbox at {start.isoformat()} (events after it are sent again)"
                    if start else "send again every outbox event from the last one known to be on Kafka "
                                  "(catch-up scan), then stream")
            if not yes and not typer.confirm(
                f"Reset the tailer checkpoints of {', '.join(databases)}: {what}. Continue?"
            ):
                raise typer.Exit(1)
            reset_spec = Reset(start_at=timestamp_of(start) if start else None, scan_from=start)
        tailer = Tailer(settings, databases, reset=reset_spec)

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            tailer.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # Non-zero when a thread died or the stop took longer than its bound: a supervisor restarts us.
        raise typer.Exit(tailer.run())
