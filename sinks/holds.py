"""Holds, the pure part: given the aggregates held in a store, what a batch applies, parks and releases.

An aggregate is *held* by one dead-lettered event (its id). While held, its other events are *parked* (kept in
the store, in arrival order, not applied). When the held event itself comes back (re-driven after a fix), it is
applied, then every parked event of its aggregate, in order, and the hold ends: the read model then equals the
fold of the aggregate's events in their original order, as if nothing had been dead-lettered.

The stores (sinks/postgres.py, sinks/purchase_graph.py) read the holds of a batch's aggregates, call
`plan_holds`, park `plan.park`, load and delete the parked events of `plan.released`, and apply
`plan.events(parked)`, all in the write's one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cdc.errors import InvalidEventError
from cdc.event import Event
from sinks.base import PermanentSinkError


@dataclass(frozen=True)
class _Release:
    """The held event of `aggregate_id` was applied just before: its parked events follow."""

    aggregate_id: str
    #: Events of this batch parked before the held event came (they follow the stored ones).
    pending: tuple[Event, ...]


@dataclass
class HoldPlan:
    """What to do with a batch."""

    steps: list[Event | _Release] = field(default_factory=list)
    #: Events to park (aggregates still held after the batch), in arrival order per aggregate.
    park: list[Event] = field(default_factory=list)
    #: Aggregates whose hold ends in this batch (delete their hold and parked events).
    released: list[str] = field(default_factory=list)

    def events(self, parked: Mapping[str, Sequence[Event]]) -> list[Event]:
        """The events to apply, in order, given the stored parked events of the released aggregates."""
        out: list[Event] = []
        for step in self.steps:
            if isinstance(step, _Release):
                out.extend(parked.get(step.aggregate_id, ()))
                out.extend(step.pending)
            else:
                out.append(step)
        return out


def plan_holds(batch: Sequence[Event], held: Mapping[str, str]) -> HoldPlan:
    """Sort `batch` out against `held` (aggregate id -> the held event's id)."""
    plan = HoldPlan()
    if not held:
        plan.steps.extend(batch)
        return plan
    holding = dict(held)
    parked_here: dict[str, list[Event]] = {}
    for event in batch:
        aggregate = event.aggregate_id
        target = holding.get(aggregate)
        if target is None:
            plan.steps.append(event)
        elif event.event_id == target:
            plan.steps.append(event)
            plan.steps.append(_Release(aggregate, tuple(parked_here.pop(aggregate, ()))))
            plan.released.append(aggregate)
            del holding[aggregate]
        else:
            parked_here.setdefault(aggregate, []).append(event)
    plan.park = [e for events in parked_here.values() for e in events]  # in arrival order per aggregate
    return plan


def unpark(value: bytes | str, held_event_id: str) -> Event:
    """An event a sink parked behind `held_event_id`, decoded again (PermanentSinkError if it no longer decodes)."""
    try:
        return Event.from_json(value)
    except InvalidEventError as exc:  # stored by us, so only a changed event definition gets here
        raise PermanentSinkError(
            f"an event parked behind {held_event_id} no longer decodes: {exc}", event_id=held_event_id
        ) from exc
