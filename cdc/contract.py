"""The event contract: a JSON Schema generated from `cdc/event.py` and `cdc/schemas.py`, and the compatibility
check of the code against the committed one (`cdcflow schema check`, run in CI).

The contract (`schemas/events.schema.json`) describes the value of every record on the cdcflow topics (the
envelope, with the payload of its `type`), every limit the code enforces included: string lengths, patterns,
number bounds, decimal digits (`x-max-digits`, `x-decimal-places`, which JSON Schema has no keyword for),
required fields. Consumers in any language can validate against it.

A change is *compatible* when every event valid under the committed contract is still valid under the new one
and a consumer written against the committed contract still finds what it reads:
- incompatible: an event type removed or moved to another topic, a field removed (or renamed: removed + added),
  a type changed (a type no longer accepted, or a new one consumers do not expect, such as null), a new required
  field, an optional field made required or a required one optional, a narrowed limit (a shorter maxLength, a
  larger minLength, a lower maximum, a higher minimum, fewer digits, a new or changed pattern or format, enum
  values removed, extra fields forbidden), a changed default, a Kafka header removed;
- compatible: a new optional field, a new event type, a new header, a widened limit (a longer maxLength, a
  pattern dropped …), changed descriptions.
Anything else the checker does not understand counts as incompatible, so it errs on the side of failing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cdc.event import FORWARDED_HEADERS, H_EVENT_ID, H_TYPE, H_VERSION, SCHEMA_VERSION, Event
from cdc.schemas import PAYLOADS, TOPIC_OF_TYPE, OrderItem

#: Where the committed contract lives, relative to the repository.
CONTRACT_FILE = Path("schemas") / "events.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
GENERATED_NOTE = (
    "GENERATED from cdc/event.py and cdc/schemas.py by `cdcflow schema generate --write`: do not edit by hand. "
    "`cdcflow schema check` (run in CI by tests/unit/test_contract.py) fails on an incompatible change of the "
    "code against this file."
)
#: Keywords that describe and never constrain: changing them is always compatible.
ANNOTATIONS = frozenset({"title", "description", "examples", "$comment", "deprecated", "readOnly", "writeOnly"})


class ContractError(ValueError):
    """The committed contract cannot be read (missing, not JSON, not a cdcflow contract)."""


# -- generation ---------------------------------------------------------------------------------------------


def _decimal_limits(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Add `x-max-digits` / `x-decimal-places` to the decimal fields of `model`'s schema (JSON Schema has no such
    keyword, pydantic writes none, yet an amount with more digits is refused)."""
    for name, info in model.model_fields.items():
        if info.annotation is not Decimal:
            continue
        prop = schema.get("properties", {}).get(name)
        if prop is None:
            continue
        for meta in info.metadata:
            digits = getattr(meta, "max_digits", None)
            places = getattr(meta, "decimal_places", None)
            if digits is not None:
                prop["x-max-digits"] = digits
            if places is not None:
                prop["x-decimal-places"] = places


def _models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = [Event, *PAYLOADS.values()]
    seen: list[type[BaseModel]] = []
    for model in models:
        if model not in seen:
            seen.append(model)
    return seen


def generate() -> dict[str, Any]:
    """The contract of the code as it is now (a JSON-ready dict)."""
    models: list[type[BaseModel]] = [*_models(), OrderItem]  # OrderItem: nested in OrderCreated
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top["$defs"]

    def ref(model: type[BaseModel]) -> str:
        return str(refs[(model, "validation")]["$ref"])

    def definition(model: type[BaseModel]) -> dict[str, Any]:
        found: dict[str, Any] = defs[ref(model).removeprefix("#/$defs/")]
        return found

    for model in models:
        _decimal_limits(model, definition(model))
    # Limits that validators enforce and pydantic cannot describe.
    definition(Event)["properties"]["event_id"]["format"] = "uuid"
    definition(PAYLOADS["StockAdjusted"])["properties"]["change"]["not"] = {"const": 0}
    types = {
        name: {"topic": TOPIC_OF_TYPE[name], "payload": ref(model)} for name, model in sorted(PAYLOADS.items())
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$comment": GENERATED_NOTE,
        "title": "cdcflow event",
        "description": (
            "The value of every record on the cdcflow topics (JSON; the Kafka key is aggregate_id): the envelope "
            "(Event) with the payload of its type. x-cdcflow-event-types names each type's topic and payload."
        ),
        "x-cdcflow-schema-version": SCHEMA_VERSION,
        "x-cdcflow-kafka-headers": [H_EVENT_ID, H_TYPE, H_VERSION, *FORWARDED_HEADERS],
        "x-cdcflow-event-types": types,
        "allOf": [
            {"$ref": "#/$defs/Event"},
            *(
                {
                    "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                    "then": {"properties": {"payload": {"$ref": spec["payload"]}}},
                }
                for name, spec in types.items()
            ),
        ],
        "$defs": dict(sorted(defs.items())),
    }


def render(contract: Mapping[str, Any]) -> str:
    """The contract as the committed file holds it (stable: sorted keys, 2-space indent, final newline)."""
    return json.dumps(contract, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load(path: Path) -> dict[str, Any]:
    """The committed contract at `path`; ContractError when it is missing or not a cdcflow contract."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractError(f"no contract at {path}: create it with `cdcflow schema generate --write`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"cannot read the contract {path}: {exc}") from None
    if not isinstance(data, dict) or "x-cdcflow-event-types" not in data or "$defs" not in data:
        raise ContractError(f"{path} is not a cdcflow event contract (no x-cdcflow-event-types / $defs)")
    return data


# -- compatibility --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One difference between the committed contract and the new one."""

    where: str
    what: str
    compatible: bool

    def __str__(self) -> str:
        return f"{'compatible' if self.compatible else 'INCOMPATIBLE'}  {self.where}: {self.what}"


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Every change from contract `old` (committed) to `new` (the code), each marked compatible or not."""
    return list(_Comparer(old, new).run())


def incompatible(changes: list[Change]) -> list[Change]:
    """The incompatible ones."""
    return [c for c in changes if not c.compatible]


def _fmt(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)


class _Comparer:
    def __init__(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        self.old = old
        self.new = new
        self._visiting: set[tuple[str, str]] = set()

    def run(self) -> Iterator[Change]:
        old_version, new_version = self.old.get("x-cdcflow-schema-version"), self.new.get("x-cdcflow-schema-version")
        if old_version != new_version:
            yield Change("schema_version", f"{_fmt(old_version)} -> {_fmt(new_version)}", True)
        old_headers = list(self.old.get("x-cdcflow-kafka-headers", []))
        new_headers = list(self.new.get("x-cdcflow-kafka-headers", []))
        for header in old_headers:
            if header not in new_headers:
                yield Change(f"Kafka header {header}", "removed", False)
        for header in new_headers:
            if header not in old_headers:
                yield Change(f"Kafka header {header}", "added", True)
        yield from self._node("Event", {"$ref": "#/$defs/Event"}, {"$ref": "#/$defs/Event"})
        old_types: dict[str, Any] = dict(self.old.get("x-cdcflow-event-types", {}))
        new_types: dict[str, Any] = dict(self.new.get("x-cdcflow-event-types", {}))
        for name, spec in sorted(old_types.items()):
            if name not in new_types:
                yield Change(name, "event type removed", False)
                continue
            now = new_types[name]
            if spec.get("topic") != now.get("topic"):
                yield Change(name, f"topic changed from {_fmt(spec.get('topic'))} to {_fmt(now.get('topic'))}", False)
            yield from self._node(name, {"$ref": spec["payload"]}, {"$ref": now["payload"]})
        for name in sorted(set(new_types) - set(old_types)):
            yield Change(name, f"new event type (topic {_fmt(new_types[name].get('topic'))})", True)

    # -- nodes ------------------------------------------------------------------------------------------

    def _resolve(self, doc: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
        ref = node.get("$ref")
        seen: list[str] = []
        while isinstance(ref, str):
            if not ref.startswith("#/$defs/") or ref in seen:
                raise ContractError(f"unsupported or cyclic reference {ref!r}")
            seen.append(ref)
            target = doc.get("$defs", {}).get(ref.removeprefix("#/$defs/"))
            if target is None:
                raise ContractError(f"dangling reference {ref!r}")
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            ref = target.get("$ref")
        return (seen[-1] if seen else ""), node

    def _node(self, where: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[Change]:
        old_ref, old = self._resolve(self.old, old)
        new_ref, new = self._resolve(self.new, new)
        if old_ref and new_ref:
            if (old_ref, new_ref) in self._visiting:  # a recursive schema (JSON values): compared once
                return
            self._visiting.add((old_ref, new_ref))
        old_branches, new_branches = _branches(old), _branches(new)
        old_types, new_types = list(old_branches), list(new_branches)
        if old_types != new_types and (set(old_types) != set(new_types)):
            yield Change(where, f"type changed from {'|'.join(old_types)} to {'|'.join(new_types)}", False)
        yield from self._common(where, old, new)
        if _variants(old) and _variants(new):  # keywords beside anyOf apply to every branch (x-max-digits)
            for key in sorted((set(old) | set(new)) - _STRUCTURE):
                yield from _limit(where, key, old.get(key), new.get(key))
        for kind in old_types:
            if kind in new_branches:
                yield from self._typed(where, kind, old_branches[kind], new_branches[kind])
        if old_ref and new_ref:
            self._visiting.discard((old_ref, new_ref))

    def _common(self, where: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[Change]:
        # A default appearing or going away makes the field optional or required: _object reports that.
        if "default" in old and "default" in new and old["default"] != new["default"]:
            yield Change(where, f"default changed from {_fmt(old['default'])} to {_fmt(new['default'])}", False)

    def _typed(self, where: str, kind: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[Change]:
        handled = _STRUCTURE | {"type"}
        if kind == "object":
            handled |= {"properties", "required", "additionalProperties"}
            yield from self._object(where, old, new)
        elif kind == "array":
            handled |= {"items"}
            if "items" in old or "items" in new:
                yield from self._node(f"{where}[]", old.get("items", {}), new.get("items", {}))
        for key in sorted((set(old) | set(new)) - handled):
            yield from _limit(where, key, old.get(key), new.get(key))

    def _object(self, where: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[Change]:
        old_props: dict[str, Any] = dict(old.get("properties", {}))
        new_props: dict[str, Any] = dict(new.get("properties", {}))
        old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
        added = [name for name in new_props if name not in old_props]
        for name, schema in old_props.items():
            path = f"{where}.{name}"
            if name not in new_props:
                twins = [a for a in added if new_props[a] == schema]
                hint = f" (renamed to {twins[0]}?)" if twins else ""
                yield Change(path, f"field removed{hint}", False)
                continue
            if name in new_req and name not in old_req:
                yield Change(path, "optional field became required", False)
            if name in old_req and name not in new_req:
                yield Change(path, "required field became optional (consumers that read it may not find it)", False)
            yield from self._node(path, schema, new_props[name])
        for name in added:
            if name in new_req:
                yield Change(f"{where}.{name}", "new required field", False)
            else:
                yield Change(f"{where}.{name}", "new optional field", True)
        old_extra, new_extra = old.get("additionalProperties", True), new.get("additionalProperties", True)
        if old_extra != new_extra:
            if new_extra is False:
                yield Change(where, "fields beyond the declared ones are now refused", False)
            elif old_extra is False and new_extra is True:
                yield Change(where, "fields beyond the declared ones are now allowed", True)
            elif isinstance(old_extra, Mapping) and isinstance(new_extra, Mapping):
                yield from self._node(f"{where}.*", old_extra, new_extra)
            else:
                yield Change(where, f"additionalProperties changed from {_fmt(old_extra)} to {_fmt(new_extra)}",
                             False)


#: Keywords the comparison walks itself (or ignores): every other one is a constraint.
_STRUCTURE = ANNOTATIONS | {"anyOf", "oneOf", "$ref", "default"}


def _variants(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    variants: list[Mapping[str, Any]] = node.get("anyOf") or node.get("oneOf") or []
    return variants


def _branches(node: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The node split by JSON type: {type: the schema of that branch}. Untyped (any value): {"any": node}."""
    out: dict[str, Mapping[str, Any]] = {}
    variants = _variants(node)
    if variants:
        for variant in variants:
            for kind, schema in _branches(variant).items():
                out.setdefault(kind, schema)
        return out
    declared = node.get("type")
    if declared is None:
        out["const" if "const" in node else "enum" if "enum" in node else "any"] = node
    elif isinstance(declared, list):
        for k in declared:
            out[str(k)] = node
    else:
        out[str(declared)] = node
    return out


#: Keywords whose larger value narrows what is accepted, and those whose smaller value does.
_LOWER_BOUNDS = frozenset({"minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties"})
_UPPER_BOUNDS = frozenset({"maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties",
                           "x-max-digits", "x-decimal-places"})


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


def _limit(where: str, key: str, old: Any, new: Any) -> Iterator[Change]:
    """One constraint keyword of a typed branch, from `old` to `new` (None: absent)."""
    if old == new:
        return
    if key in _LOWER_BOUNDS or key in _UPPER_BOUNDS:
        upper = key in _UPPER_BOUNDS
        if new is None:
            yield Change(where, f"{key} {_fmt(old)} dropped (widened)", True)
            return
        if old is None:
            yield Change(where, f"new limit {key} {_fmt(new)} (narrowed)", False)
            return
        a, b = _number(old), _number(new)
        if a is None or b is None:
            yield Change(where, f"{key} changed from {_fmt(old)} to {_fmt(new)}", False)
            return
        narrowed = b < a if upper else b > a
        verb = "narrowed" if narrowed else "widened"
        yield Change(where, f"{key} {verb} from {_fmt(old)} to {_fmt(new)}", not narrowed)
        return
    if key == "enum" and isinstance(old, list) and isinstance(new, list):
        gone = [v for v in old if v not in new]
        if gone:
            yield Change(where, f"enum values removed: {_fmt(gone)}", False)
        else:
            yield Change(where, f"enum values added: {_fmt([v for v in new if v not in old])}", True)
        return
    if new is None:  # every validation keyword restricts: without it, more is accepted
        yield Change(where, f"{key} {_fmt(old)} dropped (widened)", True)
        return
    if old is None:
        yield Change(where, f"new {key} {_fmt(new)} (narrowed)", False)
        return
    yield Change(where, f"{key} changed from {_fmt(old)} to {_fmt(new)}", False)
