"""`cdcflow worker` and `cdcflow dlq list|replay`: thin shells over streams.app and streams.dlq."""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cdc.logs import get_logger
from cdc.settings import Settings
from cli.supervisor import RestartPolicy, Supervisor
from sinks.base import SinkError, check_namespace
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
    topic_prefix: Annotated[
        str, typer.Option(help="Prefix of the source topics, e.g. 'staging_' (their .dlq topics follow).")
    ] = "",
    group_prefix: Annotated[
        str, typer.Option(help="Prefix of the consumer groups: <prefix><read model>.")
    ] = "cdcflow.",
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus exporter port (default CDCFLOW_WORKER_METRICS_PORT; all: port + i).",
                     min=0, max=65535),
    ] = None,
    web_port: Annotated[
        int | None,
        typer.Option(help="Faust web server port (default CDCFLOW_WORKER_WEB_PORT; all: port + i).",
                     min=1, max=65535),
    ] = None,
) -> None:
    """Run stream workers that keep the read models current (all of them by default, one process each,
    each restarted when it dies)."""
    settings = _settings(ctx)
    if _PREFIX.fullmatch(topic_prefix) is None or _PREFIX.fullmatch(group_prefix) is None:
        raise typer.BadParameter("prefixes are letters, digits, '.', '_' and '-' (at most 100)")
    if metrics_port is not None:
        settings = settings.model_copy(update={"worker_metrics_port": metrics_port})
    if web_port is not None:
        settings = settings.model_copy(update={"worker_web_port": web_port})
    if read_model is None:
        if topic or group_id:
            raise typer.BadParameter("--topic/--group-id need --read-model")
        raise typer.Exit(_supervise(settings, list(READ_MODELS), namespace, topic_prefix, group_prefix))
    if read_model not in READ_MODELS:
        raise typer.BadParameter(f"unknown read model {read_model!r}; known: {', '.join(READ_MODELS)}")
    from streams.app import WorkerSpec, run_worker

    rm = READ_MODELS[read_model]
    spec = WorkerSpec.of(settings, read_model, topic=topic or topic_prefix + rm.topic,
                         group_id=group_id or group_prefix + read_model, namespace=namespace)
    run_worker(settings, spec)


_PREFIX = re.compile(r"[A-Za-z0-9._-]{0,100}")


def _supervise(
    settings: Settings, names: list[str], namespace: str | None, topic_prefix: str, group_prefix: str
) -> int:
    """One child process per read model (Faust: one consumer group per app), restarted when it dies."""
    children: list[tuple[str, list[str]]] = []
    for i, name in enumerate(names):
        argv = [sys.executable, "-m", "cli", "worker", "--read-model", name, "--topic-prefix", topic_prefix,
                "--group-prefix", group_prefix]
        if namespace:
            argv += ["--namespace", namespace]
        if settings.worker_metrics_port:
            argv += ["--metrics-port", str(settings.worker_metrics_port + i)]
        if settings.worker_web_port is not None:
            argv += ["--web-port", str(settings.worker_web_port + i)]
        children.append((name, argv))
    policy = RestartPolicy(
        initial=settings.worker_restart_initial, maximum=settings.worker_restart_max,
        quick_seconds=settings.worker_restart_quick_seconds, give_up=settings.worker_restart_give_up,
        stop_timeout=settings.worker_stop_timeout,
    )
    return Supervisor(children, policy).run()


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
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def register(app: typer.Typer) -> None:
    """Add `worker` and `dlq` to the cdcflow command line."""
    app.command("worker")(worker)
    app.add_typer(dlq_app, name="dlq")
