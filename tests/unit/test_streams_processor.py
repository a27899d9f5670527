"""The batch processor with a fake sink and a fake dead-letter publisher: no servers, no Faust."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

from cdc.event import Event
from sinks.base import PermanentSinkError, Sink, TransientSinkError
from streams.dlq import H_READ_MODEL, H_REASON, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC, dead_letter_headers
from streams.processor import Backoff, BatchProcessor, DeadLetter, RawRecord
from tests.streams_support import order_lifecycle


class FakeSink(Sink):
    name: ClassVar[str] = "fake"
    event_types: ClassVar[frozenset[str]] = frozenset({"OrderCreated", "PaymentConfirmed", "OrderShipped"})

    def __init__(self, fail_transient: int = 0, reject: set[str] | None = None) -> None:
        super().__init__("fake")
        self.fail_transient = fail_transient
        self.reject = reject or set()
        self.written: list[str] = []
        self.setups = 0
        self.calls = 0

    def setup(self) -> None:
        self.setups += 1

    def write(self, batch: Sequence[Event]) -> None:
        self.calls += 1
        if self.fail_transient:
            self.fail_transient -= 1
            raise TransientSinkError("down")
        for e in batch:
            if e.event_id in self.reject:
                raise PermanentSinkError("no", event_id=e.event_id)
        self.written.extend(e.event_id for e in batch)

    def close(self) -> None: ...

    def snapshot(self) -> Any:
        return self.written

    def drop(self) -> None: ...


class FakePublisher:
    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.published: list[DeadLetter] = []

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("broker down")
        self.published.extend(letters)


def records(events: Sequence[Event], extra: Sequence[bytes] = ()) -> list[RawRecord]:
    out = [RawRecord("orders", 0, i, e.kafka_key(), e.to_json(), tuple(e.kafka_headers()))
           for i, e in enumerate(events)]
    out += [RawRecord("orders", 1, 100 + i, b"k", v) for i, v in enumerate(extra)]
    return out


async def _no_sleep(delay: float) -> None:
    sleeps.append(delay)


sleeps: list[float] = []


def run(processor: BatchProcessor, recs: list[RawRecord]) -> Any:
    return asyncio.run(processor.process(recs))


def test_good_batch_is_written_once_with_setup_first() -> None:
    sink, pub = FakeSink(), FakePublisher()
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid", "shipped"])
    result = run(BatchProcessor(sink, pub, sleep=_no_sleep), records(events))
    assert result.written == 3 and not result.dead
    assert sink.written == [e.event_id for e in events] and sink.setups == 1 and not pub.published


def test_poison_records_become_dead_letters_with_reasons_and_the_rest_is_written() -> None:
    sink, pub = FakeSink(), FakePublisher()
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid"])
    unknown = Event.create(topic="orders", aggregate_type="Order", aggregate_id="o9", type="OrderTeleported",
                           payload={"order_id": "o9"})
    bad_payload = Event.create(topic="orders", aggregate_type="Order", aggregate_id="o8", type="OrderCreated",
                               payload={"order_id": "o8"})
    other = order_lifecycle("orders", "o7", "c1", ["a"], ["delivered"])[1]  # valid, not handled by FakeSink
    extra = [b"{not json", unknown.to_json(), bad_payload.to_json(), other.to_json(), b"[1, 2]"]
    result = run(BatchProcessor(sink, pub, sleep=_no_sleep), records(events, extra))
    assert sink.written == [e.event_id for e in events]
    reasons = [d.reason for d in pub.published]
    assert len(reasons) == 5
    assert reasons[0].startswith("malformed JSON")
    assert "unknown event type 'OrderTeleported'" in reasons[1]
    assert "invalid OrderCreated payload" in reasons[2]
    assert "not handled by read model fake" in reasons[3]
    assert "must be a JSON object" in reasons[4]
    assert [d.record.offset for d in pub.published] == [100, 101, 102, 103, 104]
    assert result.written == 2


def test_transient_errors_are_retried_with_growing_backoff_until_written() -> None:
    sleeps.clear()
    sink, pub = FakeSink(fail_transient=4), FakePublisher()
    events = order_lifecycle("orders", "o1", "c1", ["a"], [])
    result = run(BatchProcessor(sink, pub, Backoff(0.1, 0.5), sleep=_no_sleep), records(events))
    assert sink.written == [events[0].event_id] and result.retries == 4
    assert sleeps == [0.1, 0.2, 0.4, 0.5]


def test_a_rejected_batch_is_isolated_and_only_the_bad_event_dead_lettered() -> None:
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid", "shipped"])
    sink, pub = FakeSink(reject={events[1].event_id}), FakePublisher()
    result = run(BatchProcessor(sink, pub, sleep=_no_sleep), records(events))
    assert sink.written == [events[0].event_id, events[2].event_id]
    assert [d.event_id for d in result.dead] == [events[1].event_id] == [d.event_id for d in pub.published]


def test_dead_letters_are_published_before_process_returns_even_if_the_broker_fails_first() -> None:
    sink, pub = FakeSink(), FakePublisher(fail=2)
    run(BatchProcessor(sink, pub, sleep=_no_sleep), records([], [b"garbage"]))
    assert len(pub.published) == 1


def test_dead_letter_headers_keep_the_original_and_say_where_and_why() -> None:
    (event,) = order_lifecycle("orders", "o1", "c1", ["a"], [])
    rec = RawRecord("orders", 3, 42, b"o1", b"x", tuple(event.kafka_headers()))
    headers = dict(dead_letter_headers(DeadLetter(rec, "bad", "order_view", event.event_id)))
    assert headers["event_id"] == event.event_id.encode()
    assert headers[H_REASON] == b"bad" and headers[H_READ_MODEL] == b"order_view"
    assert (headers[H_SOURCE_TOPIC], headers[H_SOURCE_PARTITION], headers[H_SOURCE_OFFSET]) == (b"orders", b"3", b"42")
