"""Does every state of a service come from its outbox? Checks for the integration tests (no tests here).

Each function returns the discrepancies it found in one service database (an empty list: none):
- products: each product's outbox events are versions 1 … its version, once each, starting with ProductCreated,
  every stock change consistent with the level before it, and folding them gives the stored name, price, stock;
- orders: the event store and the outbox hold the same events (id, order, version, type, payload), each order's
  versions 1 … n, and every snapshot is the fold of the events up to it;
- page views: one PageViewed in the outbox per stored page view, with the same fields.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from pymongo.database import Database

from cdc.outbox import CREATION_ORDER, OUTBOX_COLLECTION
from producers.order_state import OrderState, StoredEvent, fold_order

Document = dict[str, Any]


def _by_aggregate(db: Database[Document], aggregate_type: str) -> dict[str, list[Document]]:
    out: dict[str, list[Document]] = defaultdict(list)
    for doc in db[OUTBOX_COLLECTION].find({"aggregate_type": aggregate_type}).sort(CREATION_ORDER):
        out[doc["aggregate_id"]].append(doc)
    for docs in out.values():
        docs.sort(key=lambda d: d["version"] or 0)
    return out


def product_discrepancies(db: Database[Document]) -> list[str]:
    """Products whose stored state is not the fold of their outbox events."""
    problems: list[str] = []
    events = _by_aggregate(db, "Product")
    products = {d["_id"]: d for d in db["products"].find({})}
    for orphan in sorted(set(events) - set(products)):
        problems.append(f"{orphan}: events but no product")
    for pid, doc in sorted(products.items()):
        evs = events.get(pid, [])
        versions = [e["version"] for e in evs]
        if versions != list(range(1, int(doc.get("version") or 0) + 1)):
            problems.append(f"{pid}: stored at version {doc.get('version')}, outbox versions {versions}")
            continue
        state: dict[str, Any] = {}
        for e in evs:
            p, kind = e["payload"], e["type"]
            if (kind == "ProductCreated") != (e["version"] == 1):
                problems.append(f"{pid}: v{e['version']} is {kind}")
            if kind in ("ProductCreated",):
                state = {"name": p["name"], "price": Decimal(p["price"]), "stock": p["stock"]}
            elif kind == "ProductUpdated":
                state.update(name=p["name"], price=Decimal(p["price"]))
            elif kind == "StockAdjusted":
                if state.get("stock", 0) + p["change"] != p["stock_after"] or p["change"] == 0:
                    problems.append(f"{pid}: v{e['version']} StockAdjusted {p} after stock {state.get('stock')}")
                state["stock"] = p["stock_after"]
            elif kind == "InventoryDecremented":
                if state.get("stock", 0) - p["quantity"] != p["stock_after"]:
                    problems.append(f"{pid}: v{e['version']} InventoryDecremented {p} after {state.get('stock')}")
                state["stock"] = p["stock_after"]
            else:
                problems.append(f"{pid}: v{e['version']} unexpected {kind}")
        stored = {"name": doc["name"], "price": Decimal(str(doc["price"])), "stock": doc["stock"]}
        if state != stored:
            problems.append(f"{pid}: stored {stored}, outbox folds to {state}")
    return problems


def order_discrepancies(db: Database[Document]) -> list[str]:
    """Orders whose event store and outbox differ, or whose snapshot is not the fold of their events."""
    problems: list[str] = []
    outbox = {d["_id"]: d for d in db[OUTBOX_COLLECTION].find({"aggregate_type": "Order"})}
    stored = {d["_id"]: d for d in db["order_events"].find({})}
    for eid in sorted(set(stored) ^ set(outbox)):
        problems.append(f"event {eid}: {'only in the event store' if eid in stored else 'only in the outbox'}")
    per_order: dict[str, list[Document]] = defaultdict(list)
    for eid, doc in stored.items():
        per_order[doc["order_id"]].append(doc)
        sent = outbox.get(eid)
        if sent is not None and (
            (sent["aggregate_id"], sent["version"], sent["type"], sent["payload"])
            != (doc["order_id"], doc["version"], doc["type"], doc["payload"])
        ):
            problems.append(f"event {eid}: event store {doc} differs from outbox {sent}")
    for order_id, docs in sorted(per_order.items()):
        docs.sort(key=lambda d: d["version"])
        if [d["version"] for d in docs] != list(range(1, len(docs) + 1)):
            problems.append(f"order {order_id}: versions {[d['version'] for d in docs]}")
            continue
        snap = db["order_snapshots"].find_one({"_id": order_id})
        if snap is not None:
            upto = [StoredEvent(d["type"], d["version"], d["payload"]) for d in docs if d["version"] <= snap["version"]]
            if OrderState.from_document(snap["state"]) != fold_order(upto, order_id=order_id):
                problems.append(f"order {order_id}: snapshot v{snap['version']} is not the fold of its events")
    return problems


def page_view_discrepancies(db: Database[Document]) -> list[str]:
    """Page views without their PageViewed event (or events without their page view)."""
    problems: list[str] = []
    outbox = {d["_id"]: d for d in db[OUTBOX_COLLECTION].find({"type": "PageViewed"})}
    views = {d["_id"]: d for d in db["page_views"].find({})}
    for eid in sorted(set(views) ^ set(outbox)):
        problems.append(f"page view {eid}: {'no event' if eid in views else 'event without a page view'}")
    for eid, view in views.items():
        p = outbox.get(eid, {}).get("payload")
        if p is not None and [view[k] for k in ("user_id", "url", "product_id", "referrer")] != [
            p.get(k) for k in ("user_id", "url", "product_id", "referrer")
        ]:
            problems.append(f"page view {eid}: stored {view} differs from its event {p}")
    return problems
