"""`cdcflow worker`: a thin shell over streams.app, and the supervisor of one process per read model."""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

from cdc.logs import get_logger
from cdc.settings import Settings
from cli.supervisor import RestartPolicy, Supervisor
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


def register(app: typer.Typer) -> None:
    """Add `worker` to the cdcflow command line."""
    app.command("worker")(worker)
