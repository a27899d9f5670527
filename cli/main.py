"""The `cdcflow` command line: a thin shell over functions the tests call directly."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from cdc.credentials import Role
from cdc.errors import CdcError
from cdc.logs import configure_logging
from cdc.settings import load_settings
from cli import dlq, replay, serve, tail, trace, usage, worker
from cli.infra import app as infra_app
from cli.schema import app as schema_app
from infra.errors import InfraError

app = typer.Typer(
    help="cdcflow: MongoDB outbox -> change streams -> Kafka -> idempotent read models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(infra_app, name="infra")
app.add_typer(schema_app, name="schema")

for register in (tail.register, worker.register, dlq.register, replay.register, usage.register, serve.register,
                 trace.register):
    register(app)


def version() -> str:
    """The installed cdcflow's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("cdcflow")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cdcflow {version()}")
        raise typer.Exit()


#: The role (cdc/credentials.py) each command runs as: which of the local servers' generated users it gets.
#: `serve` picks the role of the service it runs (cli/serve.py); `infra` and `demo` set up and run everything.
COMMAND_ROLES: dict[str, Role] = {
    "tail": "tailer",
    "resnapshot": "tailer",  # reads the service databases, writes to Kafka
    "status": "tailer",  # reads outboxes, tailer state and consumer offsets
    "worker": "worker",
    "replay": "worker",
    "dlq": "worker",
    "query": "reader",
    # one event across every store: outboxes and tailer state, Kafka, each read model, the dead letters
    "trace": "admin",
    "infra": "admin",
    "demo": "admin",
}


@app.callback()
def _root(
    ctx: typer.Context,
    log_level: Annotated[str | None, typer.Option(help="Log level (default from CDCFLOW_LOG_LEVEL).")] = None,
    show_version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    settings = load_settings()
    configure_logging(log_level or settings.log_level, settings.log_json)
    # An explicit CDCFLOW_ROLE wins (scripts, tests against their own databases); else the command's own role.
    role = COMMAND_ROLES.get(ctx.invoked_subcommand or "")
    ctx.obj = settings.as_role(role) if role is not None and "role" not in settings.model_fields_set else settings


@app.command()
def demo(
    ctx: typer.Context,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of traffic.")] = 30.0,
    rate: Annotated[float, typer.Option(min=1, help="Requests per second against the services.")] = 40.0,
    keep_servers: Annotated[bool, typer.Option(help="Leave the local servers running at the end.")] = False,
) -> None:
    """Everything end to end on the local servers: services, tailer, workers, traffic, then the read models."""
    from cli.demo import run_demo

    run_demo(ctx.obj, duration=duration, rate=rate, keep_servers=keep_servers)


def main() -> None:
    """Console-script entry point: expected errors become one clear line and exit code 1."""
    try:
        app()
    except (InfraError, CdcError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    except ValidationError as exc:
        typer.secho(f"error: bad setting: {exc.errors()[0].get('loc')}: {exc.errors()[0].get('msg')}",
                    fg="red", err=True)
        sys.exit(2)
