"""`cdcflow status`: is the pipeline keeping up? Gathered from the stores themselves, no agent needed.

- per outbox (the three service databases, with the producers' `service_db_prefix`): events not yet on Kafka
  (created after the newest one the tailer checkpointed) and the age of the oldest one, and the tailer's dead
  letters not re-driven yet;
- per outbox, the tailer: the leader holding the lease (and whether the lease is still live) and the age of
  the checkpoint (an idle outbox still checkpoints every `tailer_heartbeat_seconds`);
- per read model: consumer lag of its consumer group (committed offset vs high watermark, every partition);
  a group that never committed counts everything retained as lag;
- per `<topic>.dlq`: dead letters held, and how many were not replayed yet.

Topics and consumer groups are the deployment's (`kafka_topic_prefix`, `kafka_group_prefix`).

`verdict()` sorts what it finds into three kinds, and the exit code is the worst, as monitoring probes
(Nagios, Icinga, Sensu, a Kubernetes exec probe) read it:

- 2 critical (`problems`): an outbox backlog over `status_max_backlog` events, its oldest event not yet on
  Kafka older than `status_max_backlog_age_seconds`, a read model's consumer lag over `status_max_lag`;
- 3 unknown (`unknown`, when nothing is critical): a part could not be read (MongoDB, Kafka, a `.dlq` topic);
- 1 warning (`warnings`, when nothing is critical or unknown): no live tailer lease, a stale checkpoint,
  dead letters not re-driven (the tailer's or a `.dlq` topic's);
- 0 ok.

Gathering is I/O; the verdict and the formatting are pure functions (unit-tested).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from cdc.checkpoint import CheckpointStore
from cdc.dead_letters import DeadLetterStore
from cdc.kafka import admin_client, broker_count, group_reader, topic_offsets
from cdc.logs import get_logger
from cdc.mongo import mongo_client
from cdc.outbox import backlog
from cdc.services import SERVICE_DATABASES, service_database
from cdc.settings import Settings
from sinks.registry import READ_MODELS
from streams.dlq import dlq_topics as default_dlq_topics
from streams.dlq import replay_group

log = get_logger(__name__)

Document = dict[str, Any]


# -- the report -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxStatus:
    """One service's outbox and the tailer that forwards it."""

    service: str
    database: str
    backlog: int | None = None  # events not yet on Kafka
    oldest_age_seconds: float | None = None  # age of the oldest of them
    leader: str | None = None  # owner of the lease
    lease_live: bool = False  # the lease has not expired
    checkpoint_age_seconds: float | None = None
    dead_letters: int = 0  # the tailer's dead letters not re-driven yet
    error: str | None = None


@dataclass(frozen=True)
class LagStatus:
    """Consumer lag of one read model's consumer group on its topic."""

    read_model: str
    group: str
    topic: str
    lag: int | None = None
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> lag
    committed: bool = False  # the group has committed offsets on this topic
    error: str | None = None


@dataclass(frozen=True)
class DeadLetterStatus:
    """Dead letters held on one `<topic>.dlq` (retention permitting) and those not replayed yet."""

    topic: str
    total: int = 0
    unreplayed: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Thresholds:
    max_lag: int
    max_backlog: int
    max_backlog_age_seconds: float
    #: A checkpoint older than this (while the outbox has a backlog, or always: warning only) looks stuck.
    stale_checkpoint_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            max_lag=settings.status_max_lag,
            max_backlog=settings.status_max_backlog,
            max_backlog_age_seconds=settings.status_max_backlog_age_seconds,
            stale_checkpoint_seconds=max(3 * settings.tailer_heartbeat_seconds, 30.0),
        )


@dataclass(frozen=True)
class Status:
    outboxes: list[OutboxStatus]
    read_models: list[LagStatus]
    dead_letters: list[DeadLetterStatus]
    thresholds: Thresholds
    problems: list[str]
    warnings: list[str]
    gathered_at: datetime
    unknown: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing critical and everything could be read (warnings allowed)."""
        return not self.problems and not self.unknown

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warning, 2 critical, 3 unknown (a part could not be read and nothing is critical)."""
        return exit_code(self.problems, self.warnings, self.unknown)

    @property
    def level(self) -> str:
        return LEVELS[self.exit_code]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["level"] = self.level
        data["exit_code"] = self.exit_code
        data["gathered_at"] = self.gathered_at.isoformat()
        for rm in data["read_models"]:
            rm["partitions"] = {str(p): n for p, n in rm["partitions"].items()}
        return data


# -- verdict (pure) ---------------------------------------------------------------------------------------

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LEVELS = {OK: "ok", WARNING: "warning", CRITICAL: "critical", UNKNOWN: "unknown"}


def exit_code(problems: Sequence[str], warnings: Sequence[str], unknown: Sequence[str]) -> int:
    """The probe's exit code: critical over unknown over warning over ok."""
    if problems:
        return CRITICAL
    if unknown:
        return UNKNOWN
    return WARNING if warnings else OK


def verdict(
    outboxes: Sequence[OutboxStatus],
    read_models: Sequence[LagStatus],
    dead_letters: Sequence[DeadLetterStatus],
    thresholds: Thresholds,
) -> tuple[list[str], list[str], list[str]]:
    """(problems: critical, warnings, unknown: what could not be read)."""
    problems: list[str] = []
    warnings: list[str] = []
    unknown: list[str] = []
    for o in outboxes:
        if o.error:
            unknown.append(f"outbox {o.database}: cannot read it: {o.error}")
            continue
        if o.backlog is not None and o.backlog > thresholds.max_backlog:
            problems.append(
                f"outbox {o.database}: {o.backlog} events not yet on Kafka (max {thresholds.max_backlog})"
            )
        if o.oldest_age_seconds is not None and o.oldest_age_seconds > thresholds.max_backlog_age_seconds:
            problems.append(
                f"outbox {o.database}: oldest event not yet on Kafka is {_age(o.oldest_age_seconds)} old "
                f"(max {_age(thresholds.max_backlog_age_seconds)})"
            )
        if o.dead_letters:
            warnings.append(f"outbox {o.database}: {o.dead_letters} outbox documents dead-lettered by the tailer "
                            "(`cdcflow dlq list`)")
        if not o.lease_live:
            warnings.append(f"outbox {o.database}: no live tailer lease (is `cdcflow tail` running?)")
        elif o.checkpoint_age_seconds is not None and o.checkpoint_age_seconds > thresholds.stale_checkpoint_seconds:
            warnings.append(f"outbox {o.database}: checkpoint is {_age(o.checkpoint_age_seconds)} old")
    for rm in read_models:
        if rm.error:
            unknown.append(f"read model {rm.read_model}: cannot read lag of {rm.group}: {rm.error}")
        elif rm.lag is not None and rm.lag > thresholds.max_lag:
            problems.append(
                f"read model {rm.read_model}: lag {rm.lag} on {rm.topic} (max {thresholds.max_lag})"
            )
    for d in dead_letters:
        if d.error:
            unknown.append(f"{d.topic}: cannot read it: {d.error}")
        elif d.unreplayed:
            warnings.append(f"{d.topic}: {d.unreplayed} dead letters not replayed (`cdcflow dlq list`)")
    return problems, warnings, unknown


def replication_warnings(replication_factor: int, brokers: int | None) -> list[str]:
    """A warning when cdcflow creates topics with one replica on a cluster that could hold more."""
    if brokers is not None and brokers > 1 and replication_factor == 1:
        return [
            f"kafka: {brokers} brokers, but cdcflow creates its topics with replication factor 1 (a broker lost "
            "loses their data): set CDCFLOW_KAFKA_REPLICATION_FACTOR (3) and CDCFLOW_KAFKA_MIN_INSYNC_REPLICAS (2)"
        ]
    return []


def _age(seconds: float) -> str:
    """A short human age: 42s, 3m05s, 2h10m, 3d4h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


format_age = _age


# -- gathering (I/O) --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LagTarget:
    """A consumer group whose lag on `topic` to report, under the name `read_model`."""

    read_model: str
    group: str
    topic: str


def service_databases(settings: Settings) -> dict[str, str]:
    """service -> database, named exactly as the producers name them (with `service_db_prefix`)."""
    return {svc: service_database(settings, svc) for svc in SERVICE_DATABASES}


def default_lag_targets(settings: Settings) -> list[LagTarget]:
    """Every read model's consumer group on its topic, as this deployment names them (its prefixes)."""
    return [LagTarget(rm.name, settings.kafka_group(rm.consumer_group()), settings.kafka_topic(rm.topic))
            for rm in READ_MODELS.values()]


def outbox_status(
    client: MongoClient[Document], settings: Settings, service: str, database: str, now: datetime
) -> OutboxStatus:
    """Backlog of one outbox (events created after the newest one on Kafka), with its tailer lease, checkpoint and
    dead letters (4 light queries + 1 count)."""
    key = f"{database}.{settings.tailer_collection}"
    try:
        state = client[settings.tailer_state_database]
        lease = state["leases"].find_one({"_id": key}, projection={"owner": 1, "expires_at": 1})
        checkpoint = CheckpointStore(state["checkpoints"]).load(key)
        count, oldest = backlog(client[database][settings.tailer_collection], checkpoint.watermark)
        dead = DeadLetterStore.of(settings, client).pending(key)
    except PyMongoError as exc:
        return OutboxStatus(service, database, error=_short(exc))
    expires = _aware(lease.get("expires_at")) if lease else None
    updated = _aware(checkpoint.updated_at)
    oldest_at = _aware(oldest)
    return OutboxStatus(
        service=service,
        database=database,
        backlog=count,
        oldest_age_seconds=max(0.0, (now - oldest_at).total_seconds()) if oldest_at else None,
        leader=str(lease["owner"]) if lease and lease.get("owner") else None,
        lease_live=expires is not None and expires > now,
        checkpoint_age_seconds=max(0.0, (now - updated).total_seconds()) if updated else None,
        dead_letters=dead,
    )


def lag_of(marks: dict[int, tuple[int, int]], committed: dict[int, int]) -> dict[int, int]:
    """Per-partition lag: high watermark minus the committed offset (the low watermark when none, or when
    retention deleted past it)."""
    return {p: max(0, hi - max(committed.get(p, lo), lo)) for p, (lo, hi) in marks.items()}


def lag_status(settings: Settings, target: LagTarget, timeout: float) -> LagStatus:
    consumer = group_reader(settings, target.group)
    try:
        found = topic_offsets(consumer, target.topic, timeout)
    except Exception as exc:
        return LagStatus(target.read_model, target.group, target.topic, error=_short(exc))
    finally:
        consumer.close()
    if found is None:
        return LagStatus(target.read_model, target.group, target.topic, lag=0, error=None)
    marks, committed = found
    per = lag_of(marks, committed)
    return LagStatus(
        target.read_model, target.group, target.topic, lag=sum(per.values()), partitions=per,
        committed=bool(committed),
    )


def dead_letter_status(settings: Settings, topic: str, timeout: float) -> DeadLetterStatus:
    consumer = group_reader(settings, replay_group(settings, topic))
    try:
        found = topic_offsets(consumer, topic, timeout)
    except Exception as exc:
        return DeadLetterStatus(topic, error=_short(exc))
    finally:
        consumer.close()
    if found is None:
        return DeadLetterStatus(topic)
    marks, committed = found
    total = sum(hi - lo for lo, hi in marks.values())
    return DeadLetterStatus(topic, total=total, unreplayed=sum(lag_of(marks, committed).values()))


def gather_status(
    settings: Settings,
    *,
    databases: dict[str, str] | None = None,
    lag_targets: Iterable[LagTarget] | None = None,
    dlq_topics: Iterable[str] | None = None,
    client: MongoClient[Document] | None = None,
) -> Status:
    """The whole status (defaults: the three service outboxes, every read model, every `<topic>.dlq`)."""
    started = time.monotonic()
    timeout = settings.status_timeout_seconds
    now = datetime.now(UTC)
    dbs = databases if databases is not None else service_databases(settings)
    own = client is None
    mongo = client or mongo_client(
        settings, appname="cdcflow-status", serverSelectionTimeoutMS=int(timeout * 1000),
        socketTimeoutMS=int(timeout * 1000),
    )
    try:
        outboxes = [outbox_status(mongo, settings, svc, db, now) for svc, db in dbs.items()]
    finally:
        if own:
            mongo.close()
    targets = list(lag_targets) if lag_targets is not None else default_lag_targets(settings)
    lags = [lag_status(settings, t, timeout) for t in targets]
    topics = list(dlq_topics) if dlq_topics is not None else default_dlq_topics(settings)
    letters = [dead_letter_status(settings, t, timeout) for t in topics]
    thresholds = Thresholds.from_settings(settings)
    problems, warnings, unknown = verdict(outboxes, lags, letters, thresholds)
    warnings += replication_warnings(settings.kafka_replication_factor, _brokers(settings, timeout))
    log.debug("status_gathered", seconds=round(time.monotonic() - started, 3), problems=len(problems),
              unknown=len(unknown))
    return Status(outboxes, lags, letters, thresholds, problems, warnings, now, unknown)


def _brokers(settings: Settings, timeout: float) -> int | None:
    try:
        return broker_count(admin_client(settings), timeout)
    except Exception as exc:  # the lag checks above already report an unreachable cluster
        log.debug("broker_count_failed", error=_short(exc))
        return None


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _short(exc: BaseException) -> str:
    return str(exc).split("\n")[0].split(", Timeout:")[0][:200] or type(exc).__name__


# -- rendering (pure) -------------------------------------------------------------------------------------


def render_lines(status: Status) -> list[str]:
    """A plain-text rendering (tests, logs); the CLI draws rich tables from the same data."""
    lines = []
    for o in status.outboxes:
        if o.error:
            lines.append(f"outbox {o.database}: ERROR {o.error}")
            continue
        age = "-" if o.oldest_age_seconds is None else _age(o.oldest_age_seconds)
        ckpt = "-" if o.checkpoint_age_seconds is None else _age(o.checkpoint_age_seconds)
        leader = (o.leader or "-") + ("" if o.lease_live else " (expired)" if o.leader else "")
        lines.append(f"outbox {o.database}: backlog {o.backlog} oldest {age} leader {leader} checkpoint {ckpt} "
                     f"dead letters {o.dead_letters}")
    for rm in status.read_models:
        lag = "ERROR " + rm.error if rm.error else str(rm.lag)
        lines.append(f"read model {rm.read_model} ({rm.group} on {rm.topic}): lag {lag}")
    for d in status.dead_letters:
        lines.append(f"{d.topic}: {d.total} dead letters, {d.unreplayed} not replayed")
    lines.extend(f"PROBLEM: {p}" for p in status.problems)
    lines.extend(f"UNKNOWN: {u}" for u in status.unknown)
    lines.extend(f"warning: {w}" for w in status.warnings)
    lines.append(f"status: {status.level.upper()} (exit code {status.exit_code})")
    return lines
