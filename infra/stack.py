"""The whole local stack: bring every server up in parallel, report status, stop what we started."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from cdc.settings import Settings
from infra.errors import InfraError
from infra.secrets import private_dir, tighten
from infra.servers.base import Server, ServerStatus

SERVER_NAMES = ("mongo", "kafka", "postgres", "cassandra", "neo4j")
_CLASS_NAMES = {
    "mongo": "MongoServer",
    "kafka": "KafkaServer",
    "postgres": "PostgresServer",
    "cassandra": "CassandraServer",
    "neo4j": "Neo4jServer",
}


def build_servers(settings: Settings, names: Sequence[str] | None = None) -> list[Server]:
    """The server objects for `names` (all five by default), in a stable order."""
    wanted = list(names) if names else list(SERVER_NAMES)
    unknown = [n for n in wanted if n not in SERVER_NAMES]
    if unknown:
        raise InfraError(unknown[0], f"unknown server; choose from {', '.join(SERVER_NAMES)}")
    servers: list[Server] = []
    for n in wanted:
        # Imported on demand: each module pulls in its own client library.
        module = importlib.import_module(f"infra.servers.{n}")
        cls: type[Server] = getattr(module, _CLASS_NAMES[n])
        servers.append(cls(settings))
    return servers


class StackError(Exception):
    """One or more servers failed to come up; `errors` holds each one's InfraError."""

    def __init__(self, errors: list[InfraError], statuses: list[ServerStatus]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
        self.statuses = statuses


def up(settings: Settings, names: Sequence[str] | None = None) -> list[ServerStatus]:
    """Install if missing, start and wait for health, all servers at once; raise StackError on any failure."""
    servers = build_servers(settings, names)
    private_dir(settings.runtime_dir)
    tighten(settings.data_dir)
    statuses: list[ServerStatus] = []
    errors: list[InfraError] = []
    # Threads: each server's start is mostly waiting (Maven, JVM start-up), so they overlap well.
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = [(s, pool.submit(s.ensure_running)) for s in servers]
        for server, future in futures:
            try:
                statuses.append(future.result())
            except InfraError as exc:
                errors.append(exc)
                statuses.append(server.status())
    if errors:
        raise StackError(errors, statuses)
    return statuses


def down(settings: Settings, names: Sequence[str] | None = None) -> list[str]:
    """Stop the local servers we started (by pid); returns the names that were running."""
    servers = [s for s in build_servers(settings, names) if s.local]
    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        results = list(pool.map(lambda s: (s.name, s.stop()), servers))
    return [name for name, was_running in results if was_running]


def status(settings: Settings, names: Sequence[str] | None = None) -> list[ServerStatus]:
    """Health of every server, without starting anything."""
    servers = build_servers(settings, names)
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        return list(pool.map(lambda s: s.status(), servers))
