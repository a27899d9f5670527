"""The event contract (cdc/contract.py, `cdcflow schema`): the committed file is current and the CI check runs on
it; the checker accepts compatible changes and names every incompatible one; real events validate against it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from pydantic import Field
from typer.testing import CliRunner

from cdc import contract
from cdc.contract import Change, compare, generate, incompatible, render
from cdc.event import Event
from cdc.schemas import PAYLOADS, TOPIC_OF_TYPE, OrderCreated, PageViewed
from cdc.settings import REPO_ROOT
from cli.main import app

Doc = dict[str, Any]


def _props(doc: Doc, model: str) -> Doc:
    props: Doc = doc["$defs"][model]["properties"]
    return props


def _changes(mutate: Callable[[Doc], None]) -> list[Change]:
    old = generate()
    new = copy.deepcopy(old)
    mutate(new)
    return compare(old, new)


# -- CI: the committed contract -------------------------------------------------------------------------------


def test_schema_check_passes_on_the_committed_contract_in_ci() -> None:
    """The CI gate: `cdcflow schema check --strict` against schemas/events.schema.json, as a real command."""
    done = subprocess.run([sys.executable, "-m", "cli", "schema", "check", "--strict"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (REPO_ROOT / contract.CONTRACT_FILE).read_text() == render(generate())


def test_the_contract_is_unchanged_by_itself() -> None:
    assert compare(generate(), generate()) == []


def test_the_contract_carries_every_type_and_its_limits() -> None:
    doc = generate()
    assert set(doc["x-cdcflow-event-types"]) == set(PAYLOADS)
    assert {name: spec["topic"] for name, spec in doc["x-cdcflow-event-types"].items()} == TOPIC_OF_TYPE
    total = _props(doc, "OrderCreated")["total"]
    assert total["x-max-digits"] == 12 and total["x-decimal-places"] == 2
    assert _props(doc, "PageViewed")["url"]["maxLength"] == 2000
    assert _props(doc, "Event")["aggregate_id"]["maxLength"] == 200
    assert _props(doc, "Event")["event_id"]["format"] == "uuid"
    assert doc["$comment"].startswith("GENERATED") and "cdcflow schema generate --write" in doc["$comment"]


# -- compatible changes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: _props(d, "PageViewed").__setitem__("session_id", {"type": "string", "maxLength": 100}),
         "PageViewed.session_id: new optional field"),
        (lambda d: _props(d, "PageViewed")["url"].__setitem__("maxLength", 4000),
         "PageViewed.url: maxLength widened from 2000 to 4000"),
        (lambda d: _props(d, "OrderCreated")["currency"].pop("pattern"),
         "OrderCreated.currency: pattern '^[A-Z]{3}$' dropped (widened)"),
        (lambda d: _props(d, "OrderCreated")["total"].__setitem__("x-max-digits", 14),
         "OrderCreated.total: x-max-digits widened from 12 to 14"),
        (lambda d: d["x-cdcflow-event-types"].__setitem__(
            "OrderReturned", {"topic": "orders", "payload": "#/$defs/OrderDelivered"}),
         "OrderReturned: new event type (topic 'orders')"),
        (lambda d: d["x-cdcflow-kafka-headers"].append("tenant"), "Kafka header tenant: added"),
    ],
)
def test_compatible_changes_pass(mutate: Callable[[Doc], None], expected: str) -> None:
    changes = _changes(mutate)
    assert [str(c) for c in changes] == [f"compatible  {expected}"]
    assert incompatible(changes) == []


def test_descriptions_and_titles_are_not_changes() -> None:
    def mutate(d: Doc) -> None:
        d["$defs"]["OrderCreated"]["description"] = "reworded"
        _props(d, "OrderCreated")["total"]["title"] = "Grand total"

    assert _changes(mutate) == []


# -- incompatible changes --------------------------------------------------------------------------------------


def _new_required(d: Doc) -> None:
    _props(d, "PageViewed")["session_id"] = {"type": "string"}
    d["$defs"]["PageViewed"]["required"].append("session_id")


def _rename(d: Doc) -> None:
    props = _props(d, "OrderShipped")
    props["carrier_name"] = props.pop("carrier")
    d["$defs"]["OrderShipped"]["required"] = ["order_id", "carrier_name", "tracking_number"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: _props(d, "OrderShipped").pop("tracking_number"), "OrderShipped.tracking_number: field removed"),
        (_rename, ("OrderShipped.carrier: field removed (renamed to carrier_name?)",
                   "OrderShipped.carrier_name: new required field")),
        (lambda d: _props(d, "PageViewed")["url"].__setitem__("type", "integer"),
         "PageViewed.url: type changed from string to integer"),
        (lambda d: _props(d, "OrderShipped").__setitem__(
            "carrier", {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 100}, {"type": "null"}]}),
         "OrderShipped.carrier: type changed from string to string|null"),
        (_new_required, "PageViewed.session_id: new required field"),
        (lambda d: d["$defs"]["PageViewed"]["required"].append("referrer"),
         "PageViewed.referrer: optional field became required"),
        (lambda d: _props(d, "PageViewed")["url"].__setitem__("maxLength", 1000),
         "PageViewed.url: maxLength narrowed from 2000 to 1000"),
        (lambda d: _props(d, "ProductCreated")["stock"].__setitem__("minimum", 1),
         "ProductCreated.stock: minimum narrowed from 0 to 1"),
        (lambda d: _props(d, "OrderCreated")["total"].__setitem__("x-decimal-places", 0),
         "OrderCreated.total: x-decimal-places narrowed from 2 to 0"),
        (lambda d: _props(d, "OrderShipped")["carrier"].__setitem__("pattern", "^[A-Z]+$"),
         "OrderShipped.carrier: new pattern '^[A-Z]+$' (narrowed)"),
        (lambda d: _props(d, "OrderCreated")["currency"].__setitem__("default", "USD"),
         "OrderCreated.currency: default changed from 'EUR' to 'USD'"),
        (lambda d: d["$defs"]["OrderItem"]["properties"]["quantity"].__setitem__("maximum", 100),
         "OrderCreated.items[].quantity: new limit maximum 100 (narrowed)"),
        (lambda d: d["$defs"]["PageViewed"].__setitem__("additionalProperties", False),
         "PageViewed: fields beyond the declared ones are now refused"),
        (lambda d: _props(d, "Event")["headers"]["additionalProperties"].__setitem__("maxLength", 64),
         "Event.headers.*: maxLength narrowed from 200 to 64"),
        (lambda d: d["x-cdcflow-event-types"].pop("OrderRefunded"), "OrderRefunded: event type removed"),
        (lambda d: d["x-cdcflow-event-types"]["PageViewed"].__setitem__("topic", "views"),
         "PageViewed: topic changed from 'clickstream' to 'views'"),
        (lambda d: d["x-cdcflow-kafka-headers"].remove("trace_id"), "Kafka header trace_id: removed"),
    ],
)
def test_incompatible_changes_are_named(mutate: Callable[[Doc], None], expected: str | tuple[str, ...]) -> None:
    bad = incompatible(_changes(mutate))
    expected = (expected,) if isinstance(expected, str) else expected
    assert [str(c) for c in bad] == [f"INCOMPATIBLE  {e}" for e in expected]


def test_a_narrowed_limit_in_the_code_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the pydantic models themselves: amounts with fewer digits, a shorter url, a new required field."""
    committed = generate()

    class NarrowOrderCreated(OrderCreated):
        total: Decimal = Field(ge=0, max_digits=10, decimal_places=2)

    NarrowOrderCreated.__name__ = "OrderCreated"

    class NarrowPageViewed(PageViewed):
        url: str = Field(min_length=1, max_length=500)
        session_id: str

    NarrowPageViewed.__name__ = "PageViewed"
    monkeypatch.setitem(PAYLOADS, "OrderCreated", NarrowOrderCreated)
    monkeypatch.setitem(PAYLOADS, "PageViewed", NarrowPageViewed)
    bad = {str(c) for c in incompatible(compare(committed, generate()))}
    assert bad == {
        "INCOMPATIBLE  OrderCreated.total: x-max-digits narrowed from 12 to 10",
        "INCOMPATIBLE  PageViewed.url: maxLength narrowed from 2000 to 500",
        "INCOMPATIBLE  PageViewed.session_id: new required field",
    }


# -- the command -----------------------------------------------------------------------------------------------


def _write(path: Path, doc: Doc) -> Path:
    path.write_text(render(doc))
    return path


def test_check_exits_1_and_names_the_incompatible_change(tmp_path: Path) -> None:
    # The committed contract allowed longer urls than the code now does: the code narrowed the limit.
    wider = generate()
    _props(wider, "PageViewed")["url"]["maxLength"] = 5000
    path = _write(tmp_path / "events.schema.json", wider)
    result = CliRunner().invoke(app, ["schema", "check", "--contract", str(path)])
    assert result.exit_code == 1, result.output
    assert "PageViewed.url: maxLength narrowed from 5000 to 2000" in result.output


def test_check_passes_a_compatible_change_and_strict_asks_to_regenerate(tmp_path: Path) -> None:
    older = generate()
    _props(older, "PageViewed").pop("referrer")  # the code added an optional field since
    path = _write(tmp_path / "events.schema.json", older)
    result = CliRunner().invoke(app, ["schema", "check", "--contract", str(path)])
    assert result.exit_code == 0, result.output
    assert "PageViewed.referrer: new optional field" in result.output
    strict = CliRunner().invoke(app, ["schema", "check", "--strict", "--contract", str(path)])
    assert strict.exit_code == 1 and "cdcflow schema generate --write" in strict.output


def test_generate_write_refuses_an_incompatible_change_without_the_flag(tmp_path: Path) -> None:
    wider = generate()
    _props(wider, "PageViewed")["url"]["maxLength"] = 5000
    path = _write(tmp_path / "events.schema.json", wider)
    refused = CliRunner().invoke(app, ["schema", "generate", "--write", "--contract", str(path)])
    assert refused.exit_code == 1 and "maxLength narrowed" in refused.output
    assert json.loads(path.read_text()) == wider
    forced = CliRunner().invoke(app, ["schema", "generate", "--write", "--allow-incompatible", "--contract", str(path)])
    assert forced.exit_code == 0, forced.output
    assert path.read_text() == render(generate())


def test_a_missing_or_foreign_contract_is_exit_2(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["schema", "check", "--contract", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "cdcflow schema generate --write" in missing.output
    (tmp_path / "other.json").write_text('{"type": "object"}')
    foreign = CliRunner().invoke(app, ["schema", "check", "--contract", str(tmp_path / "other.json")])
    assert foreign.exit_code == 2 and "not a cdcflow event contract" in foreign.output


# -- the contract validates what is on the wire ------------------------------------------------------------------


def _event(type_: str, payload: dict[str, Any], version: int | None = 1) -> Event:
    return Event.create(topic=TOPIC_OF_TYPE[type_], aggregate_type="Order", aggregate_id="o-1", type=type_,
                        payload=payload, version=version, source_service="order")


def test_real_events_validate_against_the_contract_and_bad_ones_do_not() -> None:
    validator = jsonschema_rs.validator_for(generate())
    good = [
        _event("OrderCreated", {"order_id": "o-1", "customer_id": "c-1", "total": "12.50",
                                "items": [{"product_id": "p-1", "quantity": 2, "unit_price": "6.25"}]}),
        _event("OrderShipped", {"order_id": "o-1", "carrier": "DHL", "tracking_number": "t-1"}, 3),
        _event("PageViewed", {"user_id": "u-1", "url": "/p/1", "timestamp": "2026-01-31T12:00:00Z"}, None),
    ]
    for event in good:
        errors = [e.message for e in validator.iter_errors(json.loads(event.to_json()))]
        assert errors == [], (event.type, errors)
    wire = json.loads(good[1].to_json())
    too_long = {**wire, "payload": {**wire["payload"], "carrier": "x" * 101}}
    missing = {**wire, "payload": {"order_id": "o-1", "carrier": "DHL"}}
    extra_envelope = {**wire, "published": True}
    for bad in (too_long, missing, extra_envelope):
        assert not validator.is_valid(bad), bad
