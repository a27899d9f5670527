"""Two tailers, one lease: kill -9 the active one, the standby takes over; a stale leader is fenced."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cdc.checkpoint import CheckpointStore, FencedError, Position
from cdc.lease import Lease
from cdc.mongo import mongo_client
from cdc.settings import Settings
from infra.servers.base import Server
from tests.helpers import unique, wait_for
from tests.integration.test_tailer_support import (
    TopicReader,
    Writer,
    assert_per_aggregate_order,
    kill9,
    make_events,
    spawn_tailer,
    terminate,
)

pytestmark = pytest.mark.integration

TTL = 3.0


def test_standby_takes_over_after_kill9(settings: Settings, mongo: Server, kafka: Server, tmp_path: Path) -> None:
    db, topic = unique("tail_ha"), unique("tail_topic")
    client = mongo_client(settings)
    leases = client[settings.tailer_state_database]["leases"]
    docs = make_events(topic, aggregates=50, per_aggregate=60)
    reader = TopicReader(settings, topic)
    env = {"CDCFLOW_TAILER_LEASE_TTL_SECONDS": str(TTL)}
    procs = [spawn_tailer(settings, [db], tmp_path / f"tail{i}.log", **env) for i in range(2)]
    # Half before the kill, the other half only after it: the standby must forward events written after it.
    writer = Writer(client[db].outbox, docs, batch=50, pause=0.02, allowed=len(docs) // 2)
    try:
        holder: str = wait_for(lambda: (leases.find_one({"_id": f"{db}.outbox"}) or {}).get("owner", ""), 30,
                               what="a leader")
        active = next(p for p in procs if holder.endswith(f":{p.pid}"))
        standby = next(p for p in procs if p is not active)
        writer.start()
        wait_for(lambda: reader.seen() > 200, 60, what="progress")
        killed_at = time.monotonic()
        kill9(active)
        wait_for(lambda: (leases.find_one({"_id": f"{db}.outbox"}) or {}).get("owner", "").endswith(
            f":{standby.pid}"), TTL + 10, what="the standby taking the lease")
        took_over = time.monotonic() - killed_at
        assert took_over <= TTL + 2.0, f"takeover took {took_over:.1f}s (lease TTL {TTL}s)"
        writer.allow(len(docs))
        writer.join(120)
        assert writer.error is None
        reader.wait_for({d["_id"] for d in docs}, timeout=120)
        assert terminate(standby) == 0
        reader.poll(0.5)
        assert_per_aggregate_order(reader.records)
        assert "lease acquired" in (tmp_path / "tail0.log").read_text() + (tmp_path / "tail1.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        reader.close()
        client.drop_database(db)
        client.close()


def test_paused_leader_cannot_checkpoint_after_losing_the_lease(settings: Settings, mongo: Server) -> None:
    client = mongo_client(settings)
    state = client[settings.tailer_state_database]
    key = f"{unique('tail_fence')}.outbox"
    store = CheckpointStore(state["checkpoints"])
    old = Lease(state["leases"], key, f"old:{os.getpid()}", ttl_seconds=1.0)
    new = Lease(state["leases"], key, f"new:{os.getpid()}", ttl_seconds=1.0)
    try:
        assert old.try_acquire()
        assert old.fence is not None
        old_session = store.begin_session(key, old.fence)
        store.save(key, _at("01"), fence=old.fence, session=old_session, seq=1, owner=old.owner)
        assert not new.try_acquire(), "a live lease must not be taken over"
        # The old leader pauses (no heartbeat) past its TTL; the standby takes over and checkpoints.
        wait_for(lambda: new.try_acquire(), 10, what="takeover after expiry")
        assert new.fence is not None and new.fence > old.fence
        new_session = store.begin_session(key, new.fence)
        assert not old.held
        # The old leader wakes up and tries to write its (older) position: refused, before and after the
        # new leader's first checkpoint.
        with pytest.raises(FencedError):
            store.save(key, _at("02"), fence=old.fence, session=old_session, seq=2, owner=old.owner)
        store.save(key, _at("03"), fence=new.fence, session=new_session, seq=1, owner=new.owner)
        with pytest.raises(FencedError):
            store.save(key, _at("02"), fence=old.fence, session=old_session, seq=3, owner=old.owner)
        assert not old.renew()
        assert store.load(key).token == {"_data": "03"}
    finally:
        state["leases"].delete_one({"_id": key})
        state["checkpoints"].delete_one({"_id": key})
        client.close()


def _at(data: str) -> Position:
    return Position({"_data": data}, None, None)


def test_checkpoint_never_moves_backwards(settings: Settings, mongo: Server) -> None:
    """A late write of an earlier session (or an earlier write of this one) does not overwrite a newer one."""
    client = mongo_client(settings)
    state = client[settings.tailer_state_database]
    key = f"{unique('tail_mono')}.outbox"
    store = CheckpointStore(state["checkpoints"])
    try:
        first = store.begin_session(key, fence=1)
        second = store.begin_session(key, fence=1)
        assert second > first
        store.save(key, _at("10"), fence=1, session=second, seq=1)
        # A stalled write of the earlier session arrives late: dropped without an error (same leader).
        store.save(key, _at("09"), fence=1, session=first, seq=7)
        assert store.load(key).token == {"_data": "10"}
        store.save(key, _at("11"), fence=1, session=second, seq=3)
        store.save(key, _at("10b"), fence=1, session=second, seq=2)  # reordered within the session
        assert store.load(key).token == {"_data": "11"}
    finally:
        state["checkpoints"].delete_one({"_id": key})
        client.close()
