"""`cdcflow replay` and `cdcflow resnapshot`: thin shells over streams.replay and streams.resnapshot."""

from __future__ import annotations

import json
import sys
from functools import partial
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from cdc.settings import Settings
from sinks.registry import READ_MODELS

EXIT_USAGE = 2
#: `--verify` refused the swap: nothing was replaced.
EXIT_REFUSED = 1


class _RateColumn(ProgressColumn):
    """Events per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- ev/s" if speed is None else f"{speed:,.0f} ev/s")


class RichProgress:
    """A rich progress bar per phase: events done/total, events/s, elapsed and ETA (on stderr)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self._progress.stop()

    def _finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, total=max(task.completed, 0), refresh=True)

    def phase(self, name: str, total: int) -> None:
        self._finish()
        self._task = self._progress.add_task(name, total=max(total, 0))  # 0: done at once, its clock stopped

    def advance(self, events: int) -> None:
        if self._task is not None and events:
            task = self._progress.tasks[-1]
            if task.total is not None and task.completed + events > task.total:  # an estimate was low
                self._progress.update(self._task, total=task.completed + events)
            self._progress.advance(self._task, events)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    if not isinstance(settings, Settings):  # pragma: no cover - the root callback always sets it
        from cdc.settings import load_settings

        settings = load_settings()
    return settings


def _usage_error(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(EXIT_USAGE)


def replay_command(
    ctx: typer.Context,
    read_model: Annotated[
        str, typer.Option("--read-model", help=f"Read model to replay: {', '.join(READ_MODELS)}.")
    ],
    from_: Annotated[
        str,
        typer.Option(
            "--from",
            help="'earliest', or an ISO-8601 time (UTC unless it has an offset, e.g. 2026-01-31T12:00:00Z): "
                 "each partition starts at its first record published at or after it (Kafka record time).",
        ),
    ],
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help="An ISO-8601 time: each partition stops before its first record published after it, so the model "
                 "is built as of that time. Not with --rebuild (live workers would go on from their own offsets "
                 "on top of a model of the past): write it into a namespace of its own (--namespace) and query "
                 "it there.",
            show_default=False,
        ),
    ] = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Build into a shadow namespace and swap it in at the end: readers never see a half-built model.",
        ),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="With --rebuild: before the swap, compare the shadow with the live model row by row; a "
                 "difference that neither later records nor live workers still behind explain refuses the "
                 "swap (exit 1, shadow dropped, live model untouched).",
        ),
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(
            help="The live workers' consumer group, for --verify: once it has committed past the shadow's end, "
                 "the live model must have all the shadow has (default: the read model's group).",
            show_default=False,
        ),
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Source topic (default: the read model's).")] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Sink namespace: schema/keyspace/label prefix (default: the live one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (no progress bar).")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what it would read and replace, and stop (writes nothing).")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before a --rebuild replaces the live model (scripts).")
    ] = False,
) -> None:
    """Re-read a read model's topic with a consumer of its own and write it through the same sink.

    Idempotent: replaying twice changes nothing. Live workers are not disturbed (own group, nothing committed).

    It stops at the end offsets seen at start; --rebuild also catches up on what arrived meanwhile.

    Records the sink refuses go to <topic>.dlq, exactly as with the live worker.

    --rebuild shows what it will swap and asks first (--yes: do not ask; without a terminal it needs --yes).
    """
    from streams.replay import VerifyError, parse_start, parse_until, plan_replay, replay

    settings = _settings(ctx)
    if read_model not in READ_MODELS:
        raise _usage_error(f"unknown read model {read_model!r}; known: {', '.join(READ_MODELS)}")
    try:
        start = parse_start(from_)
        end = None if until is None else parse_until(until, start)
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    if end is not None and rebuild:
        raise _usage_error(
            "--until cannot be used with --rebuild: the live workers would go on from their own offsets on top "
            "of a model of the past; build the as-of model into a namespace of its own instead "
            "(--until ... --namespace NAME, then cdcflow query ... --namespace NAME)"
        )
    if verify and not rebuild:
        raise _usage_error("--verify compares a rebuilt shadow with the live model before the swap: add --rebuild")
    if namespace is not None:
        from sinks.base import check_namespace

        try:
            check_namespace(namespace)
        except ValueError as exc:
            raise _usage_error(str(exc)) from None
    if dry_run or (rebuild and not yes):
        plan = plan_replay(settings, read_model, start, rebuild=rebuild, topic=topic, namespace=namespace,
                           until=end, verify=verify)
        if dry_run:
            typer.echo(json.dumps({"dry_run": True, **plan.to_json()}) if as_json else plan.describe())
            return
        typer.echo(plan.describe(), err=True)
        if not sys.stdin.isatty():
            raise _usage_error("--rebuild replaces the live model: confirm with --yes (or look first: --dry-run)")
        if not typer.confirm("Rebuild and swap it in?", err=True):
            typer.echo("nothing done", err=True)
            raise typer.Exit(1)
    console = Console(stderr=True)
    run = partial(replay, settings, read_model, start, rebuild=rebuild, topic=topic, namespace=namespace,
                  until=end, verify=verify, group=group)
    try:
        if as_json or not sys.stderr.isatty():
            report = run()
        else:
            with RichProgress(console) as bar:
                report = run(progress=bar)
    except VerifyError as exc:
        if as_json:
            typer.echo(json.dumps({"refused": True, "verification": exc.verification.to_json()}))
        typer.secho(f"refused: {exc}\nnothing swapped: the live model is as it was; the shadow was dropped",
                    fg="red", err=True)
        raise typer.Exit(EXIT_REFUSED) from None
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    rate = report.events / report.seconds if report.seconds else 0.0
    until_text = "" if report.until is None else f" until {report.until.isoformat()}"
    typer.echo(
        f"{report.read_model}: {report.events} event(s) from {report.topic} "
        f"({'earliest' if report.start is None else report.start.isoformat()}{until_text}) "
        f"into namespace {report.namespace} "
        f"in {report.seconds:.1f}s ({rate:,.0f} ev/s); {report.dead} dead letter(s)"
    )
    for phase in report.phases:
        typer.echo(f"  {phase.name:<18} {phase.namespace:<28} {phase.events:>8} event(s)  {phase.seconds:6.1f}s")
    if report.verification is not None:
        typer.echo(f"  verified: {report.verification.message()}")
    if report.rebuild:
        retired = f"; retired {report.retired}" if report.retired and report.retired != report.physical else ""
        typer.echo(f"  rebuilt in {report.shadow}, swapped in as {report.namespace} "
                   f"(physical: {report.physical}){retired}")


def resnapshot_command(
    ctx: typer.Context,
    service: Annotated[
        str,
        typer.Option("--service", help="order (its event store), product (its products) or clickstream (its outbox)."),
    ],
    topic: Annotated[
        str | None, typer.Option(help="Send everything to this topic instead of each event's own (staging).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (no progress bar).")] = False,
) -> None:
    """Re-emit a service's stored events to Kafka, e.g. after topic retention dropped them.

    order: every event of its `order_events` event store, per order in version order.

    product: its stored state, one ProductSnapshot per product at its current version (the stock view takes
    it where it is behind, and repairs a row that differs at the same version).

    clickstream: no event store, so its outbox documents (published or not); published ones expire after
    outbox_retention_seconds (TTL): only the events still retained come back.

    Same key, value and headers as the tailer; sinks are idempotent, so events they already have change nothing.
    """
    from streams.resnapshot import SERVICES, resnapshot

    settings = _settings(ctx)
    if service not in SERVICES:
        raise _usage_error(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    if as_json or not sys.stderr.isatty():
        report = resnapshot(settings, service, topic=topic)
    else:
        with RichProgress(Console(stderr=True)) as bar:
            report = resnapshot(settings, service, topic=topic, progress=bar)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    per_topic = ", ".join(f"{t}: {n}" for t, n in sorted(report.topics.items())) or "nothing to send"
    typer.echo(f"{service}: {report.events} event(s) re-emitted from {report.database}.{report.source} "
               f"in {report.seconds:.1f}s ({per_topic}); {report.skipped} invalid document(s) skipped")
    if report.unversioned:
        typer.echo(f"{report.unversioned} product(s) at version 0 skipped: no event describes them yet; "
                   "seed them to create them")


def register(app: typer.Typer) -> None:
    """Add `replay` and `resnapshot` to the cdcflow command line."""
    app.command("replay")(replay_command)
    app.command("resnapshot")(resnapshot_command)
