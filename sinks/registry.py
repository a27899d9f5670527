"""Read models by name: which sink writes it, from which topic (workers, replay and the CLI look here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cdc.schemas import TOPIC_CLICKSTREAM, TOPIC_INVENTORY, TOPIC_ORDERS
from cdc.settings import Settings
from sinks.base import Sink


@dataclass(frozen=True)
class ReadModel:
    """A read model: its name, the topic it consumes and how to build its sink."""

    name: str
    topic: str
    store: str
    factory: Callable[[Settings, str], Sink]

    def sink(self, settings: Settings, namespace: str | None = None) -> Sink:
        """A (not yet set up) sink in `namespace` (default: settings.sink_namespace)."""
        return self.factory(settings, namespace or settings.sink_namespace)

    def consumer_group(self, suffix: str = "") -> str:
        """The Kafka consumer group of this read model's workers (its own, so it can be replayed alone)."""
        return f"cdcflow.{self.name}{suffix}"


def _order_view(settings: Settings, namespace: str) -> Sink:
    from sinks.order_view import OrderViewSink

    return OrderViewSink(settings, namespace)


def _stock_view(settings: Settings, namespace: str) -> Sink:
    from sinks.stock_view import StockViewSink

    return StockViewSink(settings, namespace)


def _purchase_graph(settings: Settings, namespace: str) -> Sink:
    from sinks.purchase_graph import PurchaseGraphSink

    return PurchaseGraphSink(settings, namespace)


def _clickstream(settings: Settings, namespace: str) -> Sink:
    from sinks.clickstream import ClickstreamSink

    return ClickstreamSink(settings, namespace)


READ_MODELS: dict[str, ReadModel] = {
    rm.name: rm
    for rm in (
        ReadModel("order_view", TOPIC_ORDERS, "postgres", _order_view),
        ReadModel("purchase_graph", TOPIC_ORDERS, "neo4j", _purchase_graph),
        ReadModel("clickstream", TOPIC_CLICKSTREAM, "cassandra", _clickstream),
        ReadModel("stock_view", TOPIC_INVENTORY, "postgres", _stock_view),
    )
}


def read_model(name: str) -> ReadModel:
    """The read model called `name`; KeyError with the known names otherwise."""
    try:
        return READ_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown read model {name!r}; known: {', '.join(sorted(READ_MODELS))}") from None


def build_sink(name: str, settings: Settings, namespace: str | None = None) -> Sink:
    """The sink of read model `name` in `namespace` (default: the live one)."""
    return read_model(name).sink(settings, namespace)
