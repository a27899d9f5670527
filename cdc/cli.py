"""The `cdcflow` command line: a thin shell over functions the tests call directly."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from cdc.errors import CdcError
from cdc.logs import configure_logging
from cdc.settings import load_settings
from infra.cli import app as infra_app
from infra.errors import InfraError

app = typer.Typer(
    help="cdcflow: MongoDB outbox -> change streams -> Kafka -> idempotent read models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(infra_app, name="infra")

# Each package registers its own commands (keep one line per package, in this block).
# -- commands --
from cdc.tail_cli import register as _tail; _tail(app)  # noqa: E402, E702, I001
from streams.cli import register as _streams; _streams(app)  # noqa: E402, E702, I001
from streams.replay_cli import register as _replay; _replay(app)  # noqa: E402, E702, I001
from cdc.usage_cli import register as _usage; _usage(app)  # noqa: E402, E702, I001  (before producers)
from producers.cli import register as _producers; _producers(app)  # noqa: E402, E702, I001
# -- end commands --


@app.callback()
def _root(
    ctx: typer.Context,
    log_level: Annotated[str | None, typer.Option(help="Log level (default from CDCFLOW_LOG_LEVEL).")] = None,
) -> None:
    settings = load_settings()
    configure_logging(log_level or settings.log_level, settings.log_json)
    ctx.obj = settings


@app.command()
def demo(
    ctx: typer.Context,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of traffic.")] = 30.0,
    rate: Annotated[float, typer.Option(min=1, help="Requests per second against the services.")] = 40.0,
    keep_servers: Annotated[bool, typer.Option(help="Leave the local servers running at the end.")] = False,
) -> None:
    """Everything end to end on the local servers: services, tailer, workers, traffic, then the read models."""
    from infra.demo import run_demo

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
