"""Schemathesis hooks of the HTTP fuzz (tests/integration/test_http_fuzz.py): times and days at the edges of the
range are drawn half of the time, since a default draw almost never lands there, and that is where conversions
to UTC overflow and stores refuse dates (a 0001-01-01T00:00:00+01:00 once made two APIs answer 500)."""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

EDGE_DATES = ["0001-01-01", "0999-12-31", "1000-01-01", "1969-12-31", "1970-01-01", "2038-01-19", "9999-12-31"]
EDGE_TIMES = [
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:59:59+23:59",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T00:00:00-23:59",
    "1969-12-31T23:59:59.999Z",
    "2038-01-19T03:14:08Z",
]


def _edges_or(edges: list[str], default: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(edges), default)


schemathesis.openapi.format("date", _edges_or(EDGE_DATES, st.dates().map(str)))
schemathesis.openapi.format(
    "date-time",
    _edges_or(EDGE_TIMES, st.datetimes(timezones=st.timezones() | st.just(None)).map(lambda t: t.isoformat())),
)
