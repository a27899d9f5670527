"""Neo4j purchase graph: (Customer)-[:PURCHASED]->(Product), one relationship per (order, product).

Idempotence: nodes and relationships are MERGEd on their keys (customer_id, product_id, and (order_id,
product_id)), and every relationship remembers the order version it reflects; an event at or below it changes
nothing. Refunds are also recorded by event id on the relationship, so an unversioned refund counts once. A
cancelled order or one refunded in full no longer counts as a purchase (`active = false`) in the queries.

Batches: the events of a batch are split into layers (the i-th event of each order in the batch goes in layer
i), so per-order order is kept; each layer runs one UNWIND query per event kind, all in one transaction.

Namespaces: the default namespace uses the labels `Customer`/`Product` and type `PURCHASED`; another namespace
`ns` uses `ns__Customer`, `ns__Product`, `ns__PURCHASED` (tests, rebuild shadows), each with its constraints.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar, LiteralString

from neo4j import Driver, ManagedTransaction, Session
from neo4j.exceptions import (
    AuthError,
    ClientError,
    DatabaseUnavailable,
    DriverError,
    Forbidden,
    ServiceUnavailable,
    SessionExpired,
    TransientError,
)

from cdc.connect import neo4j_driver
from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.logs import get_logger
from cdc.schemas import (
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderRefunded,
    OrderShipped,
    PaymentConfirmed,
    parse_payload,
)
from cdc.settings import Settings
from sinks.base import PermanentSinkError, Sink, TransientSinkError
from sinks.order_view import ORDER_EVENT_TYPES, order_key

log = get_logger(__name__)

DEFAULT_NAMESPACE = "cdcflow"

#: How long the driver itself retries a transaction before the sink reports a transient error.
DRIVER_RETRY_SECONDS = 2.0


def classify_neo4j_error(exc: BaseException) -> Exception:
    """Connection loss, unavailability and transient server errors are retried; client errors are not."""
    if isinstance(exc, ServiceUnavailable | SessionExpired | TransientError | DatabaseUnavailable | OSError):
        return TransientSinkError(f"neo4j unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, AuthError | Forbidden):  # the store refuses *us*: "down", not a bad event
        return TransientSinkError(f"neo4j refused cdcflow's user: {type(exc).__name__}: {exc}")
    if isinstance(exc, ClientError):
        return PermanentSinkError(f"neo4j rejected the write: {exc}")
    if isinstance(exc, DriverError):
        return TransientSinkError(f"neo4j driver error: {type(exc).__name__}: {exc}")
    return PermanentSinkError(f"neo4j error: {type(exc).__name__}: {exc}")


def graph_row(event: Event) -> tuple[str, dict[str, Any]]:
    """(kind, parameters) of an order event for the UNWIND queries; InvalidEventError for other events."""
    payload = parse_payload(event)
    base: dict[str, Any] = {
        "order_id": order_key(event), "version": event.version if event.version is not None else 0,
        "versioned": event.version is not None, "event_id": event.event_id,
        "at": event.occurred_at.isoformat(),
    }
    if isinstance(payload, OrderCreated):
        quantities: dict[str, int] = defaultdict(int)
        prices: dict[str, Decimal] = {}
        for item in payload.items:  # one relationship per (order, product): merge repeated lines
            quantities[item.product_id] += item.quantity
            prices.setdefault(item.product_id, item.unit_price)
        items = [
            {"product_id": p, "quantity": q, "unit_price": str(prices[p])} for p, q in quantities.items()
        ]
        return "created", {
            **base, "customer_id": payload.customer_id, "items": items, "total": str(payload.total)
        }
    if isinstance(payload, PaymentConfirmed):
        return "status", {**base, "status": "paid"}
    if isinstance(payload, OrderShipped):
        return "status", {**base, "status": "shipped"}
    if isinstance(payload, OrderDelivered):
        return "status", {**base, "status": "delivered"}
    if isinstance(payload, OrderCancelled):
        return "cancelled", base
    if isinstance(payload, OrderRefunded):
        return "refunded", {**base, "amount": str(payload.amount)}
    raise InvalidEventError(f"{event.type} is not an order event")


class PurchaseGraphSink(Sink):
    """The `purchase_graph` read model on Neo4j."""

    name: ClassVar[str] = "purchase_graph"
    event_types: ClassVar[frozenset[str]] = ORDER_EVENT_TYPES

    def __init__(self, settings: Settings, namespace: str = DEFAULT_NAMESPACE) -> None:
        super().__init__(namespace)
        self.settings = settings
        prefix = "" if namespace == DEFAULT_NAMESPACE else f"{namespace}__"
        self.customer = f"{prefix}Customer"
        self.product = f"{prefix}Product"
        self.purchased = f"{prefix}PURCHASED"
        self._driver: Driver | None = None

    # -- plumbing -------------------------------------------------------------------------------------

    def _q(self, text: str) -> LiteralString:
        # Labels cannot be parameters: substitute our own (validated) names, never user input.
        cypher = text.replace("$Customer", f"`{self.customer}`").replace("$Product", f"`{self.product}`")
        cypher = cypher.replace("$PURCHASED", f"`{self.purchased}`")
        return cypher  # mypy treats LiteralString as str; the names are ours, validated

    def _drv(self) -> Driver:
        if self._driver is None:
            self._driver = neo4j_driver(self.settings)
        return self._driver

    def close(self) -> None:
        if self._driver is not None:
            with contextlib.suppress(Exception):
                self._driver.close()
        self._driver = None

    def _session(self) -> Session:
        # The worker retries with its own backoff: the driver's own retries (30 s by default) only delay that.
        return self._drv().session(max_transaction_retry_time=DRIVER_RETRY_SECONDS)

    def _read(self, text: str, **params: Any) -> list[dict[str, Any]]:
        def work(tx: ManagedTransaction) -> list[dict[str, Any]]:
            return [r.data() for r in tx.run(self._q(text), params)]

        try:
            with self._session() as session:
                result: list[dict[str, Any]] = session.execute_read(work)
        except Exception as exc:
            raise self._fail(exc) from exc
        return result

    def _fail(self, exc: BaseException) -> Exception:
        err = classify_neo4j_error(exc)
        if isinstance(err, TransientSinkError):
            self.close()
        log.debug("neo4j_error", sink=self.name, error=str(exc))
        return err

    # -- setup ----------------------------------------------------------------------------------------

    def _constraint_names(self) -> list[tuple[str, str]]:
        ns = self.namespace
        return [
            (f"{ns}_customer_id", "CREATE CONSTRAINT {name} IF NOT EXISTS FOR (c:$Customer) "
                                  "REQUIRE c.customer_id IS UNIQUE"),
            (f"{ns}_product_id", "CREATE CONSTRAINT {name} IF NOT EXISTS FOR (p:$Product) "
                                 "REQUIRE p.product_id IS UNIQUE"),
            (f"{ns}_purchase_key", "CREATE CONSTRAINT {name} IF NOT EXISTS FOR ()-[r:$PURCHASED]-() "
                                   "REQUIRE (r.order_id, r.product_id) IS UNIQUE"),
            (f"{ns}_purchase_order", "CREATE INDEX {name} IF NOT EXISTS FOR ()-[r:$PURCHASED]-() "
                                     "ON (r.order_id)"),
        ]

    def setup(self) -> None:
        try:
            with self._session() as session:
                for name, text in self._constraint_names():
                    session.run(self._q(text.replace("{name}", f"`{name}`"))).consume()
                # Indexes fill in the background: until online, MATCH by order_id scans every relationship.
                session.run("CALL db.awaitIndexes(60)").consume()
        except Exception as exc:
            raise self._fail(exc) from exc

    def drop(self) -> None:
        try:
            with self._session() as session:
                while True:  # delete in chunks: one huge transaction would need a lot of heap
                    summary = session.run(
                        self._q("MATCH (n) WHERE n:$Customer OR n:$Product WITH n LIMIT 5000 DETACH DELETE n")
                    ).consume()
                    if summary.counters.nodes_deleted == 0:
                        break
                for name, _ in self._constraint_names():
                    kind = "INDEX" if name.endswith("_order") else "CONSTRAINT"
                    session.run(self._q(f"DROP {kind} `{name}` IF EXISTS")).consume()
        except Exception as exc:
            raise self._fail(exc) from exc

    # -- write ----------------------------------------------------------------------------------------

    _CREATED = """
    UNWIND $rows AS row
    MERGE (c:$Customer {customer_id: row.customer_id})
    WITH row, c
    UNWIND row.items AS item
    MERGE (p:$Product {product_id: item.product_id})
    MERGE (c)-[r:$PURCHASED {order_id: row.order_id, product_id: item.product_id}]->(p)
    ON CREATE SET r.version = -1, r.status = 'created', r.active = true, r.refunded_amount = '0',
                  r.refund_ids = []
    WITH r, row, item
    WHERE r.version < row.version
    SET r.quantity = item.quantity, r.unit_price = item.unit_price, r.order_total = row.total,
        r.purchased_at = row.at, r.version = row.version
    """

    _STATUS = """
    UNWIND $rows AS row
    MATCH ()-[r:$PURCHASED {order_id: row.order_id}]->()
    WHERE NOT row.versioned OR r.version < row.version
    SET r.status = CASE WHEN r.status IN ['cancelled', 'refunded'] THEN r.status ELSE row.status END,
        r.version = CASE WHEN row.versioned THEN row.version ELSE r.version END
    """

    _CANCELLED = """
    UNWIND $rows AS row
    MATCH ()-[r:$PURCHASED {order_id: row.order_id}]->()
    WHERE NOT row.versioned OR r.version < row.version
    SET r.status = 'cancelled', r.active = false,
        r.version = CASE WHEN row.versioned THEN row.version ELSE r.version END
    """

    # Refund amounts are kept as decimal strings; the comparison with the total is done in integer cents.
    _REFUNDED = """
    UNWIND $rows AS row
    MATCH ()-[r:$PURCHASED {order_id: row.order_id}]->()
    WHERE (NOT row.versioned OR r.version < row.version) AND NOT row.event_id IN r.refund_ids
    WITH r, row,
         toInteger(round(toFloat(r.refunded_amount) * 100))
         + toInteger(round(toFloat(row.amount) * 100)) AS cents
    WITH r, row, cents, cents >= toInteger(round(toFloat(r.order_total) * 100)) AS full
    SET r.refund_ids = r.refund_ids + row.event_id,
        r.refunded_amount = toString(cents / 100) + '.' + right('0' + toString(cents % 100), 2),
        r.version = CASE WHEN row.versioned THEN row.version ELSE r.version END,
        r.active = CASE WHEN full THEN false ELSE r.active END,
        r.status = CASE WHEN full THEN 'refunded' ELSE 'partially_refunded' END
    """

    def write(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        layers: list[dict[str, list[dict[str, Any]]]] = []
        depth: dict[str, int] = defaultdict(int)
        for event in batch:
            try:
                kind, row = graph_row(event)
            except InvalidEventError as exc:
                raise PermanentSinkError(str(exc), event_id=event.event_id) from exc
            layer = depth[row["order_id"]]
            depth[row["order_id"]] += 1
            if layer == len(layers):
                layers.append(defaultdict(list))
            layers[layer][kind].append(row)
        queries = {"created": self._CREATED, "status": self._STATUS, "cancelled": self._CANCELLED,
                   "refunded": self._REFUNDED}

        def work(tx: ManagedTransaction) -> None:
            for layer_rows in layers:
                for kind in ("created", "status", "cancelled", "refunded"):
                    if layer_rows.get(kind):
                        tx.run(self._q(queries[kind]), rows=layer_rows[kind]).consume()

        try:
            with self._session() as session:
                session.execute_write(work)
        except Exception as exc:
            raise self._fail(exc) from exc

    # -- reads ----------------------------------------------------------------------------------------

    def also_bought(self, product_id: str, limit: int = 5) -> list[tuple[str, int]]:
        """Customers who bought `product_id` also bought: (product_id, customers) by co-purchase count."""
        rows = self._read(
            """
            MATCH (p:$Product {product_id: $product_id})<-[r1:$PURCHASED {active: true}]-(c:$Customer)
                  -[r2:$PURCHASED {active: true}]->(other:$Product)
            WHERE other <> p
            RETURN other.product_id AS product_id, count(DISTINCT c) AS n
            ORDER BY n DESC, product_id LIMIT $limit
            """,
            product_id=product_id, limit=limit,
        )
        return [(r["product_id"], int(r["n"])) for r in rows]

    def recommendations(self, customer_id: str, limit: int = 5) -> list[tuple[str, int]]:
        """Products co-purchased with this customer's products by others, minus what they already bought."""
        rows = self._read(
            """
            MATCH (me:$Customer {customer_id: $customer_id})-[:$PURCHASED {active: true}]->(p:$Product)
                  <-[:$PURCHASED {active: true}]-(other:$Customer)
                  -[:$PURCHASED {active: true}]->(rec:$Product)
            WHERE other <> me AND NOT EXISTS { (me)-[:$PURCHASED {active: true}]->(rec) }
            RETURN rec.product_id AS product_id, count(DISTINCT other) AS n
            ORDER BY n DESC, product_id LIMIT $limit
            """,
            customer_id=customer_id, limit=limit,
        )
        return [(r["product_id"], int(r["n"])) for r in rows]

    def has_product(self, product_id: str) -> bool:
        """True when `product_id` was ever purchased (a node exists)."""
        rows = self._read("MATCH (p:$Product {product_id: $product_id}) RETURN count(p) AS n", product_id=product_id)
        return bool(rows) and int(rows[0]["n"]) > 0

    def purchases(self, customer_id: str) -> list[dict[str, Any]]:
        """A customer's purchases (every order line, active or not), by order then product."""
        return self._read(
            """
            MATCH (:$Customer {customer_id: $customer_id})-[r:$PURCHASED]->(p:$Product)
            RETURN r.order_id AS order_id, p.product_id AS product_id, r.quantity AS quantity,
                   r.unit_price AS unit_price, r.status AS status, r.active AS active,
                   r.refunded_amount AS refunded_amount, r.version AS version
            ORDER BY order_id, product_id
            """,
            customer_id=customer_id,
        )

    def snapshot(self) -> list[dict[str, Any]]:
        return self._read(
            """
            MATCH (c:$Customer)-[r:$PURCHASED]->(p:$Product)
            RETURN c.customer_id AS customer_id, p.product_id AS product_id, r.order_id AS order_id,
                   r.quantity AS quantity, r.unit_price AS unit_price, r.order_total AS order_total,
                   r.status AS status, r.active AS active, r.refunded_amount AS refunded_amount,
                   r.version AS version, r.purchased_at AS purchased_at
            ORDER BY order_id, product_id
            """
        )
