"""`cdcflow dlq list | replay | holds`: dead letters of the workers (`<topic>.dlq` on Kafka, streams/dlq.py) and of
the tailer (outbox documents that could not go to Kafka, cdc/dead_letters.py), and the aggregates held back
behind them."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cdc.dead_letters import DeadLetterStore, TailerDeadLetter, redrive
from cdc.mongo import mongo_client
from cdc.settings import Settings
from sinks.base import SinkError, check_namespace
from sinks.registry import READ_MODELS

dlq_app = typer.Typer(help="Dead letters: inspect, and re-drive after a fix.", no_args_is_help=True)

TopicOption = Annotated[list[str] | None, typer.Option(help="Source topic(s) (default: all).")]


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _as_tailer(settings: Settings) -> Settings:
    """The settings for the tailer's dead letters: they live in the tailer's database and come from the outboxes.
    The workers' role (this command's) has no MongoDB user, so that part runs as the tailer; another role
    (CDCFLOW_ROLE=admin, say) is kept."""
    return settings.as_role("tailer") if settings.role == "worker" else settings


def _tailer_letters(settings: Settings, topics: list[str] | None) -> list[TailerDeadLetter]:
    settings = _as_tailer(settings)
    client = mongo_client(settings)
    try:
        letters = DeadLetterStore.of(settings, client).list()
    finally:
        client.close()
    return [x for x in letters if not topics or x.topic in topics]


def _console() -> Console:
    # Piped output (scripts, logs) is not wrapped at 80 columns; a terminal gets its own width.
    return Console(width=None if sys.stdout.isatty() else 160)


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    topic: TopicOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per dead letter.")] = False,
) -> None:
    """List dead letters (the workers' and the tailer's): where they came from, why, whether they were replayed."""
    from streams.dlq import list_dead_letters

    settings = _settings(ctx)
    letters = list_dead_letters(settings, topic or None)
    tailer = _tailer_letters(settings, topic or None)
    if as_json:
        for x in letters:
            typer.echo(json.dumps({"source": "worker", **x.to_json()}))
        for t in tailer:
            typer.echo(json.dumps(t.to_json()))
        return
    table = Table(title=f"{len(letters)} dead letter(s) of the workers")
    for col in ("dlq", "source", "read model", "event id", "reason", "replayed"):
        table.add_column(col)
    for x in letters:
        table.add_row(
            f"{x.dlq_topic}[{x.dlq_partition}]@{x.dlq_offset}",
            f"{x.source_topic}[{x.source_partition}]@{x.source_offset}",
            x.read_model, x.event_id or "-", x.reason, "yes" if x.replayed else "no",
        )
    console = _console()
    console.print(table)
    outboxes = Table(title=f"{len(tailer)} outbox document(s) dead-lettered by the tailer")
    for col in ("outbox", "event id", "topic", "kind", "reason", "replayed"):
        outboxes.add_column(col)
    for t in tailer:
        outboxes.add_row(t.outbox, t.event_id, t.topic or "-", t.kind, t.reason[:300],
                         "yes" if t.replayed_at is not None else "no")
    console.print(outboxes)


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    topic: TopicOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Re-drive dead letters not replayed yet: the workers' to their source topics (sinks are idempotent), the
    tailer's from their outbox (the document as it is there now, after a fix) to their topics."""
    from streams.dlq import replay_dead_letters

    settings = _settings(ctx)
    report = replay_dead_letters(settings, topic or None)
    as_tailer = _as_tailer(settings)
    client = mongo_client(as_tailer)
    try:
        pending = {x.outbox for x in DeadLetterStore.of(as_tailer, client).list(pending_only=True)
                   if not topic or x.topic in topic}
        tailer: dict[str, Any] = {"replayed": 0, "still_failing": {}}
        for outbox in sorted(pending):
            done = redrive(as_tailer, client, outbox=outbox)
            tailer["replayed"] += done.replayed
            tailer["still_failing"].update(done.still_failing)
    finally:
        client.close()
    if as_json:
        typer.echo(json.dumps({"replayed": report.replayed, "skipped_duplicates": report.skipped_duplicates,
                               "tailer": tailer}))
    else:
        for name, count in report.replayed.items():
            typer.echo(f"{name}: {count} replayed, {report.skipped_duplicates.get(name, 0)} duplicate(s) skipped")
        typer.echo(f"tailer: {tailer['replayed']} outbox document(s) re-sent, "
                   f"{len(tailer['still_failing'])} still failing")
        for event_id, reason in tailer["still_failing"].items():
            typer.echo(f"  {event_id}: {reason}")
    if tailer["still_failing"]:
        raise typer.Exit(1)


@dlq_app.command("holds")
def dlq_holds(
    ctx: typer.Context,
    read_model: Annotated[list[str] | None, typer.Option(help="Read model(s) (default: all).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Sink namespace (default: the live one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one object per hold.")] = False,
) -> None:
    """Aggregates held back behind a dead-lettered event: their later events wait until it is re-driven."""
    from sinks.registry import build_sink

    names = read_model or list(READ_MODELS)
    unknown = [n for n in names if n not in READ_MODELS]
    if unknown:
        raise typer.BadParameter(f"unknown read model(s) {unknown}; known: {', '.join(READ_MODELS)}")
    try:
        check_namespace(namespace or _settings(ctx).sink_namespace)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    rows: list[dict[str, object]] = []
    failed: list[str] = []
    for name in names:
        sink = build_sink(name, _settings(ctx), namespace)
        try:
            rows += [{"read_model": name, **h} for h in sink.holds()]
        except SinkError as exc:  # e.g. never set up in this namespace, or its store is down
            failed.append(f"{name}: {exc}")
        finally:
            sink.close()
    for line in failed:
        typer.echo(f"cannot read the holds of {line}", err=True)
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        _print_holds(rows)
    if failed:
        raise typer.Exit(1)


def _print_holds(rows: list[dict[str, object]]) -> None:
    table = Table(title=f"{len(rows)} aggregate(s) held back")
    for col in ("read model", "aggregate", "held event", "version", "parked", "reason"):
        table.add_column(col)
    for h in rows:
        table.add_row(str(h["read_model"]), str(h["aggregate_id"])[:80], str(h["event_id"]), str(h["version"]),
                      str(h["parked"]), str(h["reason"])[:200])
    _console().print(table)


def register(app: typer.Typer) -> None:
    """Add `dlq` to the cdcflow command line."""
    app.add_typer(dlq_app, name="dlq")
