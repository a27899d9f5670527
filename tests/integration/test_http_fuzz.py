"""Schemathesis against the four HTTP APIs, served as real processes on the real stores, with keys configured.

Every phase (schema examples, boundary coverage, random fuzzing, stateful sequences following the OpenAPI
links), positive and negative data, a fixed seed and a bounded number of examples. Zero server errors, zero
answers outside the declared schema (status codes, bodies, headers, content types), schema-invalid requests
refused with a 4xx, a missing key refused (ignored_auth), 405 with the right Allow header.

Not checked: `positive_data_acceptance` (a schema-valid request may still be 404/409 by business rule, e.g. an
order id nobody created, or a page-view time more than a day ahead) and the response time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc.services import SERVICE_DATABASES, service_database
from cdc.settings import REPO_ROOT, Settings
from tests.helpers import unique
from tests.http_support import READ_KEY, WRITE_KEY, Served, serve
from tests.usage_support import Seeded, seeded_read_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261130
#: Examples per operation and phase: the whole fuzz of the four APIs stays near 3 minutes on 2 cores.
MAX_EXAMPLES = 15
APPS = ("product", "order", "clickstream", "read-api")

CONFIG = """\
seed = {seed}
request-timeout = 30
workers = 1
hooks = "tests.fuzz_hooks"

[generation]
mode = "all"
max-examples = {examples}
deterministic = true

[checks]
positive_data_acceptance.enabled = false
# 413 is a refusal too: the coverage phase sends arrays far over maxItems, past the body limit.
negative_data_rejection.expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]

[phases.stateful]
max-steps = 6

[auth.openapi.apiKey]
bearer = "${{CDCFLOW_FUZZ_KEY}}"
"""

#: The read API is fuzzed over seeded read models: half of the ids and days it gets are ones that exist.
READ_API_DATA = """
[dictionaries]
order_ids = {{ values = ["o-c1", "o-c2", "o-c3"] }}
customer_ids = {{ values = ["c1", "c2", "c3"] }}
product_ids = {{ values = ["pA", "pB", "pC", "pD"] }}
user_ids = {{ values = ["u1", "u2"] }}
days = {{ values = ["{day}"] }}

[parameters]
"path.order_id" = {{ dictionary = "order_ids", probability = 0.5 }}
"path.customer_id" = {{ dictionary = "customer_ids", probability = 0.5 }}
"path.product_id" = {{ dictionary = "product_ids", probability = 0.5 }}
"path.user_id" = {{ dictionary = "user_ids", probability = 0.5 }}
"query.day" = {{ dictionary = "days", probability = 0.5 }}
"""


@pytest.fixture(scope="module")
def seeded(settings: Settings, postgres: object, neo4j: object, cassandra: object) -> Iterator[Seeded]:
    with seeded_read_models(settings) as s:
        yield s


def fuzz(app: Served, key: str, workdir: Path, extra: str = "") -> tuple[int, str]:
    """Run Schemathesis against `app`; (exit code, its report)."""
    config = workdir / f"{app.name}.toml"
    config.write_text(CONFIG.format(seed=SEED, examples=MAX_EXAMPLES) + extra)
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "--config-file", str(config), "run", "--no-color", f"{app.url}/openapi.json"],
        capture_output=True, text=True, timeout=600, cwd=workdir,
        env={"PATH": "/usr/bin:/bin", "HOME": str(workdir), "PYTHONPATH": str(REPO_ROOT), "CDCFLOW_FUZZ_KEY": key},
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("name", APPS)
def test_schemathesis_finds_nothing(
    name: str, settings: Settings, mongo: object, seeded: Seeded, tmp_path: Path
) -> None:
    prefix = unique("fuzz") + "_"
    env = {
        "CDCFLOW_SERVICE_DB_PREFIX": prefix,
        "CDCFLOW_SINK_NAMESPACE": seeded.namespace,
        "CDCFLOW_WRITE_API_KEY": WRITE_KEY,
        "CDCFLOW_READ_API_KEY": READ_KEY,
        # Read-your-writes waits (GET /orders/{id}?wait_ms=) kept short: a fuzzed wait for a version nobody writes
        # lasts its whole wait_ms, and the fuzz sends many.
        "CDCFLOW_READ_API_MAX_WAIT_MS": "300",
    }
    if name != "read-api":  # a service's own MongoDB user reaches its real database only, not this test's
        env["CDCFLOW_ROLE"] = "admin"
    started = time.monotonic()
    try:
        with serve(name, env, tmp_path) as app:
            if name == "read-api":
                code, report = fuzz(app, READ_KEY, tmp_path, READ_API_DATA.format(day=seeded.day.isoformat()))
            else:
                code, report = fuzz(app, WRITE_KEY, tmp_path)
            server_log = app.log.read_text()
    finally:
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(settings.mongo_uri)
        for service in SERVICE_DATABASES:
            client.drop_database(service_database(settings.model_copy(update={"service_db_prefix": prefix}), service))
        client.close()
    print(f"{name}: schemathesis ran {time.monotonic() - started:.0f} s\n{report[-1500:]}")
    assert code == 0, (
        f"schemathesis found problems in {name}:\n{report[-12000:]}\n--- server log ---\n{server_log[-3000:]}"
    )
    assert "unexpected_error" not in server_log, server_log[-3000:]
