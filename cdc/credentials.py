"""The generated credentials of the local servers: which user each role is, and where the passwords are kept.

`cdcflow infra up` generates one password per server user once (infra/secrets.py writes them) and keeps them
in `<data dir>/secrets/<server>.json` (folder 0700, files 0600, `{"user": "password"}`). Settings reads them
here when the matching URI/password setting is unset, so the demo, the tests and every command find them
without anyone typing a password.

A process declares its *role* (`Settings.role`; each `cdcflow` command sets its own, library use and tests
default to `admin`) and gets only that role's users: a service its own MongoDB user, the tailer its own, the
workers theirs, the read API the read-only ones. A role with no user on a server connects to it without
credentials, and the server refuses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

Role = Literal["admin", "product", "order", "clickstream", "tailer", "worker", "reader"]
ROLES: tuple[Role, ...] = ("admin", "product", "order", "clickstream", "tailer", "worker", "reader")

# -- the users of each local server --------------------------------------------------------------------------

MONGO_ADMIN = "cdcflow_admin"
MONGO_TAILER = "cdcflow_tailer"
#: service -> its MongoDB user (readWrite on its own database only); the user is named like the database.
MONGO_SERVICE_USERS = {"product": "product_service", "order": "order_service", "clickstream": "clickstream_service"}

POSTGRES_ADMIN = "postgres"
POSTGRES_WORKER = "cdcflow_worker"  # owns the read-model schemas (creates them at worker start)
POSTGRES_READER = "cdcflow_reader"  # SELECT only

CASSANDRA_ADMIN = "cdcflow_admin"  # replaces the default cassandra/cassandra superuser
CASSANDRA_WORKER = "cdcflow_worker"
CASSANDRA_READER = "cdcflow_reader"

NEO4J_USER = "neo4j"  # Neo4j Community has one kind of user (no roles): reads are kept read-only per transaction

KAFKA_CLIENT = "cdcflow"  # SASL/SCRAM user of every client (no authorizer: see README)
KAFKA_BROKER = "broker"  # the broker's inter-broker SCRAM user
KAFKA_CONTROLLER = "controller"  # SASL/PLAIN on the controller listener (KRaft controllers cannot use SCRAM)

#: server -> role -> user. A role missing here has no credentials on that server.
ROLE_USERS: dict[str, dict[Role, str]] = {
    "mongo": {
        "admin": MONGO_ADMIN,
        "product": MONGO_SERVICE_USERS["product"],
        "order": MONGO_SERVICE_USERS["order"],
        "clickstream": MONGO_SERVICE_USERS["clickstream"],
        "tailer": MONGO_TAILER,
    },
    "postgres": {"admin": POSTGRES_ADMIN, "worker": POSTGRES_WORKER, "reader": POSTGRES_READER},
    "cassandra": {"admin": CASSANDRA_ADMIN, "worker": CASSANDRA_WORKER, "reader": CASSANDRA_READER},
    "neo4j": {"admin": NEO4J_USER, "worker": NEO4J_USER, "reader": NEO4J_USER},
    "kafka": {"admin": KAFKA_CLIENT, "tailer": KAFKA_CLIENT, "worker": KAFKA_CLIENT},
}

#: Every user infra/ generates a password for, per server.
SERVER_USERS: dict[str, tuple[str, ...]] = {
    "mongo": (MONGO_ADMIN, MONGO_TAILER, *MONGO_SERVICE_USERS.values()),
    "postgres": (POSTGRES_ADMIN, POSTGRES_WORKER, POSTGRES_READER),
    "cassandra": (CASSANDRA_ADMIN, CASSANDRA_WORKER, CASSANDRA_READER),
    "neo4j": (NEO4J_USER,),
    "kafka": (KAFKA_CLIENT, KAFKA_BROKER, KAFKA_CONTROLLER),
}


def secrets_dir(data_dir: Path) -> Path:
    """The folder of the generated passwords (0700)."""
    return data_dir / "secrets"


def secrets_file(data_dir: Path, server: str) -> Path:
    """The password file of one server (0600)."""
    return secrets_dir(data_dir) / f"{server}.json"


def read_secrets(data_dir: Path, server: str) -> dict[str, str]:
    """{user: password} of one local server; empty when none were generated yet (or the file is unreadable)."""
    path = secrets_file(data_dir, server)
    try:
        # O_NOFOLLOW: a password file that is a symlink was not written by us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(fd, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError:
            return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def role_credentials(data_dir: Path, server: str, role: Role) -> tuple[str, str] | None:
    """(user, password) of `role` on the local `server`, or None (no user for that role, or not generated)."""
    user = ROLE_USERS.get(server, {}).get(role)
    if user is None:
        return None
    password = read_secrets(data_dir, server).get(user)
    return None if password is None else (user, password)
