"""`cdcflow worker` and `cdcflow dlq list|replay`: thin shells over streams.app and streams.dlq."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cdc.logs import get_logger
from cdc.settings import Settings
from sinks.registry import READ_MODELS

log = get_logger(__name__)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    if not isinstance(settings, Settings):  # pragma: no cover - the root callback always sets it
        from cdc.settings import load_settings

        settings = load_settings()
    return settings


def worker(
    ctx: typer.Context,
    read_model: Annotated[
        str | None, typer.Option("--read-model", help=f"One of: {', '.join(READ_MODELS)} (default: all).")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Source topic (default: the read model's).")] = None,
    group_id: Annotated[
        str | None, typer.Option(help="Consumer group (default: cdcflow.<read model>).")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Sink namespace: schema/keyspace/label prefix (default: the live one).")
    ] = None,
) -> None:
    """Run stream workers that keep the read models current (all of them by default, one process each)."""
    settings = _settings(ctx)
    if read_model is None:
        if topic or group_id:
            raise typer.BadParameter("--topic/--group-id need --read-model")
        raise typer.Exit(_supervise(list(READ_MODELS), namespace))
    if read_model not in READ_MODELS:
        raise typer.BadParameter(f"unknown read model {read_model!r}; known: {', '.join(READ_MODELS)}")
    from streams.app import WorkerSpec, run_worker

    spec = WorkerSpec.of(settings, read_model, topic=topic, group_id=group_id, namespace=namespace)
    run_worker(settings, spec)


def _supervise(names: list[str], namespace: str | None) -> int:
    """One child process per read model (Faust: one consumer group per app); stop all when one ends."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name in names:
        argv = [sys.executable, "-m", "cli", "worker", "--read-model", name]
        if namespace:
            argv += ["--namespace", namespace]
        children[name] = subprocess.Popen(argv)
        log.info("worker_process_started", read_model=name, pid=children[name].pid)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while children:
        for name, child in list(children.items()):
            rc = child.poll()
            if rc is None:
                continue
            del children[name]
            if not stopping:
                log.error("worker_process_exited", read_model=name, returncode=rc)
                code = rc or 1
                stop(signal.SIGTERM, None)
        time.sleep(0.2)
    return code


dlq_app = typer.Typer(help="Dead letters: inspect, and re-drive after a fix.", no_args_is_help=True)


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    topic: Annotated[list[str] | None, typer.Option(help="Source topic(s) (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per dead letter.")] = False,
) -> None:
    """List dead letters: where they came from, why, and whether they were replayed."""
    from streams.dlq import list_dead_letters

    letters = list_dead_letters(_settings(ctx), topic or None)
    if as_json:
        typer.echo(json.dumps([x.to_json() for x in letters], indent=None))
        return
    table = Table(title=f"{len(letters)} dead letter(s)")
    for col in ("dlq", "source", "read model", "event id", "reason", "replayed"):
        table.add_column(col)
    for x in letters:
        table.add_row(
            f"{x.dlq_topic}[{x.dlq_partition}]@{x.dlq_offset}",
            f"{x.source_topic}[{x.source_partition}]@{x.source_offset}",
            x.read_model, x.event_id or "-", x.reason, "yes" if x.replayed else "no",
        )
    # Piped output (scripts, logs) is not wrapped at 80 columns; a terminal gets its own width.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    topic: Annotated[list[str] | None, typer.Option(help="Source topic(s) (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Re-drive dead letters not replayed yet to their source topics (sinks are idempotent)."""
    from streams.dlq import replay_dead_letters

    report = replay_dead_letters(_settings(ctx), topic or None)
    if as_json:
        typer.echo(json.dumps({"replayed": report.replayed, "skipped_duplicates": report.skipped_duplicates}))
        return
    for name, count in report.replayed.items():
        typer.echo(f"{name}: {count} replayed, {report.skipped_duplicates.get(name, 0)} duplicate(s) skipped")


def register(app: typer.Typer) -> None:
    """Add `worker` and `dlq` to the cdcflow command line."""
    app.command("worker")(worker)
    app.add_typer(dlq_app, name="dlq")
