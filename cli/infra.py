"""`cdcflow infra up | down | status`: the local servers."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cdc.settings import Settings
from infra import stack
from infra.servers.base import ServerStatus

app = typer.Typer(help="Local servers: install if missing, start, health, stop.", no_args_is_help=True)

Names = Annotated[
    list[str] | None, typer.Argument(help="Servers (mongo kafka postgres cassandra neo4j); all by default.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _table(statuses: list[ServerStatus], title: str) -> Table:
    table = Table(title=title)
    for col in ("server", "endpoint", "state", "pid", "seconds", "detail"):
        table.add_column(col)
    for s in statuses:
        state = "[green]healthy[/]" if s.healthy else ("[yellow]unhealthy[/]" if s.running else "[red]down[/]")
        where = s.endpoint + ("" if s.local else " (external)")
        secs = f"{s.seconds:.1f}" if s.seconds is not None else ""
        table.add_row(s.name, where, state, str(s.pid or ""), secs, s.detail)
    return table


@app.command()
def up(ctx: typer.Context, names: Names = None, json_out: JsonOpt = False) -> None:
    """Install what is missing, start the servers, wait until each is healthy."""
    settings = _settings(ctx)
    console = Console(stderr=json_out)
    with console.status("starting servers (first run downloads jars: a minute or two)…"):
        try:
            statuses = stack.up(settings, names)
        except stack.StackError as exc:
            for err in exc.errors:
                typer.secho(f"error: {err}", fg="red", err=True)
            raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps([asdict(s) for s in statuses], indent=2))
    else:
        console.print(_table(statuses, "cdcflow servers up"))


@app.command()
def down(ctx: typer.Context, names: Names = None) -> None:
    """Stop the local servers we started (by their pid files)."""
    stopped = stack.down(_settings(ctx), names)
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(ctx: typer.Context, names: Names = None, json_out: JsonOpt = False) -> None:
    """Health of each server; exit code 1 when any is not healthy."""
    statuses = stack.status(_settings(ctx), names)
    if json_out:
        typer.echo(json.dumps([asdict(s) for s in statuses], indent=2))
    else:
        Console().print(_table(statuses, "cdcflow servers"))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)
