"""infra pure logic: the local Kafka's cluster id."""

from __future__ import annotations

import uuid

import pytest

from infra.servers import kafka


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage tool reads an id starting with "-" as an option: such ids (1 in 64) are drawn again."""
    draws = iter([uuid.UUID(bytes=b"\xf8" + b"\x00" * 15), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    assert kafka.cluster_id() == "AQEBAQEBAQEBAQEBAQEBAQ"
    monkeypatch.undo()
    assert not any(kafka.cluster_id().startswith("-") for _ in range(2000))
