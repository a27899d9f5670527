"""Leader lease: one active tailer per outbox, with expiry, heartbeat and a fencing token.

The lease is a document in the tailer's own database (`leases`, `_id` = the outbox key). Taking it over
(after it expired, or when free) increments `fence`, a number that only grows; the holder passes its fence to
every checkpoint write, which the checkpoint store refuses once a newer fence exists. So a tailer that was
paused past its lease (GC, SIGSTOP, a network partition) and wakes up cannot overwrite a newer checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pymongo
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from cdc.event import utcnow
from cdc.logs import get_logger
from cdc.metrics import LEADER

Document = dict[str, Any]


def default_instance_id() -> str:
    """host:pid, unique enough among the tailers of one deployment."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """The lease on one outbox, for one tailer instance; `acquire()` then `start_heartbeat()`."""

    def __init__(
        self, leases: Collection[Document], key: str, owner: str, ttl_seconds: float,
        on_crash: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.leases = leases
        self.key = key
        self.owner = owner
        self.ttl = timedelta(seconds=ttl_seconds)
        self.fence: int | None = None
        self._valid_until = 0.0  # monotonic deadline of the last successful acquire/renew
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = get_logger("cdc.lease", outbox=key, owner=owner)
        # The heartbeat thread reports an unexpected error here (the tailer then stops: it cannot keep a lease).
        self._on_crash = on_crash

    # -- state ------------------------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True while we hold the lease and its TTL has not run out since the last successful renewal."""
        with self._lock:
            return self.fence is not None and time.monotonic() < self._valid_until

    def _set(self, fence: int | None, started: float) -> None:
        with self._lock:
            self.fence = fence
            # Count the TTL from before the round trip: we may be later than the server thinks, never earlier.
            self._valid_until = started + self.ttl.total_seconds() if fence is not None else 0.0
        LEADER.labels(self.key).set(1 if fence is not None else 0)

    # -- operations -------------------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours; True when we hold it afterwards."""
        started = time.monotonic()
        now = utcnow()
        try:
            doc = self.leases.find_one_and_update(
                {"_id": self.key, "$or": [{"expires_at": {"$lt": now}}, {"owner": self.owner}]},
                {
                    "$set": {"owner": self.owner, "expires_at": now + self.ttl, "acquired_at": now},
                    "$inc": {"fence": 1},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # held by another tailer (the upsert collided with the live lease)
        if doc is None:
            return False
        self._set(int(doc["fence"]), started)
        self._log.info("lease acquired", fence=self.fence)
        return True

    def renew(self) -> bool:
        """Extend our lease; False (and the lease counts as lost) when someone else has taken it."""
        fence = self.fence
        if fence is None:
            return False
        started = time.monotonic()
        now = utcnow()
        result = self.leases.update_one(
            {"_id": self.key, "owner": self.owner, "fence": fence},
            {"$set": {"expires_at": now + self.ttl}},
        )
        if result.matched_count == 0:
            self._log.warning("lease lost to another tailer", fence=fence)
            self._set(None, started)
            return False
        with self._lock:
            if self.fence == fence:
                self._valid_until = started + self.ttl.total_seconds()
        return True

    def release(self, timeout: float = 2.0) -> None:
        """Give the lease up now (clean shutdown) so a standby takes over without waiting for the TTL; bounded
        by `timeout` (a stop must not wait on a stuck server: the lease then simply expires)."""
        self.stop_heartbeat()
        fence = self.fence
        self._set(None, 0.0)
        if fence is None:
            return
        with contextlib.suppress(PyMongoError), pymongo.timeout(max(0.1, timeout)):
            self.leases.update_one(
                {"_id": self.key, "owner": self.owner, "fence": fence},
                {"$set": {"expires_at": datetime.fromtimestamp(0, tz=utcnow().tzinfo)}},
            )
            self._log.info("lease released", fence=fence)

    # -- heartbeat --------------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Renew in a background thread every TTL/3 until stopped or lost."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.key}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            # A renewal stuck on an unresponsive server is left behind (daemon): the lease expires on its own.
            self._thread.join(timeout=1.0)
        self._thread = None

    def _beat(self) -> None:
        try:
            self._renew_until_stopped()
        except BaseException as exc:
            if self._on_crash is None:
                raise
            self._on_crash(f"lease-{self.key}", exc)

    def _renew_until_stopped(self) -> None:
        interval = self.ttl.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except PyMongoError as exc:
                # MongoDB unreachable: keep trying; `held` turns False once the TTL has run out.
                self._log.warning("lease renewal failed", error=str(exc).split(",")[0][:200])
