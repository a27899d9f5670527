"""The batch processor with a fake sink and a fake dead-letter publisher: no servers, no Faust."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest
from prometheus_client import REGISTRY

from cdc.event import Event
from cdc.retry import Backoff
from sinks.base import Entry, Hold, PermanentSinkError, Sink, SinkRefusedError, TransientSinkError
from streams.dlq import H_READ_MODEL, H_REASON, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC, dead_letter_headers
from streams.processor import BatchProcessor, DeadLetter, RawRecord, RejectedRecord, decode
from tests.streams_support import POISON_MAX_BYTES as MAX_BYTES
from tests.streams_support import order_lifecycle, poison_values


class FakeSink(Sink):
    name: ClassVar[str] = "fake"
    event_types: ClassVar[frozenset[str]] = frozenset({"OrderCreated", "PaymentConfirmed", "OrderShipped"})

    def __init__(
        self, fail_transient: int = 0, reject: set[str] | None = None, fail_with: list[Exception] | None = None
    ) -> None:
        super().__init__("fake")
        self.fail_transient = fail_transient
        self.fail_with = list(fail_with or [])
        self.reject = reject or set()
        self.written: list[str] = []
        self.setups = 0
        self.calls = 0
        self.log: list[tuple[str, Any]] = []  # ("write", ids) and ("hold", Hold), in call order

    def setup(self) -> None:
        self.setups += 1

    def hold(self, holds: Sequence[Hold]) -> None:
        self.log.extend(("hold", h) for h in holds)

    def write(self, batch: Sequence[Event]) -> None:
        self.calls += 1
        self.log.append(("write", [e.event_id for e in batch]))
        if self.fail_with:
            raise self.fail_with.pop(0)
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

    def entries(self, chunk: int = 1000) -> Iterator[Entry]:
        return iter([Entry((e,), e, None, e) for e in sorted(set(self.written))])

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
    # doubling up to the maximum, each plus a jitter of at most the initial delay
    assert all(low <= d <= low + 0.1 for d, low in zip(sleeps, [0.1, 0.2, 0.4, 0.5], strict=True)), sleeps


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


# -- every decoding failure is a dead letter with its reason -----------------------------------------------

GOOD = order_lifecycle("orders", "o1", "c1", ["a"], [])[0]


def envelope(**changes: Any) -> bytes:
    data = {**GOOD.to_json_dict(), "event_id": "5d0f6a52-1f7c-4a51-9d1e-0a4c52a1c0de", **changes}
    return json.dumps(data).encode()


BAD_RECORDS = poison_values("orders")


@pytest.mark.parametrize(("name", "value", "reason"), BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_decode_turns_every_failure_into_a_reason(name: str, value: bytes, reason: str) -> None:
    record = RawRecord("orders", 0, 7, b"o1", value)
    with pytest.raises(RejectedRecord) as info:
        decode(record, FakeSink(), max_bytes=MAX_BYTES)
    assert reason in str(info.value), str(info.value)[:300]
    assert len(str(info.value)) <= 1000


def test_a_batch_of_every_kind_of_bad_record_is_dead_lettered_and_the_good_ones_written() -> None:
    sink, pub = FakeSink(), FakePublisher()
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid"])
    recs = records(events[:1]) + [RawRecord("orders", 1, 100 + i, b"k", v) for i, (_, v, _) in
                                  enumerate(BAD_RECORDS)] + records(events[1:])
    result = run(BatchProcessor(sink, pub, sleep=_no_sleep, max_record_bytes=MAX_BYTES), recs)
    assert sink.written == [e.event_id for e in events] and result.written == 2
    assert [(d.record.offset, d.reason.split(":")[0]) for d in pub.published][:1] == [(100, "too deeply nested")]
    assert len(pub.published) == len(BAD_RECORDS)
    for letter, (_, _, reason) in zip(pub.published, BAD_RECORDS, strict=True):
        assert reason in letter.reason


# -- holds: a dead-lettered versioned event holds its aggregate back before anything later is written ---------


def headers_of(event: Event) -> tuple[tuple[str, bytes], ...]:
    return tuple(event.kafka_headers())


def test_an_undecodable_record_with_the_tailers_headers_holds_its_aggregate_before_later_writes() -> None:
    a = order_lifecycle("orders", "a", "c", ["p"], ["paid"])
    b = order_lifecycle("orders", "b", "c", ["p"], ["paid"])
    bad = RawRecord("orders", 0, 5, b"b", b"[" * 5000, headers_of(b[0]))
    recs = [*records(a[:1]), bad, *records(b[1:] + a[1:])]
    sink = FakeSink()
    run(BatchProcessor(sink, FakePublisher(), sleep=_no_sleep), recs)
    assert [kind for kind, _ in sink.log] == ["write", "hold", "write"]
    assert sink.log[0][1] == [a[0].event_id]  # what came before is written first, unheld
    hold = sink.log[1][1]
    assert (hold.aggregate_id, hold.event_id, hold.version) == ("b", b[0].event_id, 1)
    assert "too deeply nested" in hold.reason
    assert sink.log[2][1] == [b[1].event_id, a[1].event_id]


def test_an_invalid_event_holds_by_its_envelope_and_garbage_without_headers_holds_nothing() -> None:
    a = order_lifecycle("orders", "a", "c", ["p"], ["paid"])
    invalid = RawRecord("orders", 0, 5, None, envelope(aggregate_id="x", version=3, type="OrderTeleported"))
    garbage = RawRecord("orders", 0, 6, b"a", b"garbage")
    sink, pub = FakeSink(), FakePublisher()
    run(BatchProcessor(sink, pub, sleep=_no_sleep), [*records(a[:1]), invalid, garbage, *records(a[1:])])
    holds = [h for kind, h in sink.log if kind == "hold"]
    assert [(h.aggregate_id, h.version) for h in holds] == [("x", 3)]
    assert len(pub.published) == 2


def test_a_rejected_event_holds_its_aggregate_before_the_next_event_is_written() -> None:
    a = order_lifecycle("orders", "a", "c", ["p"], ["paid", "shipped"])
    sink = FakeSink(reject={a[1].event_id})
    result = run(BatchProcessor(sink, FakePublisher(), sleep=_no_sleep), records(a))
    assert [kind for kind, _ in sink.log] == ["write", "write", "write", "hold", "write"]
    assert sink.log[3][1].event_id == a[1].event_id and sink.log[4][1] == [a[2].event_id]
    assert [d.event_id for d in result.dead] == [a[1].event_id]


def test_an_unversioned_dead_letter_holds_nothing() -> None:
    refund = Event.create(topic="orders", aggregate_type="Order", aggregate_id="o1", type="OrderRefunded",
                          payload={"order_id": "o1", "amount": "1.00"})
    sink = FakeSink(reject={refund.event_id})
    run(BatchProcessor(sink, FakePublisher(), sleep=_no_sleep), records([refund]))
    assert not [h for kind, h in sink.log if kind == "hold"]


# -- a sink that refuses us, or fails unexpectedly, is waited on: never a dead letter -------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_refusing_sink_is_retried_visibly_and_nothing_is_dead_lettered() -> None:
    sleeps.clear()
    events = order_lifecycle("orders", "o1", "c1", ["a"], ["paid"])
    sink, pub = FakeSink(fail_with=[SinkRefusedError("permission denied") for _ in range(3)]), FakePublisher()
    before = sample("cdcflow_sink_retries_total", read_model="fake", cause="refused")
    processor = BatchProcessor(sink, pub, Backoff(0.1, 1.0), sleep=_no_sleep)
    seen: list[tuple[bool, str | None, float]] = []

    async def watch(delay: float) -> None:
        sleeps.append(delay)
        seen.append((processor.status.waiting, processor.status.cause,
                     sample("cdcflow_sink_waiting", read_model="fake", cause="refused")))

    processor._sleep = watch
    result = run(processor, records(events))
    assert sink.written == [e.event_id for e in events] and not pub.published and result.retries == 3
    assert seen == [(True, "refused", 1.0)] * 3
    assert all(low <= d <= low + 0.1 for d, low in zip(sleeps, [0.1, 0.2, 0.4], strict=True)), sleeps
    assert sample("cdcflow_sink_retries_total", read_model="fake", cause="refused") == before + 3
    assert sample("cdcflow_sink_waiting", read_model="fake", cause="refused") == 0
    assert not processor.status.waiting and processor.status.attempts == 3


def test_an_unexpected_sink_error_is_retried_not_dead_lettered() -> None:
    events = order_lifecycle("orders", "o1", "c1", ["a"], [])
    sink, pub = FakeSink(fail_with=[RuntimeError("a bug"), TypeError("another")]), FakePublisher()
    result = run(BatchProcessor(sink, pub, sleep=_no_sleep), records(events))
    assert sink.written == [events[0].event_id] and not pub.published and result.retries == 2


def test_a_crashed_agent_ends_the_process_even_if_the_shutdown_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from streams import app

    exited = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    monkeypatch.setattr("streams.app.os._exit", fake_exit)
    watch = app.CrashWatch(timeout=0.2)
    watch.crashed("order_view_agent", RuntimeError("boom"))
    watch.crashed("order_view_agent", RuntimeError("again"))  # one watchdog only
    assert exited.wait(5) and codes == [app.EXIT_AGENT_CRASHED]
    assert isinstance(watch.reason, RuntimeError) and str(watch.reason) == "boom"


def test_the_faust_web_server_binds_to_loopback_by_default() -> None:
    from cdc.settings import load_settings
    from streams.app import WorkerSpec, create_app

    settings = load_settings(worker_web_port=16066)
    app, processor = create_app(settings, WorkerSpec.of(settings, "order_view"))
    try:
        assert app.conf.web_bind == "127.0.0.1" and app.conf.web_enabled
        other = load_settings(worker_host="0.0.0.0")
        app2, processor2 = create_app(other, WorkerSpec.of(other, "order_view"))
        processor2.close()
        assert app2.conf.web_bind == "0.0.0.0"
    finally:
        processor.close()
