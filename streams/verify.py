"""`replay --rebuild --verify`: compare the rebuilt shadow with the live model before the swap.

The live model moves while it is compared (live workers keep writing), so a difference is not by itself an
error. The shadow holds everything up to its *end offsets*; each difference is judged by what could have caused it:

- the live row is ahead of the shadow's (a higher version, or a row the shadow lacks): explained when the row's
  aggregate has records on the topic after the shadow's end (read once the comparison is done, so they cover
  whatever the live workers applied meanwhile); otherwise the topic does not explain the live row (retention
  removed its events, something wrote to the model directly, or a bug) and the swap would lose it;
- the live row is behind (a lower version, or a row only the shadow has): explained while the live workers'
  committed offsets are behind the shadow's end (they have not got there yet); once they are past it, the live
  model should have it and does not;
- the same version with different values: never explained (same events, different result);
- unversioned rows (page views, visitors) that differ: explained by later records or lagging workers, as above.

Both models are walked side by side in key order (`Sink.entries`), so memory holds a page of each plus the
differences kept for judging (at most `MAX_KEPT`; past it the verify refuses without judging the rest).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cdc.errors import CdcError
from sinks.base import Entry, EntryKey

#: Differences kept to be judged once the topic's tail is read; more than that: refused outright.
MAX_KEPT = 10_000
#: Unexplained differences shown in the refusal message.
SHOWN = 5

MISSING_IN_SHADOW = "missing_in_shadow"
MISSING_IN_LIVE = "missing_in_live"
LIVE_AHEAD = "live_ahead"
LIVE_BEHIND = "live_behind"
VALUE = "value"


class VerifyOrderError(CdcError):
    """A model's entries did not come in ascending key order: they cannot be compared side by side."""


@dataclass(frozen=True)
class Difference:
    """One key on which the live model and the shadow differ."""

    kind: str
    key: EntryKey
    aggregate: str
    live: Entry | None
    shadow: Entry | None

    def describe(self) -> str:
        """One line for a person: the key, both versions, and what differs."""
        key = "/".join(str(k) for k in self.key)
        lv = "-" if self.live is None else self.live.version
        sv = "-" if self.shadow is None else self.shadow.version
        if self.kind == MISSING_IN_SHADOW:
            what = "only in the live model"
        elif self.kind == MISSING_IN_LIVE:
            what = "only in the shadow"
        elif self.kind == VALUE:
            assert self.live is not None and self.shadow is not None
            what = "differs: " + _changes(self.live.value, self.shadow.value)
        else:
            what = f"live at version {lv}, shadow at version {sv}"
        return f"{key} (aggregate {self.aggregate}, live v{lv}, shadow v{sv}): {what}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"kind": self.kind, "key": list(self.key), "aggregate": self.aggregate,
                "live": None if self.live is None else self.live.value,
                "shadow": None if self.shadow is None else self.shadow.value}


def _changes(live: Any, shadow: Any) -> str:
    if isinstance(live, dict) and isinstance(shadow, dict):
        names = sorted(k for k in live.keys() | shadow.keys() if live.get(k) != shadow.get(k))
        return ", ".join(f"{n} live={live.get(n)!r} shadow={shadow.get(n)!r}" for n in names[:4])
    return f"live={live!r} shadow={shadow!r}"


def diff(live: Iterable[Entry], shadow: Iterable[Entry]) -> Iterator[Difference | Entry]:
    """Walk both models in key order: yields a Difference per differing key, and the live Entry of each key
    that is equal on both sides (so the caller can count them). VerifyOrderError if a side is out of order."""
    lives, shadows = _ordered(live, "live"), _ordered(shadow, "shadow")
    a, b = next(lives, None), next(shadows, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.key < b.key):
            assert a is not None
            yield Difference(MISSING_IN_SHADOW, a.key, a.aggregate, a, None)
            a = next(lives, None)
        elif a is None or b.key < a.key:
            yield Difference(MISSING_IN_LIVE, b.key, b.aggregate, None, b)
            b = next(shadows, None)
        else:
            if a.version is not None and b.version is not None and a.version != b.version:
                yield Difference(LIVE_AHEAD if a.version > b.version else LIVE_BEHIND, a.key, a.aggregate, a, b)
            elif a.value != b.value or a.version != b.version:
                yield Difference(VALUE, a.key, a.aggregate, a, b)
            else:
                yield a
            a, b = next(lives, None), next(shadows, None)


def _ordered(entries: Iterable[Entry], side: str) -> Iterator[Entry]:
    last: EntryKey | None = None
    for entry in entries:
        if last is not None and not last < entry.key:
            raise VerifyOrderError(f"the {side} model's rows are not in ascending key order at {entry.key!r} "
                                   f"(after {last!r}): cannot compare")
        last = entry.key
        yield entry


@dataclass
class Verification:
    """The outcome of comparing the shadow with the live model."""

    equal: int = 0
    explained: Counter[str] = field(default_factory=Counter)
    unexplained: int = 0
    examples: list[Difference] = field(default_factory=list)
    overflow: bool = False
    live_caught_up: bool = False

    @property
    def ok(self) -> bool:
        """True when every difference is explained."""
        return not self.unexplained and not self.overflow

    def message(self) -> str:
        """Why the swap is refused (or that it is not), for a person."""
        if self.overflow:
            return (f"more than {MAX_KEPT} differences between the shadow and the live model: not judged one "
                    "by one; refused")
        if self.ok:
            explained = sum(self.explained.values())
            return f"{self.equal} row(s) equal, {explained} difference(s) explained ({dict(self.explained)})"
        lines = [f"{self.unexplained} unexplained difference(s) between the shadow and the live model "
                 f"({self.equal} row(s) equal, {sum(self.explained.values())} explained); the first:"]
        lines += [f"  {d.describe()}" for d in self.examples]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"ok": self.ok, "equal": self.equal, "explained": dict(self.explained),
                "unexplained": self.unexplained, "overflow": self.overflow, "live_caught_up": self.live_caught_up,
                "examples": [d.to_json() for d in self.examples]}


def collect(live: Iterable[Entry], shadow: Iterable[Entry]) -> tuple[int, list[Difference], bool]:
    """(equal rows, the differences, whether there were more than MAX_KEPT: the rest not kept)."""
    equal, kept = 0, list[Difference]()
    for item in diff(live, shadow):
        if isinstance(item, Entry):
            equal += 1
        elif len(kept) >= MAX_KEPT:
            return equal, kept, True
        else:
            kept.append(item)
    return equal, kept, False


def judge(
    equal: int, differences: Iterable[Difference], *, later: set[str], live_caught_up: bool, overflow: bool = False,
) -> Verification:
    """Explain each difference by `later` (aggregates with records after the shadow's end) or by live workers
    that are behind it (`live_caught_up` False); the rest are unexplained."""
    out = Verification(equal=equal, overflow=overflow, live_caught_up=live_caught_up)
    for d in differences:
        reason = _explanation(d, later, live_caught_up)
        if reason is not None:
            out.explained[reason] += 1
            continue
        out.unexplained += 1
        if len(out.examples) < SHOWN:
            out.examples.append(d)
    return out


def _explanation(d: Difference, later: set[str], live_caught_up: bool) -> str | None:
    if d.kind in (MISSING_IN_SHADOW, LIVE_AHEAD):
        return "later_events" if d.aggregate in later else None
    if d.kind in (MISSING_IN_LIVE, LIVE_BEHIND):
        return None if live_caught_up else "live_behind"
    versioned = d.live is not None and d.live.version is not None
    if versioned:
        return None  # the same version, different values: the same events cannot explain it
    if d.aggregate in later:
        return "later_events"
    return None if live_caught_up else "live_behind"
