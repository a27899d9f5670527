"""The soak, short: services, tailer and workers under load while the tailer and a worker are killed (-9) and
Kafka and Postgres are stopped and brought back; afterwards every read model equals its source (bench/soak.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak
from cdc.settings import Settings
from infra.servers.base import Server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_a_short_soak_with_every_fault_leaves_every_read_model_equal_to_its_source(
    settings: Settings, mongo: Server, kafka: Server, postgres: Server, cassandra: Server, neo4j: Server,
    restart_after: list[Server], tmp_path: Path,
) -> None:
    restart_after.extend([kafka, postgres])  # brought back (healthy) whatever happens
    with soak(settings, {"kafka": kafka, "postgres": postgres}, tmp_path) as run:
        report = run.run(duration=45, rate=15, down_seconds=8, settle_timeout=240)
        print(report.render())  # the seed and the faults, to replay a failure with bench/soak.py --seed
        assert [f.done_at is not None for f in report.faults] == [True] * 4, report.render()
        assert report.load["requests_ok"] > 100, report.render()
        assert report.counts["orders"] > 5 and report.counts["page views"] > 50, report.render()
        assert report.ok, report.render()
