"""Neo4j purchase graph: (Customer)-[:PURCHASED]->(Product), one relationship per (order, product).

Idempotence: nodes and relationships are MERGEd on their keys (customer_id, product_id, and (order_id,
product_id)), and every relationship remembers the order version it reflects; an event at or below it changes
nothing. Refunds are also recorded by event id on the relationship, so an unversioned refund counts once. A
cancelled order or one refunded in full no longer counts as a purchase (`active = false`) in the queries.

Batches: the events of a batch are split into layers (the i-th event of each order in the batch goes in layer
i), so per-order order is kept; each layer runs one UNWIND query per event kind, all in one transaction.

Holds (sinks/holds.py): `(:PurchaseHold {aggregate_id, event_id})` marks an order whose event was
dead-lettered; its later events wait as `(:PurchaseParked {event_id, aggregate_id, seq, value})` nodes and are
applied, in order, in the transaction that applies the held event when it is re-driven.

Namespaces: the default namespace uses the labels `Customer`/`Product`/`PurchaseHold`/`PurchaseParked` and type
`PURCHASED`; another namespace `ns` prefixes each with `ns__` (tests, rebuild shadows), each with its constraints.

Errors: the connection, the server's transient and database errors are retried; security errors (a wrong
password, a forbidden or read-only write) mean Neo4j refuses *us* and are retried too (`SinkRefusedError`); only
errors caused by the data (a constraint, a value of the wrong type or out of range) are permanent. Ids longer
than `MAX_KEY_BYTES` are refused before the write: Neo4j cannot index them.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, ClassVar, LiteralString

from neo4j import Driver, ManagedTransaction, NotificationDisabledClassification, Session, unit_of_work
from neo4j.exceptions import (
    AuthError,
    ClientError,
    CypherSyntaxError,
    DatabaseUnavailable,
    Forbidden,
    ServiceUnavailable,
    SessionExpired,
    TokenExpired,
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
from sinks.base import (
    ENTRY_CHUNK,
    Entry,
    Hold,
    PermanentSinkError,
    Sink,
    SinkError,
    SinkRefusedError,
    SinkTimeoutError,
    TransientSinkError,
)
from sinks.holds import plan_holds, unpark
from sinks.order_view import ORDER_EVENT_TYPES, order_key

log = get_logger(__name__)

DEFAULT_NAMESPACE = "cdcflow"

#: How long the driver itself retries a transaction before the sink reports a transient error.
DRIVER_RETRY_SECONDS = 2.0
#: Neo4j's codes for a transaction ended by its timeout (the client's, or the server's default one).
TIMEOUT_CODES = frozenset({
    "Neo.ClientError.Transaction.TransactionTimedOutClientConfiguration",
    "Neo.ClientError.Transaction.TransactionTimedOut",
})


#: Longest id (UTF-8 bytes) the graph takes: Neo4j's range indexes refuse keys near 8 kB.
MAX_KEY_BYTES = 4000

# Codes of errors caused by the data sent (the rest of Neo.ClientError.* would hit any event: bugs, config).
_DATA_CODES = (
    "Neo.ClientError.Schema.ConstraintValidationFailed",
    "Neo.ClientError.Statement.TypeError",
    "Neo.ClientError.Statement.ArgumentError",
    "Neo.ClientError.Statement.ArithmeticError",
)
# Codes of "Neo4j refuses us": credentials, permissions, a write in read-only mode or on a read-only database.
_REFUSED_CODES = (
    "Neo.ClientError.Security.",
    "Neo.ClientError.Statement.AccessMode",
    "Neo.ClientError.General.ForbiddenOnReadOnlyDatabase",
)


def classify_neo4j_error(exc: BaseException) -> SinkError:
    """Refusals and anything that would hit every event are retried; only data-caused errors are permanent."""
    code = str(getattr(exc, "code", None) or "")
    name = type(exc).__name__
    if isinstance(exc, AuthError | Forbidden | TokenExpired) or code.startswith(_REFUSED_CODES):
        return SinkRefusedError(f"neo4j refuses the write ({name}, {code or '-'}): {exc}")
    if isinstance(exc, ServiceUnavailable | SessionExpired | TransientError | DatabaseUnavailable | OSError):
        return TransientSinkError(f"neo4j unavailable: {name}: {exc}")
    if isinstance(exc, ClientError) and not isinstance(exc, CypherSyntaxError) and code.startswith(_DATA_CODES):
        return PermanentSinkError(f"neo4j rejected the data ({code}): {exc}")
    if isinstance(exc, UnicodeError | OverflowError):  # the driver cannot send a value of the event
        return PermanentSinkError(f"neo4j cannot take the data: {name}: {exc}")
    return TransientSinkError(f"neo4j error ({name}, {code or '-'}): {exc}")


def graph_row(event: Event) -> tuple[str, dict[str, Any]]:
    """(kind, parameters) of an order event for the UNWIND queries; InvalidEventError for other events."""
    payload = parse_payload(event)
    _check_keys(payload)
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


def _check_keys(payload: Any) -> None:
    ids = [getattr(payload, "order_id", None), getattr(payload, "customer_id", None)]
    ids += [item.product_id for item in getattr(payload, "items", ())]
    for value in ids:
        if isinstance(value, str) and len(value.encode()) > MAX_KEY_BYTES:
            raise InvalidEventError(f"id too long for the graph's indexes: {len(value.encode())} bytes "
                                    f"(at most {MAX_KEY_BYTES})")


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
        self.held = f"{prefix}PurchaseHold"
        self.parked = f"{prefix}PurchaseParked"
        self._driver: Driver | None = None

    # -- plumbing -------------------------------------------------------------------------------------

    def _q(self, text: str) -> LiteralString:
        # Labels cannot be parameters: substitute our own (validated) names, never user input.
        cypher = text.replace("$Customer", f"`{self.customer}`").replace("$Product", f"`{self.product}`")
        cypher = cypher.replace("$PURCHASED", f"`{self.purchased}`")
        cypher = cypher.replace("$HeldAggregate", f"`{self.held}`").replace("$ParkedEvent", f"`{self.parked}`")
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
        # Without holds, their labels do not exist yet: Neo4j would warn about it on every batch.
        return self._drv().session(
            max_transaction_retry_time=DRIVER_RETRY_SECONDS,
            notifications_disabled_classifications=[NotificationDisabledClassification.UNRECOGNIZED],
        )

    def _read(self, text: str, *, timeout: float | None = None, **params: Any) -> list[dict[str, Any]]:
        """Run a read; with `timeout`, Neo4j ends the transaction past it (SinkTimeoutError)."""

        @unit_of_work(timeout=timeout)
        def work(tx: ManagedTransaction) -> list[dict[str, Any]]:
            return [r.data() for r in tx.run(self._q(text), params)]

        try:
            with self._session() as session:
                result: list[dict[str, Any]] = session.execute_read(work)
        except ClientError as exc:
            if exc.code in TIMEOUT_CODES:
                raise SinkTimeoutError(f"neo4j ended the query after {timeout:g} s") from exc
            raise self._fail(exc) from exc
        except Exception as exc:
            raise self._fail(exc) from exc
        return result

    @property
    def _query_timeout(self) -> float:
        return self.settings.read_api_query_timeout_seconds

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
            (f"{ns}_hold_aggregate", "CREATE CONSTRAINT {name} IF NOT EXISTS FOR (h:$HeldAggregate) "
                                     "REQUIRE h.aggregate_id IS UNIQUE"),
            (f"{ns}_parked_event", "CREATE CONSTRAINT {name} IF NOT EXISTS FOR (p:$ParkedEvent) "
                                   "REQUIRE p.event_id IS UNIQUE"),
            (f"{ns}_parked_order", "CREATE INDEX {name} IF NOT EXISTS FOR (p:$ParkedEvent) ON (p.aggregate_id)"),
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
                        self._q("MATCH (n) WHERE n:$Customer OR n:$Product OR n:$HeldAggregate OR n:$ParkedEvent "
                                "WITH n LIMIT 5000 DETACH DELETE n")
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
        rows: dict[str, tuple[str, dict[str, Any]]] = {}
        for event in batch:  # validate before any I/O
            try:
                rows[event.event_id] = graph_row(event)
            except InvalidEventError as exc:
                raise PermanentSinkError(str(exc), event_id=event.event_id) from exc
        queries = {"created": self._CREATED, "status": self._STATUS, "cancelled": self._CANCELLED,
                   "refunded": self._REFUNDED}
        outcome: dict[str, Any] = {}

        def work(tx: ManagedTransaction) -> None:
            events, behind, parked, released = self._hold_back(tx, batch)
            layers: list[dict[str, list[dict[str, Any]]]] = []
            depth: dict[str, int] = defaultdict(int)
            for event in events:
                kind, row = rows.get(event.event_id) or _released_row(event, behind)
                layer = depth[row["order_id"]]
                depth[row["order_id"]] += 1
                if layer == len(layers):
                    layers.append(defaultdict(list))
                layers[layer][kind].append(row)
            for layer_rows in layers:
                for kind in ("created", "status", "cancelled", "refunded"):
                    if layer_rows.get(kind):
                        tx.run(self._q(queries[kind]), rows=layer_rows[kind]).consume()
            outcome.update(parked=parked, released=released)

        try:
            with self._session() as session:
                session.execute_write(work)
        except SinkError:
            raise
        except Exception as exc:
            raise self._fail(exc) from exc
        if outcome.get("parked") or outcome.get("released"):
            log.info("holds_applied", sink=self.name, namespace=self.namespace, **outcome)

    def _hold_back(
        self, tx: ManagedTransaction, batch: Sequence[Event]
    ) -> tuple[list[Event], dict[str, str], int, list[str]]:
        """Park the batch's events of held orders. Returns the events to apply (released ones included), for
        each released event the id of the held event it waited for, the number parked, the released orders."""
        aggregates = sorted({e.aggregate_id for e in batch})
        held = {
            r["a"]: r["e"]
            for r in tx.run(
                self._q("MATCH (h:$HeldAggregate) WHERE h.aggregate_id IN $aggregates "
                        "RETURN h.aggregate_id AS a, h.event_id AS e"),
                aggregates=aggregates,
            )
        }
        if not held:
            return list(batch), {}, 0, []
        plan = plan_holds(batch, held)
        parked: dict[str, list[Event]] = defaultdict(list)
        if plan.released:
            for r in tx.run(
                self._q("MATCH (p:$ParkedEvent) WHERE p.aggregate_id IN $aggregates "
                        "RETURN p.aggregate_id AS a, p.value AS v ORDER BY p.seq"),
                aggregates=plan.released,
            ):
                parked[r["a"]].append(unpark(r["v"], held[r["a"]]))
            tx.run(
                self._q("MATCH (n) WHERE (n:$ParkedEvent OR n:$HeldAggregate) AND n.aggregate_id IN $aggregates "
                        "DETACH DELETE n"),
                aggregates=plan.released,
            ).consume()
        if plan.park:
            by_aggregate: dict[str, list[dict[str, str]]] = defaultdict(list)
            for e in plan.park:
                by_aggregate[e.aggregate_id].append({"event_id": e.event_id, "value": e.to_json().decode()})
            # the hold node numbers its parked events (a write lock on it orders concurrent writers)
            tx.run(
                self._q("""
                UNWIND $rows AS row
                MATCH (h:$HeldAggregate {aggregate_id: row.aggregate_id})
                SET h.next_seq = coalesce(h.next_seq, 0) + size(row.events)
                WITH h, row, h.next_seq - size(row.events) AS base
                UNWIND range(0, size(row.events) - 1) AS i
                WITH h, row.events[i] AS e, base + i AS seq
                MERGE (p:$ParkedEvent {event_id: e.event_id})
                ON CREATE SET p.aggregate_id = h.aggregate_id, p.value = e.value, p.seq = seq
                """),
                rows=[{"aggregate_id": a, "events": es} for a, es in by_aggregate.items()],
            ).consume()
        behind = {e.event_id: held[a] for a, events in parked.items() for e in events}
        return plan.events(parked), behind, len(plan.park), plan.released

    def hold(self, holds: Sequence[Hold]) -> None:
        if not holds:
            return
        rows = [{"aggregate_id": h.aggregate_id, "event_id": h.event_id, "version": str(h.version),
                 "reason": h.reason} for h in holds]

        def work(tx: ManagedTransaction) -> None:
            tx.run(
                self._q("""
                UNWIND $rows AS row
                MERGE (h:$HeldAggregate {aggregate_id: row.aggregate_id})
                ON CREATE SET h.event_id = row.event_id, h.version = row.version, h.reason = row.reason,
                              h.held_at = datetime(), h.next_seq = 0
                """),
                rows=rows,
            ).consume()

        try:
            with self._session() as session:
                session.execute_write(work)
        except Exception as exc:
            raise self._fail(exc) from exc

    def holds(self) -> list[dict[str, Any]]:
        """The orders held back now: the held event, why, and how many events are parked behind it."""
        return self._read(
            """
            MATCH (h:$HeldAggregate)
            OPTIONAL MATCH (p:$ParkedEvent {aggregate_id: h.aggregate_id})
            RETURN h.aggregate_id AS aggregate_id, h.event_id AS event_id, h.version AS version,
                   h.reason AS reason, count(p) AS parked
            ORDER BY aggregate_id
            """
        )

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
            product_id=product_id, limit=limit, timeout=self._query_timeout,
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
            customer_id=customer_id, limit=limit, timeout=self._query_timeout,
        )
        return [(r["product_id"], int(r["n"])) for r in rows]

    def has_product(self, product_id: str) -> bool:
        """True when `product_id` was ever purchased (a node exists)."""
        rows = self._read(
            "MATCH (p:$Product {product_id: $product_id}) RETURN count(p) AS n",
            product_id=product_id, timeout=self._query_timeout,
        )
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
            customer_id=customer_id, timeout=self._query_timeout,
        )

    def purchased_products(self, customer_id: str, limit: int) -> list[str] | None:
        """The products a customer holds an active purchase of, at most `limit` (by id); None for a customer
        without any purchase (no node). Null sorts last, so a customer with only inactive ones gets []."""
        rows = self._read(
            """
            MATCH (c:$Customer {customer_id: $customer_id})
            OPTIONAL MATCH (c)-[:$PURCHASED {active: true}]->(p:$Product)
            RETURN DISTINCT p.product_id AS product_id ORDER BY product_id LIMIT $limit
            """,
            customer_id=customer_id, limit=limit, timeout=self._query_timeout,
        )
        if not rows:
            return None
        return [str(r["product_id"]) for r in rows if r["product_id"] is not None]

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

    _EDGES = """
    MATCH (c:$Customer)-[r:$PURCHASED]->(p:$Product)
    WHERE $first OR r.order_id > $order_id OR (r.order_id = $order_id AND r.product_id > $product_id)
    RETURN c.customer_id AS customer_id, p.product_id AS product_id, r.order_id AS order_id,
           r.quantity AS quantity, r.unit_price AS unit_price, r.order_total AS order_total,
           r.status AS status, r.active AS active, r.refunded_amount AS refunded_amount,
           r.refund_ids AS refund_ids, r.version AS version, r.purchased_at AS purchased_at
    ORDER BY order_id, product_id LIMIT $limit
    """

    def entries(self, chunk: int = ENTRY_CHUNK) -> Iterator[Entry]:
        """Every purchase edge by (order_id, product_id), `chunk` edges per read transaction (keyset pages).
        Neo4j orders strings by code point, as Python does; the aggregate of an edge is its order."""
        last: tuple[str, str] | None = None
        while True:
            rows = self._read(self._EDGES, first=last is None, order_id=last[0] if last else "",
                              product_id=last[1] if last else "", limit=chunk)
            for r in rows:
                yield Entry((r["order_id"], r["product_id"]), r["order_id"], int(r["version"]), r)
            if len(rows) < chunk:
                return
            last = (rows[-1]["order_id"], rows[-1]["product_id"])


def _released_row(event: Event, behind: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The graph row of a released (parked) event; if it cannot be applied, the held event fails."""
    try:
        return graph_row(event)
    except InvalidEventError as exc:
        held = behind.get(event.event_id, event.event_id)
        raise PermanentSinkError(
            f"event {event.event_id} (version {event.version}), parked behind {held}, cannot be applied: {exc}",
            event_id=held,
        ) from exc
