"""`cdcflow trace EVENT_ID`: where one event is now, hop by hop, from the stores themselves.

- outbox: which service's outbox holds it, and whether it is on Kafka by the tailer's checkpoint (an event is
  on Kafka once its `occurred_at` is at or before the checkpoint's `watermark`, cdc/checkpoint.py); the tailer's
  own dead letter for it, if any (cdc/dead_letters.py);
- Kafka: its topic, partition and offset, found without stored state (cdc/kafka_search.py: partition from the
  key, first offset from the time, then a bounded scan);
- each read model that takes it: applied or not, the model's version of its aggregate and the row (or edges,
  or view), and whether the aggregate is held back behind a dead letter (sinks/trace.py);
- the workers' dead letters (`<topic>.dlq`) that carry it.

The event's content comes from the first place that has it: its outbox, the tailer's dead letter, a worker's
dead letter, or (once pruned from the outbox) the Kafka record that `--topic/--key/--since` point to.
Exit code 0 when it was found somewhere, 1 when nowhere, 2 for a bad argument.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.table import Table

from cdc.checkpoint import CheckpointStore
from cdc.dead_letters import DeadLetterStore
from cdc.errors import InvalidEventError
from cdc.event import Event
from cdc.kafka_search import Search, find_event_record
from cdc.mongo import mongo_client
from cdc.services import SERVICE_DATABASES, service_database
from cdc.settings import Settings

Document = dict[str, Any]

#: Records read of one partition at most, by default (about a second or two of reading here).
DEFAULT_MAX_RECORDS = 200_000


@dataclass
class TraceReport:
    """Everything `trace` found about one event."""

    event_id: str
    event: dict[str, Any] | None = None
    source: str | None = None  # where the event's content came from
    outboxes: list[dict[str, Any]] = field(default_factory=list)
    tailer_dead_letters: list[dict[str, Any]] = field(default_factory=list)
    kafka: dict[str, Any] | None = None
    read_models: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Found anywhere: an outbox, a dead letter, Kafka, a read model."""
        return bool(
            any(o.get("present") for o in self.outboxes) or self.tailer_dead_letters or self.dead_letters
            or (self.kafka and self.kafka.get("found")) or any(r.get("applied") for r in self.read_models)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "found": self.found, "event": self.event, "source": self.source,
            "outboxes": self.outboxes, "tailer_dead_letters": self.tailer_dead_letters, "kafka": self.kafka,
            "read_models": self.read_models, "dead_letters": self.dead_letters, "errors": self.errors,
        }


def outbox_databases(settings: Settings) -> list[str]:
    """The outboxes an event can be in: the tailer's databases and the services' (with their prefix)."""
    names = list(settings.tailer_databases)
    names += [service_database(settings, s) for s in SERVICE_DATABASES if service_database(settings, s) not in names]
    return names


def _event_json(event: Event) -> dict[str, Any]:
    data = event.to_json_dict()
    data.pop("payload", None)
    data["payload_keys"] = sorted(event.payload)
    return data


def _look_in_outboxes(settings: Settings, client: MongoClient[Document], event_id: str,
                      report: TraceReport) -> Event | None:
    event: Event | None = None
    state = client[settings.tailer_state_database]
    checkpoints = CheckpointStore(state["checkpoints"])
    for database in outbox_databases(settings):
        key = f"{database}.{settings.tailer_collection}"
        doc = client[database][settings.tailer_collection].find_one({"_id": event_id})
        if doc is None:
            continue
        entry: dict[str, Any] = {"outbox": key, "present": True}
        try:
            found = Event.parse(doc)
        except InvalidEventError as exc:
            entry["invalid"] = str(exc)[:300]
            report.outboxes.append(entry)
            continue
        checkpoint = checkpoints.load(key)
        watermark = checkpoint.watermark
        entry["watermark"] = None if watermark is None else watermark.isoformat()
        entry["on_kafka"] = watermark is not None and found.occurred_at <= watermark
        entry["checkpoint_updated_at"] = None if checkpoint.updated_at is None else str(checkpoint.updated_at)
        report.outboxes.append(entry)
        if event is None:
            event, report.source = found, f"outbox {key}"
    letters = DeadLetterStore.of(settings, client).collection.find({"document_id": event_id})
    for letter in letters:
        report.tailer_dead_letters.append({
            "outbox": letter.get("outbox"), "kind": letter.get("kind"), "reason": letter.get("reason"),
            "topic": letter.get("topic"), "at": str(letter.get("at")),
            "replayed_at": None if letter.get("replayed_at") is None else str(letter["replayed_at"]),
        })
        if event is None and letter.get("document"):
            with contextlib.suppress(InvalidEventError):
                event, report.source = Event.parse(letter["document"]), "tailer dead letter"
    return event


def _look_in_dead_letter_topics(settings: Settings, event_id: str, report: TraceReport,
                                timeout: float) -> Event | None:
    from streams.dlq import list_dead_letters

    event: Event | None = None
    for letter in list_dead_letters(settings, timeout=timeout):
        if letter.event_id != event_id:
            continue
        data = letter.to_json()
        data.pop("value", None)
        report.dead_letters.append(data)
        if event is None and letter.value:
            try:
                event = Event.from_json(letter.value)
                report.source = report.source or f"dead letter {letter.dlq_topic}"
            except InvalidEventError:
                pass
    return event


def _kafka_json(search: Search, settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = {
        "topic": search.topic, "topic_exists": search.exists, "found": search.found is not None,
        "partitions": search.partitions, "expected_partition": search.expected_partition,
        "partitioner": search.partitioner, "since": None if search.since is None else search.since.isoformat(),
        "scanned": [{"partition": p.partition, "from_offset": p.start, "end_offset": p.end, "records": p.scanned,
                     "reached_end": p.reached_end} for p in search.scanned],
        "complete": search.complete,
    }
    if search.found is not None:
        r = search.found
        data.update(partition=r.partition, offset=r.offset,
                    timestamp=None if r.timestamp is None else r.timestamp.isoformat(),
                    headers={k: v.decode(errors="replace") for k, v in r.headers})
    return data


def trace_event(
    settings: Settings,
    event_id: str,
    *,
    namespace: str | None = None,
    topic: str | None = None,
    key: str | None = None,
    since: datetime | None = None,
    max_records: int = DEFAULT_MAX_RECORDS,
    margin: timedelta | None = None,
    all_partitions: bool = False,
    timeout: float = 30.0,
) -> TraceReport:
    """Where event `event_id` is now (see the module's docstring); `topic` (logical), `key` and `since` find
    its Kafka record when no outbox or dead letter has the event any more."""
    report = TraceReport(event_id)
    event: Event | None = None
    client = mongo_client(settings, appname="cdcflow-trace", serverSelectionTimeoutMS=int(timeout * 1000))
    try:
        event = _look_in_outboxes(settings, client, event_id, report)
    except PyMongoError as exc:
        report.errors.append(f"MongoDB: {str(exc).split(', full error')[0][:300]}")
    finally:
        client.close()
    try:
        found = _look_in_dead_letter_topics(settings, event_id, report, timeout)
        event = event or found
    except Exception as exc:  # a broker that does not answer is reported, the rest still is
        report.errors.append(f"dead-letter topics: {type(exc).__name__}: {str(exc)[:300]}")
    margin = margin if margin is not None else timedelta(seconds=settings.tailer_scan_margin_seconds)
    search_topic = event.topic if event is not None else topic
    search_key = event.aggregate_id if event is not None else key
    search_since = event.occurred_at if event is not None else since
    if search_topic and search_key and search_since is not None:
        try:
            search = find_event_record(
                settings, settings.kafka_topic(search_topic), search_key.encode(), event_id, search_since,
                margin=margin, max_records=max_records, all_partitions=all_partitions, timeout=timeout,
            )
            report.kafka = _kafka_json(search, settings)
            if event is None and search.found is not None and search.found.value:
                try:
                    event, report.source = Event.from_json(search.found.value), "kafka"
                except InvalidEventError as exc:
                    report.errors.append(f"the Kafka record does not decode: {exc}")
        except Exception as exc:
            report.errors.append(f"Kafka: {type(exc).__name__}: {str(exc)[:300]}")
    if event is not None:
        report.event = _event_json(event)
        report.read_models = _read_models(settings, event, namespace)
    return report


def _read_models(settings: Settings, event: Event, namespace: str | None) -> list[dict[str, Any]]:
    from sinks.registry import READ_MODELS
    from sinks.trace import place

    out = []
    for rm in READ_MODELS.values():
        if rm.topic != event.topic:
            continue
        sink = rm.sink(settings, namespace)
        try:
            if event.type not in sink.event_types:
                continue
            out.append(place(sink, event).to_json())
        finally:
            sink.close()
    return out


# -- rendering ----------------------------------------------------------------------------------------------


def render(report: TraceReport) -> list[Any]:
    """Rich renderables of a report (the `--json` form is `report.to_json()`)."""
    lines: list[Any] = []
    e = report.event
    if e is None:
        lines.append(f"event {report.event_id}: its content was not found (outbox pruned? pass --topic, --key and "
                     "--since to search Kafka)" if not report.found else f"event {report.event_id}")
    else:
        lines.append(f"event {report.event_id}: {e['type']} of {e['aggregate_type']} {e['aggregate_id']} "
                     f"v{e.get('version') or '-'} on {e['topic']}, occurred {e['occurred_at']} "
                     f"(trace {e.get('headers', {}).get('trace_id', '-')}; from the {report.source})")
    hops = Table(title="where it is", show_header=True)
    for column in ("hop", "where", "state"):
        hops.add_column(column)
    if not report.outboxes:
        hops.add_row("outbox", "-", "not in any outbox (pruned after retention, or never written)")
    for o in report.outboxes:
        state = ("invalid document: " + o["invalid"]) if "invalid" in o else (
            "on Kafka (checkpoint watermark " + str(o["watermark"]) + ")" if o.get("on_kafka")
            else "not yet on Kafka (watermark " + str(o.get("watermark")) + ")")
        hops.add_row("outbox", o["outbox"], state)
    for t in report.tailer_dead_letters:
        hops.add_row("tailer dead letter", str(t["outbox"]),
                     f"{t['kind']}: {t['reason']}" + (" (re-driven)" if t["replayed_at"] else ""))
    k = report.kafka
    if k is None:
        hops.add_row("kafka", "-", "not searched (the event's topic, key and time are unknown)")
    elif not k["topic_exists"]:
        hops.add_row("kafka", k["topic"], "the topic does not exist")
    elif k["found"]:
        hops.add_row("kafka", f"{k['topic']}[{k['partition']}]@{k['offset']}", f"produced {k['timestamp']}")
    else:
        scanned = ", ".join(f"[{p['partition']}] {p['records']} from @{p['from_offset']}"
                            + ("" if p["reached_end"] else " (stopped)") for p in k["scanned"])
        hops.add_row("kafka", k["topic"], f"not found since {k['since']}: read {scanned or 'nothing'}")
    for rm in report.read_models:
        if rm["error"]:
            state = f"[red]cannot read it: {rm['error']}[/red]"
        else:
            state = {True: "applied", False: "not applied", None: "unknown"}[rm["applied"]]
            if rm["version"] is not None:
                state += f" (model at version {rm['version']})"
            if rm["held"]:
                state += (f"; aggregate held behind {rm['held']['event_id']} v{rm['held']['version']} "
                          f"({rm['held']['parked']} parked)")
            if rm["parked"]:
                state += "; this event is parked"
            if rm["note"]:
                state += f"; {rm['note']}"
        hops.add_row("read model", f"{rm['read_model']} ({rm['namespace']})", state)
    for d in report.dead_letters:
        hops.add_row("dead letter", f"{d['dlq_topic']}[{d['dlq_partition']}]@{d['dlq_offset']}",
                     f"{d['read_model']}: {d['reason']}" + (" (replayed)" if d["replayed"] else ""))
    lines.append(hops)
    lines.extend(f"[red]error[/red] {err}" for err in report.errors)
    return lines


def register(app: typer.Typer) -> None:
    """Add `trace` to the cdcflow command line."""

    @app.command("trace")
    def trace(
        ctx: typer.Context,
        event_id: Annotated[str, typer.Argument(help="The event's id (a UUID).")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
        namespace: Annotated[
            str | None, typer.Option(help="Read models' namespace (default CDCFLOW_SINK_NAMESPACE).")
        ] = None,
        topic: Annotated[str | None, typer.Option(help="When the outbox no longer has it: its topic.")] = None,
        key: Annotated[str | None, typer.Option(help="... its key (aggregate id).")] = None,
        since: Annotated[str | None, typer.Option(metavar="ISO-TIME", help="... about when it was created.")] = None,
        max_records: Annotated[
            int, typer.Option(min=1, help="Records of a partition to read at most while searching Kafka.")
        ] = DEFAULT_MAX_RECORDS,
        all_partitions: Annotated[
            bool, typer.Option(help="Search every partition, not only the key's (another partitioner).")
        ] = False,
        timeout: Annotated[float, typer.Option(min=1, help="Seconds for each store's part of the search.")] = 30.0,
    ) -> None:
        """Where one event is now: outbox (on Kafka per the checkpoint?), Kafka topic/partition/offset, each read
        model (applied? its version, held back?), dead letters. Exit 0 found, 1 found nowhere, 2 bad argument."""
        settings: Settings = ctx.obj
        try:
            canonical = str(uuid.UUID(event_id))
        except ValueError:
            typer.secho(f"error: not an event id (a UUID): {event_id[:100]!r}", fg="red", err=True)
            raise typer.Exit(2) from None
        when = None
        if since is not None:
            from cli.tail import parse_iso_time

            when = parse_iso_time(since)
        if namespace is not None:
            from sinks.base import check_namespace

            try:
                check_namespace(namespace)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        report = trace_event(settings, canonical, namespace=namespace, topic=topic, key=key, since=when,
                             max_records=max_records, all_partitions=all_partitions, timeout=timeout)
        if as_json:
            typer.echo(json.dumps(report.to_json(), indent=2, default=str))
        else:
            console = Console(width=None if Console().is_terminal else 160)
            for item in render(report):
                console.print(item)
        if not report.found:
            raise typer.Exit(1)


__all__ = ["TraceReport", "render", "trace_event"]
