"""`cdcflow serve NAME` (the example services and the read API) and `cdcflow load`.

`APP_FACTORIES` maps a name to "module:function" (a factory `f(settings) -> FastAPI`), imported only when that
app is served.
"""

from __future__ import annotations

import importlib
import json
from typing import Annotated, Any, Protocol

import typer

from cdc.credentials import Role
from cdc.http_api import ApiKind, InsecureBindError, check_bind
from cdc.settings import Settings

APP_FACTORIES: dict[str, str] = {
    "product": "producers.product:create_app",
    "order": "producers.order:create_app",
    "clickstream": "producers.clickstream:create_app",
    "read-api": "sinks.read_api:create_app",
}
#: Default port of a service: a Settings attribute name (`cdcflow serve` uses it when --port is not given).
PORT_SETTINGS: dict[str, str] = {
    "product": "product_port",
    "order": "order_port",
    "clickstream": "clickstream_port",
    "read-api": "read_api_port",
}
DEFAULT_PORT = 8000
#: The role (credentials on the local servers) each app runs as: a service its own database user only.
APP_ROLES: dict[str, Role] = {"product": "product", "order": "order", "clickstream": "clickstream",
                              "read-api": "reader"}


class AppFactory(Protocol):
    def __call__(self, settings: Settings) -> Any: ...


def app_factory(name: str) -> AppFactory:
    """The factory registered for `name`; KeyError for an unknown name."""
    module_name, _, attr = APP_FACTORIES[name].partition(":")
    factory: AppFactory = getattr(importlib.import_module(module_name), attr)
    return factory


def default_port(settings: Settings, name: str) -> int:
    attr = PORT_SETTINGS.get(name)
    return int(getattr(settings, attr)) if attr else DEFAULT_PORT


def register(app: typer.Typer) -> None:
    """Add `serve` and `load` to the cdcflow command line."""

    @app.command()
    def serve(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="Service to run: " + " | ".join(APP_FACTORIES))],
        host: Annotated[
            str | None, typer.Option(help="Interface to bind (default CDCFLOW_SERVICES_HOST).")
        ] = None,
        port: Annotated[int | None, typer.Option(help="Port (default: the service's port setting).")] = None,
    ) -> None:
        """Run an example service or the read API (FastAPI, uvicorn).

        Beyond loopback only with its API key configured (CDCFLOW_WRITE_API_KEY, or CDCFLOW_READ_API_KEY for
        the read API): otherwise it refuses to start (exit code 2)."""
        import uvicorn

        settings: Settings = ctx.obj
        if name not in APP_FACTORIES:
            raise typer.BadParameter(
                f"unknown service {name!r}; choose one of: {', '.join(APP_FACTORIES)}", param_hint="NAME"
            )
        if "role" not in settings.model_fields_set:  # an explicit CDCFLOW_ROLE wins
            settings = settings.as_role(APP_ROLES[name])
        bind = host or settings.services_host
        try:
            check_bind(settings, ApiKind.READ if name == "read-api" else ApiKind.WRITE, bind, name)
        except InsecureBindError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
        application = app_factory(name)(settings)
        uvicorn.run(
            application,
            host=bind,
            port=port or default_port(settings, name),
            log_config=None,
            access_log=False,
        )

    @app.command()
    def load(
        ctx: typer.Context,
        rate: Annotated[float, typer.Option(min=0.1, help="Target requests per second.")] = 50.0,
        duration: Annotated[float, typer.Option(min=0.1, help="Seconds to run.")] = 30.0,
        workers: Annotated[int, typer.Option(min=1, help="Concurrent requests at most.")] = 32,
        seed: Annotated[int | None, typer.Option(help="Random seed (repeatable traffic).")] = None,
        product_url: Annotated[str | None, typer.Option(help="Product service base URL.")] = None,
        order_url: Annotated[str | None, typer.Option(help="Order service base URL.")] = None,
        clickstream_url: Annotated[str | None, typer.Option(help="Clickstream service base URL.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Realistic traffic against the services (browse, buy, order lifecycle); prints achieved rates."""
        import httpx

        from producers.load import Targets, run_load

        settings: Settings = ctx.obj
        base = Targets.from_settings(settings)
        targets = Targets(
            product=product_url or base.product,
            order=order_url or base.order,
            clickstream=clickstream_url or base.clickstream,
            headers=base.headers,  # the write key, when one is configured
        )
        try:
            report = run_load(targets, rate, duration, seed=seed, workers=workers)
        except httpx.HTTPStatusError as exc:
            hint = " (is CDCFLOW_WRITE_API_KEY the services' key?)" if exc.response.status_code in (401, 403) else ""
            typer.secho(
                f"error: the product service refused to seed the catalogue: {exc.response.status_code}{hint}",
                fg="red",
                err=True,
            )
            raise typer.Exit(1) from None
        except httpx.HTTPError as exc:
            typer.secho(
                f"error: cannot reach the services ({exc}); start them with `cdcflow serve NAME`",
                fg="red",
                err=True,
            )
            raise typer.Exit(1) from None
        typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.render())
