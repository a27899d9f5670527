"""MongoDB for local use: SecantusDB (PyPI `secantusdb`), a MongoDB-wire-compatible single-node server.

It runs with `--auth` (SCRAM-SHA-256); given `tls` (the TLS tests' private instance) it accepts TLS only. Its
users are created the way SecantusDB documents it: once (and again whenever the generated passwords change),
the server is started without auth (and without TLS) on a random loopback port, the users and roles are
created, the user list is checked to hold exactly ours, and the server is stopped and
started for good with `--auth` on its own port.

Users (all defined in `admin`; cdc/credentials.py names them):
- `cdcflow_admin`: root (infra and the tests);
- one per service, named like its database (`product_service`, ...): readWrite on that database only;
- `cdcflow_tailer`: role `cdcflowTailer` (read and change-stream every service database, remove from the
  outboxes: the leading tailer prunes what retention allows and Kafka has; it never inserts nor updates there)
  and readWrite on its own database (`cdcflow_tailer`: checkpoints, leases, dead letters).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from cdc.credentials import MONGO_ADMIN, MONGO_SERVICE_USERS, MONGO_TAILER, role_credentials
from cdc.outbox import OUTBOX_COLLECTION
from cdc.services import SERVICE_DATABASES
from cdc.settings import Settings, local_mongo_uri
from infra.errors import InstallError, StartError
from infra.process import port_open, server_environment, wait_until
from infra.secrets import ensure_secrets, mark_provisioned, provisioned_with, write_private
from infra.servers.base import Server

TAILER_ROLE = "cdcflowTailer"
_USER_ALREADY_EXISTS = 51003
_ROLE_ALREADY_EXISTS = 51002


class MongoServer(Server):
    """SecantusDB started as `secantusd-py` on loopback, with transactions and change streams."""

    name = "mongo"
    uri_setting = "MONGO_URI"
    start_timeout = 60.0

    def __init__(
        self, settings: Settings, *, instance: str | None = None, port: int | None = None,
        extra_args: list[str] | None = None, tls: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        super().__init__(settings, instance=instance)
        self.port = port or settings.mongo_port
        # Tests pass e.g. --oplog-max-entries to force "history lost" on a private instance.
        self.extra_args = extra_args or []
        # (certificate chain PEM, key PEM, CA PEM): accept TLS connections only (the TLS tests' private instance).
        self.tls = tls

    @property
    def tls_ca_file(self) -> Path:
        """Where a TLS server keeps the CA that signed its certificate (what its own clients verify with)."""
        return self.data_dir / "tls-ca.pem"

    @property
    def uri(self) -> str:
        """Connection string of this server, as its admin user (holds a password: never log it)."""
        if not self.local:
            return self.settings.mongo_uri
        uri = local_mongo_uri(self.port, role_credentials(self.settings.data_dir, "mongo", "admin"))
        if self.tls is not None:
            uri += f"&tls=true&tlsCAFile={quote(str(self.tls_ca_file))}"
        return uri

    @property
    def endpoint(self) -> str:
        if not self.local:
            # Strip credentials from a configured URI.
            uri = self.settings.mongo_uri
            scheme, _, rest = uri.partition("://")
            return f"{scheme}://{rest.rpartition('@')[2]}"
        return f"127.0.0.1:{self.port}"

    @property
    def ports(self) -> list[int]:
        return [self.port]

    def _binary(self) -> str:
        candidate = Path(sys.executable).parent / "secantusd-py"
        if candidate.exists():
            return str(candidate)
        found = shutil.which("secantusd-py")
        if found is None:
            raise InstallError(self.name, "secantusd-py not found: pip install secantusdb (it is a cdcflow dependency)")
        return found

    def install(self) -> None:
        self._binary()

    def _argv(self, port: int) -> list[str]:
        return [
            self._binary(), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(self.data_dir / "db"),
            "--cache-size", "256M",
            # Keeps idle change streams' resume tokens inside the oplog window, as mongod does.
            "--noop-heartbeat-seconds", "10",
            "--log-level", "WARNING",
            *self.extra_args,
        ]

    def launch(self) -> None:
        passwords = ensure_secrets(self.settings.data_dir, "mongo")
        # The grants are part of what was provisioned: a cdcflow whose roles changed provisions again.
        grants = self._grants()
        if not provisioned_with(self.data_dir, passwords, grants):
            self._provision_users(passwords)
            mark_provisioned(self.data_dir, passwords, grants)
        # TLS on the serving start only: provisioning listens on a random loopback port for its own client.
        tls: list[str] = []
        if self.tls is not None:
            cert, key, ca = self.tls
            cert_file, key_file = self.data_dir / "tls-cert.pem", self.data_dir / "tls-key.pem"
            write_private(cert_file, cert.decode())
            write_private(key_file, key.decode())
            write_private(self.tls_ca_file, ca.decode())
            tls = ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]
        self.process.start([*self._argv(self.port), "--auth", *tls], cwd=self.data_dir)

    # -- users ----------------------------------------------------------------------------------------------

    def _provision_users(self, passwords: dict[str, str]) -> None:
        """Start without auth on a random loopback port, create the users and roles, check, stop."""
        port = _free_port()
        self.process.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.process.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "ab") as log:
            proc = subprocess.Popen(
                self._argv(port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, env=server_environment(), start_new_session=True, umask=0o077,
            )
        try:
            try:
                wait_until(lambda: proc.poll() is not None or port_open(port), 60, what="mongo (provisioning) start")
            except TimeoutError as exc:
                raise StartError(self.name, f"provisioning start: {exc}") from None
            if proc.poll() is not None:
                raise StartError(self.name, f"exited while provisioning users; log {self.process.log_file}:\n"
                                 + self.process.log_tail())
            client: MongoClient[dict[str, Any]] = MongoClient(
                f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=10000
            )
            try:
                self._create_users(client, passwords)
            except PyMongoError as exc:
                raise StartError(self.name, f"creating users failed: {exc}") from None
            finally:
                client.close()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _grants(self) -> dict[str, Any]:
        """The tailer role's privileges and each user's roles."""
        services = list(SERVICE_DATABASES.values())
        state = self.settings.tailer_state_database
        # Collection-scoped where MongoDB allows it (SecantusDB applies privileges per database).
        privileges = [
            *({"resource": {"db": db, "collection": ""}, "actions": ["find", "changeStream", "killCursors",
                                                                   "listCollections", "listIndexes"]}
              for db in services),
            # Pruning (cdc/pruner.py) is the only write the tailer makes to a source.
            *({"resource": {"db": db, "collection": OUTBOX_COLLECTION}, "actions": ["remove"]} for db in services),
        ]
        users: dict[str, list[dict[str, str]]] = {
            MONGO_ADMIN: [{"role": "root", "db": "admin"}],
            MONGO_TAILER: [{"role": TAILER_ROLE, "db": "admin"}, {"role": "readWrite", "db": state}],
            **{
                user: [{"role": "readWrite", "db": SERVICE_DATABASES[svc]}]
                for svc, user in MONGO_SERVICE_USERS.items()
            },
        }
        return {"privileges": privileges, "users": users}

    def _create_users(self, client: MongoClient[dict[str, Any]], passwords: dict[str, str]) -> None:
        admin = client.admin
        grants = self._grants()
        privileges, users = grants["privileges"], grants["users"]
        try:
            admin.command("createRole", TAILER_ROLE, privileges=privileges, roles=[])
        except OperationFailure as exc:
            if exc.code != _ROLE_ALREADY_EXISTS:
                raise
            admin.command("updateRole", TAILER_ROLE, privileges=privileges, roles=[])
        for user, roles in users.items():
            try:
                admin.command("createUser", user, pwd=passwords[user], roles=roles, mechanisms=["SCRAM-SHA-256"])
            except OperationFailure as exc:
                if exc.code != _USER_ALREADY_EXISTS:
                    raise
                admin.command("updateUser", user, pwd=passwords[user], roles=roles)
        # The server listened without auth for a moment: make sure nobody slipped a user or role in meanwhile.
        found = {(u["db"], u["user"]) for u in admin.command("usersInfo", {"forAllDBs": True})["users"]}
        unexpected = found - {("admin", u) for u in users}
        roles_found = {r["role"] for r in admin.command("rolesInfo", 1, showBuiltinRoles=False)["roles"]}
        if unexpected or roles_found - {TAILER_ROLE}:
            raise StartError(
                self.name,
                f"unexpected users/roles appeared while provisioning ({sorted(unexpected)}, "
                f"{sorted(roles_found - {TAILER_ROLE})}): remove {self.data_dir} and run `cdcflow infra up` again",
            )

    def check_health(self) -> str:
        client: MongoClient[dict[str, Any]] = MongoClient(  # as admin: the probe creates a database
            self.uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, socketTimeoutMS=5000
        )
        try:
            hello = client.admin.command("hello")
            coll = client["cdcflow_health"]["probe"]
            marker = uuid.uuid4().hex
            seen = False
            with coll.watch([{"$match": {"operationType": "insert"}}], max_await_time_ms=200) as stream:
                with client.start_session() as session, session.start_transaction():
                    coll.insert_one({"_id": marker}, session=session)
                for _ in range(50):
                    change = stream.try_next()
                    if change is not None and change["documentKey"]["_id"] == marker:
                        seen = True
                        break
            coll.delete_one({"_id": marker})
            if not seen:
                raise RuntimeError("change stream did not see the committed insert")
            return f"hello ok (setName={hello.get('setName', '-')}), transaction + change stream ok"
        except PyMongoError as exc:
            raise RuntimeError(str(exc).split(",")[0]) from exc
        finally:
            client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
