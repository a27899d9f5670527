"""Outbox retention: the leading tailer deletes what is old enough and known to be on Kafka.

Every `outbox_prune_interval_seconds`, for each outbox whose lease this tailer holds, documents created before
both `now - outbox_retention_seconds` and the checkpoint's `scan_from` are deleted. So retention never removes
an event that has not reached Kafka, however long the tailer was away, and a catch-up scan always finds what it
needs. (This replaces a TTL index on a `published_at` date, which needed one update per event on the source.)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

from pymongo.errors import PyMongoError

from cdc.event import utcnow
from cdc.logs import get_logger
from cdc.metrics import EVENTS
from cdc.outbox import prune
from cdc.session import Outbox, short
from cdc.settings import Settings

log = get_logger(__name__)


class Pruner:
    """Deletes expired outbox documents of the outboxes this tailer leads; `run()` until `stop` is set."""

    def __init__(self, settings: Settings, outboxes: Sequence[Outbox], stop: threading.Event) -> None:
        self.settings = settings
        self.outboxes = list(outboxes)
        self.stop = stop
        self.pruned = 0

    def run(self) -> None:
        while not self.stop.wait(self.settings.outbox_prune_interval_seconds):
            self.prune_once()

    def prune_once(self) -> int:
        """One pass over the outboxes this tailer leads; returns how many documents it deleted."""
        deleted = 0
        retention = timedelta(seconds=self.settings.outbox_retention_seconds)
        for outbox in self.outboxes:
            if self.stop.is_set() or not outbox.lease.held:
                continue
            try:
                scan_from = outbox.store.load(outbox.key).scan_from
                if scan_from is None:
                    continue  # nothing is known to be on Kafka yet
                before = min(utcnow() - retention, scan_from)
                count = prune(outbox.collection, before)
            except PyMongoError as exc:
                log.warning("outbox_prune_failed", outbox=outbox.key, error=short(exc))
                continue
            if count:
                EVENTS.labels("pruned", outbox.key).inc(count)
                log.info("outbox_pruned", outbox=outbox.key, deleted=count, before=before.isoformat())
            deleted += count
        self.pruned += deleted
        return deleted
