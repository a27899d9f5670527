"""`cdcflow query ...` and the query functions behind it, against the real stores (a namespace of their own)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from cdc.settings import Settings
from cli.main import app
from sinks import queries
from sinks.queries import BadQuery, NotFound, ReadModels
from tests.streams_support import REPO
from tests.usage_support import Seeded, seeded_read_models

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(scope="module")
def seeded(settings: Settings, postgres: object, neo4j: object, cassandra: object) -> Iterator[Seeded]:
    with seeded_read_models(settings) as s:
        yield s


@pytest.fixture
def models(settings: Settings, seeded: Seeded) -> Iterator[ReadModels]:
    with ReadModels(settings, seeded.namespace) as m:
        yield m


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# -- query functions ---------------------------------------------------------------------------------------


def test_order_is_the_order_view_row(models: ReadModels) -> None:
    row = queries.order(models, "o-c1")
    assert row["order_id"] == "o-c1"
    assert row["customer_id"] == "c1"
    assert row["status"] == "paid"
    assert row["version"] == 2
    assert [i["product_id"] for i in row["items"]] == ["pA", "pB"]


def test_unknown_ids_raise_not_found_with_a_reason(models: ReadModels) -> None:
    with pytest.raises(NotFound, match="order 'nope' is not in the order view"):
        queries.order(models, "nope")
    with pytest.raises(NotFound, match="customer 'nobody'"):
        queries.recommendations(models, "nobody")
    with pytest.raises(NotFound, match="product 'pZ'"):
        queries.also_bought(models, "pZ")
    with pytest.raises(NotFound, match="user 'nobody' has no page views"):
        queries.clicks(models, "nobody")


def test_a_known_user_on_a_quiet_day_has_no_clicks_but_is_found(models: ReadModels, seeded: Seeded) -> None:
    quiet = seeded.day.replace(year=seeded.day.year - 1)
    assert queries.clicks(models, "u1", day=quiet)["views"] == []


def test_recommendations_and_also_bought_come_from_the_graph(models: ReadModels) -> None:
    # c1 bought pA, pB; c2 (pA) also bought pC; c3 (pB) also bought pC and pD.
    rec = queries.recommendations(models, "c1")
    assert rec["purchased"] == ["pA", "pB"]
    assert rec["recommendations"] == [{"product_id": "pC", "customers": 2}, {"product_id": "pD", "customers": 1}]
    also = queries.also_bought(models, "pD")
    assert also["also_bought"] == [{"product_id": "pB", "customers": 1}, {"product_id": "pC", "customers": 1}]


def test_clicks_by_day_and_by_window(models: ReadModels, seeded: Seeded) -> None:
    day = queries.clicks(models, "u1", day=seeded.day)
    assert [v["product_id"] for v in day["views"]] == ["pA", "pB", "pA"]
    start = datetime(seeded.day.year, seeded.day.month, seeded.day.day, 12, 1, tzinfo=UTC)
    window = queries.clicks(models, "u1", start=start, end=start + timedelta(days=1))
    assert [v["product_id"] for v in window["views"]] == ["pB", "pA", "pC"]  # crosses midnight
    with pytest.raises(NotFound):  # nobody by that id has a page view
        queries.clicks(models, "someone-else", day=seeded.day)
    with pytest.raises(BadQuery):
        queries.clicks(models, "u1", start=start)  # 'to' missing
    with pytest.raises(BadQuery):
        queries.clicks(models, "u1", start=start, end=start + timedelta(days=40))


def test_top_products_of_the_day(models: ReadModels, seeded: Seeded) -> None:
    top = queries.top_products(models, seeded.day)
    assert [(p["product_id"], p["views"]) for p in top["products"]] == seeded.top


# -- the command line --------------------------------------------------------------------------------------


def test_cli_json_output_is_the_query_result(seeded: Seeded) -> None:
    code, out, _ = cli("query", "order", "o-c2", "--json", "--namespace", seeded.namespace)
    assert code == 0
    assert json.loads(out)["customer_id"] == "c2"
    code, out, _ = cli("query", "top-products", "--day", seeded.day.isoformat(), "--json",
                       "--namespace", seeded.namespace)
    assert code == 0
    assert [(p["product_id"], p["views"]) for p in json.loads(out)["products"]] == seeded.top
    code, out, _ = cli("query", "clicks", "u1", "--day", seeded.day.isoformat(), "--json",
                       "--namespace", seeded.namespace)
    assert code == 0 and len(json.loads(out)["views"]) == seeded.views_on_day


def test_cli_tables_by_default(seeded: Seeded) -> None:
    code, out, _ = cli("query", "recommendations", "c1", "--namespace", seeded.namespace)
    assert code == 0
    assert "recommendations for customer c1" in out and "pC" in out and "pD" in out
    code, out, _ = cli("query", "order", "o-c3", "--namespace", seeded.namespace)
    assert code == 0 and "order o-c3" in out and "pD" in out and "paid" in out


def test_cli_unknown_id_exits_1_with_a_message_on_stderr(seeded: Seeded) -> None:
    for args in (["order", "nope"], ["recommendations", "nobody"], ["also-bought", "pZ"], ["clicks", "nobody"]):
        code, out, err = cli("query", *args, "--namespace", seeded.namespace)
        assert code == 1, args
        assert err.startswith("error: ") and repr(args[1]) in err, err
        assert out == ""


def test_cli_bad_date_exits_2(seeded: Seeded) -> None:
    code, _, err = cli("query", "clicks", "u1", "--day", "2026-02-30", "--namespace", seeded.namespace)
    assert code == 2 and "bad date '2026-02-30'" in err
    code, _, err = cli("query", "top-products", "--day", "yesterday")
    assert code == 2 and "expected YYYY-MM-DD" in err
    code, _, err = cli("query", "clicks", "u1", "--from", "2026-01-02", "--to", "2026-01-01",
                       "--namespace", seeded.namespace)
    assert code == 2 and "must be after" in err


def test_console_script_gives_no_traceback(settings: Settings, seeded: Seeded) -> None:
    """The real `cdcflow` entry point: exit code 1 and one line, not a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "query", "order", "nope", "--namespace", seeded.namespace],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "order 'nope' is not in the order view" in proc.stderr
