"""Everyday commands: `cdcflow query ...` over the read models and `cdcflow status`.

Readable tables by default, `--json` for scripts. Exit codes: 0 ok; 1 unknown id, a store that is down, or (status)
lag/backlog over the thresholds; 2 bad parameters (a date that does not parse, a bad window).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cdc.settings import Settings

T = TypeVar("T")

query_app = typer.Typer(help="Query the read models (tables by default, --json for scripts).", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NamespaceOpt = Annotated[
    str | None, typer.Option(help="Read models' namespace (default CDCFLOW_SINK_NAMESPACE).", show_default=False)
]
LimitOpt = Annotated[int, typer.Option(min=1, max=100, help="How many results at most.")]
DayOpt = Annotated[str | None, typer.Option(help="UTC day, YYYY-MM-DD (default: today).", show_default=False)]


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _day(text: str | None) -> date | None:
    from sinks.queries import parse_day

    if text is None:
        return None
    try:
        return parse_day(text)
    except ValueError as exc:
        _fail(str(exc), 2)


def _time(text: str | None) -> datetime | None:
    from sinks.queries import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        _fail(str(exc), 2)


def _run(ctx: typer.Context, namespace: str | None, query: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Run one query with its own read models; NotFound/down store -> exit 1, bad query -> exit 2."""
    from sinks.base import SinkError
    from sinks.queries import BadQuery, NotFound, ReadModels

    settings: Settings = ctx.obj
    try:
        with ReadModels(settings, namespace) as models:
            return query(models)
    except NotFound as exc:
        _fail(exc.reason, 1)
    except BadQuery as exc:
        _fail(str(exc), 2)
    except ValueError as exc:  # a namespace that is not a plain name
        _fail(str(exc), 2)
    except SinkError as exc:
        _fail(f"read model unavailable: {exc}", 1)


def _emit(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], list[Any]]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
        return
    console = Console()
    for item in render(data):
        console.print(item)


# -- rendering (pure: data -> rich renderables) -----------------------------------------------------------


def order_tables(data: dict[str, Any]) -> list[Any]:
    """An order view row: a field/value table, then its items."""
    head = Table(title=f"order {data['order_id']}", show_header=False)
    head.add_column("field", style="bold")
    head.add_column("value")
    for name in ("customer_id", "status", "total", "currency", "paid_amount", "carrier", "tracking_number",
                 "refunded_amount", "cancel_reason", "version", "created_at", "updated_at"):
        value = data.get(name)
        if value is not None:
            head.add_row(name, str(value))
    items = Table(title="items")
    for column in ("product_id", "quantity", "unit_price"):
        items.add_column(column, justify="right" if column != "product_id" else "left")
    for item in data.get("items", []):
        items.add_row(str(item["product_id"]), str(item["quantity"]), str(item["unit_price"]))
    return [head, items]


def recommendations_tables(data: dict[str, Any]) -> list[Any]:
    table = Table(title=f"recommendations for customer {data['customer_id']}")
    table.add_column("product_id")
    table.add_column("bought by (customers)", justify="right")
    for rec in data["recommendations"]:
        table.add_row(str(rec["product_id"]), str(rec["customers"]))
    bought = ", ".join(data["purchased"]) or "-"
    note = "" if data["recommendations"] else "\n(no recommendations yet: no other customer shares a purchase)"
    return [f"purchased: {bought}{note}", table]


def also_bought_tables(data: dict[str, Any]) -> list[Any]:
    table = Table(title=f"customers who bought {data['product_id']} also bought")
    table.add_column("product_id")
    table.add_column("customers", justify="right")
    for row in data["also_bought"]:
        table.add_row(str(row["product_id"]), str(row["customers"]))
    return [table]


def clicks_tables(data: dict[str, Any]) -> list[Any]:
    window = data["day"] if "day" in data else f"{data['from']} .. {data['to']}"
    table = Table(title=f"page views of {data['user_id']} ({window}): {len(data['views'])}")
    for column in ("time (UTC)", "url", "product_id", "referrer"):
        table.add_column(column)
    for v in data["views"]:
        table.add_row(str(v["ts"]), str(v["url"]), str(v["product_id"] or "-"), str(v["referrer"] or "-"))
    if data.get("next"):
        return [table, f"more: --after {data['next']}"]
    return [table]


def top_products_tables(data: dict[str, Any]) -> list[Any]:
    table = Table(title=f"top products on {data['day']}")
    table.add_column("#", justify="right")
    table.add_column("product_id")
    table.add_column("views", justify="right")
    for rank, row in enumerate(data["products"], start=1):
        table.add_row(str(rank), str(row["product_id"]), str(row["views"]))
    return [table]


def status_tables(data: dict[str, Any]) -> list[Any]:
    """`cdcflow status` as tables (from `Status.to_json()`)."""
    from cli.status import format_age

    def age(value: float | None) -> str:
        return "-" if value is None else format_age(value)

    out = Table(title="outboxes and tailer")
    numbers = ("backlog", "oldest", "checkpoint age", "dead letters")
    for column in ("service", "database", "backlog", "oldest", "leader", "checkpoint age", "dead letters"):
        out.add_column(column, justify="right" if column in numbers else "left")
    for o in data["outboxes"]:
        if o["error"]:
            out.add_row(o["service"], o["database"], "[red]error[/red]", "", o["error"], "", "")
            continue
        leader = o["leader"] or "-"
        if o["leader"] and not o["lease_live"]:
            leader += " (expired)"
        out.add_row(o["service"], o["database"], str(o["backlog"]), age(o["oldest_age_seconds"]), leader,
                    age(o["checkpoint_age_seconds"]), str(o.get("dead_letters", 0)))
    lag = Table(title="read models")
    for column in ("read model", "topic", "consumer group", "lag"):
        lag.add_column(column, justify="right" if column == "lag" else "left")
    for rm in data["read_models"]:
        value = f"[red]{rm['error']}[/red]" if rm["error"] else str(rm["lag"])
        if not rm["error"] and not rm["committed"] and rm["lag"]:
            value += " (never committed)"
        lag.add_row(rm["read_model"], rm["topic"], rm["group"], value)
    dlq = Table(title="dead letters")
    for column in ("topic", "held", "not replayed"):
        dlq.add_column(column, justify="left" if column == "topic" else "right")
    for d in data["dead_letters"]:
        if d["error"]:
            dlq.add_row(d["topic"], "[red]error[/red]", d["error"])
        else:
            dlq.add_row(d["topic"], str(d["total"]), str(d["unreplayed"]))
    lines: list[Any] = [out, lag, dlq]
    lines.extend(f"[red]PROBLEM[/red] {p}" for p in data["problems"])
    lines.extend(f"[yellow]warning[/yellow] {w}" for w in data["warnings"])
    lines.append("[green]status: OK[/green]" if data["ok"] else "[red]status: FAILING[/red] (exit code 1)")
    return lines


# -- commands ---------------------------------------------------------------------------------------------


@query_app.command("order")
def query_order(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="Order id.")],
    as_json: JsonOpt = False,
    namespace: NamespaceOpt = None,
) -> None:
    """An order's current state from the order view (Postgres)."""
    from sinks import queries

    data = _run(ctx, namespace, lambda m: queries.order(m, order_id))
    _emit(data, as_json, order_tables)


@query_app.command("recommendations")
def query_recommendations(
    ctx: typer.Context,
    customer_id: Annotated[str, typer.Argument(help="Customer id.")],
    limit: LimitOpt = 5,
    as_json: JsonOpt = False,
    namespace: NamespaceOpt = None,
) -> None:
    """Products others bought with what this customer bought (purchase graph, Neo4j)."""
    from sinks import queries

    data = _run(ctx, namespace, lambda m: queries.recommendations(m, customer_id, limit))
    _emit(data, as_json, recommendations_tables)


@query_app.command("also-bought")
def query_also_bought(
    ctx: typer.Context,
    product_id: Annotated[str, typer.Argument(help="Product id.")],
    limit: LimitOpt = 5,
    as_json: JsonOpt = False,
    namespace: NamespaceOpt = None,
) -> None:
    """Customers who bought this product also bought (purchase graph, Neo4j)."""
    from sinks import queries

    data = _run(ctx, namespace, lambda m: queries.also_bought(m, product_id, limit))
    _emit(data, as_json, also_bought_tables)


@query_app.command("clicks")
def query_clicks(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="User id.")],
    day: DayOpt = None,
    start: Annotated[str | None, typer.Option("--from", help="Window start (ISO-8601), with --to.")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Window end, exclusive (ISO-8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Page size: how many views at most.")] = 100,
    after: Annotated[
        str | None, typer.Option(help="Continue after this cursor (the `next` of the previous page).")
    ] = None,
    as_json: JsonOpt = False,
    namespace: NamespaceOpt = None,
) -> None:
    """A user's page views on a day (or a window of at most 31 days), oldest first, a page at a time
    (clickstream, Cassandra)."""
    from sinks import queries

    d, s, e = _day(day), _time(start), _time(end)
    data = _run(ctx, namespace, lambda m: queries.clicks(m, user_id, day=d, start=s, end=e, limit=limit, after=after))
    _emit(data, as_json, clicks_tables)


@query_app.command("top-products")
def query_top_products(
    ctx: typer.Context,
    day: DayOpt = None,
    limit: LimitOpt = 10,
    as_json: JsonOpt = False,
    namespace: NamespaceOpt = None,
) -> None:
    """The day's most viewed products (clickstream, Cassandra)."""
    from sinks import queries

    d = _day(day)
    data = _run(ctx, namespace, lambda m: queries.top_products(m, d, limit))
    _emit(data, as_json, top_products_tables)


def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Outbox backlog, tailer leader and checkpoint age, consumer lag per read model, dead letters.

    Exit code 1 when lag or backlog is over the CDCFLOW_STATUS_MAX_* thresholds (for scripts and probes).
    """
    from cli.status import gather_status

    settings: Settings = ctx.obj
    report = gather_status(settings)
    _emit(report.to_json(), as_json, status_tables)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `query` and `status` to the cdcflow command line."""
    app.add_typer(query_app, name="query")
    app.command("status")(status)
