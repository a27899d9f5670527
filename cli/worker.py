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
    topic: Annotated[
        str | None, typer.Option(help="Source Kafka topic, taken as is (default: <topic prefix><the read model's>).")
    ] = None,
    group_id: Annotated[
        str | None,
        typer.Option(help="Consumer group, taken as is (default: <CDCFLOW_KAFKA_GROUP_PREFIX>cdcflow.<read model>).")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Sink namespace: schema/keyspace/label prefix (default: the live one).")
    ] = None,
    topic_prefix: Annotated[
        str | None,
        typer.Option(help="Prefix of the Kafka topics, e.g. 'staging.' (their .dlq topics follow; default "
                          "CDCFLOW_KAFKA_TOPIC_PREFIX).", show_default=False),
    ] = None,
    group_prefix: Annotated[
        str | None,
        typer.Option(help="Prefix of the consumer groups: <prefix><read model> (default: "
                          "<CDCFLOW_KAFKA_GROUP_PREFIX, else the topic prefix>cdcflow.).", show_default=False),
    ] = None,
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
    for prefix in (topic_prefix, group_prefix):
        if prefix is not None and _PREFIX.fullmatch(prefix) is None:
            raise typer.BadParameter("prefixes are letters, digits, '.', '_' and '-' (at most 100)")
    if topic_prefix is not None:
        settings = settings.model_copy(update={"kafka_topic_prefix": topic_prefix})
    if metrics_port is not None:
        settings = settings.model_copy(update={"worker_metrics_port": metrics_port})
    if web_port is not None:
        settings = settings.model_copy(update={"worker_web_port": web_port})
    if read_model is None:
        if topic or group_id:
            raise typer.BadParameter("--topic/--group-id need --read-model")
        raise typer.Exit(_supervise(settings, list(READ_MODELS), namespace, group_prefix))
    if read_model not in READ_MODELS:
        raise typer.BadParameter(f"unknown read model {read_model!r}; known: {', '.join(READ_MODELS)}")
    from streams.app import WorkerSpec, run_worker

    if group_id is None and group_prefix is not None:
        group_id = group_prefix + read_model  # as before the settings had prefixes: `--group-prefix X` is X<name>
    spec = WorkerSpec.of(settings, read_model, topic=topic, group_id=group_id, namespace=namespace)
    run_worker(settings, spec)


_PREFIX = re.compile(r"[A-Za-z0-9._-]{0,100}")


def _supervise(settings: Settings, names: list[str], namespace: str | None, group_prefix: str | None) -> int:
    """One child process per read model (Faust: one consumer group per app), restarted when it dies."""
    children: list[tuple[str, list[str]]] = []
    for i, name in enumerate(names):
        argv = [sys.executable, "-m", "cli", "worker", "--read-model", name,
                "--topic-prefix", settings.kafka_topic_prefix]
        if group_prefix is not None:
            argv += ["--group-prefix", group_prefix]
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
