"""MongoDB for local use: SecantusDB (PyPI `secantusdb`), a MongoDB-wire-compatible single-node server."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from cdc.settings import Settings
from infra.errors import InstallError
from infra.servers.base import Server


class MongoServer(Server):
    """SecantusDB started as `secantusd-py` on loopback, with transactions and change streams."""

    name = "mongo"
    uri_setting = "MONGO_URI"
    start_timeout = 60.0

    def __init__(
        self, settings: Settings, *, instance: str | None = None, port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(settings, instance=instance)
        self.port = port or settings.mongo_port
        # Tests pass e.g. --oplog-max-entries to force "history lost" on a private instance.
        self.extra_args = extra_args or []

    @property
    def uri(self) -> str:
        """Connection string of this server."""
        if not self.local:
            return self.settings.mongo_uri
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

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

    def launch(self) -> None:
        argv = [
            self._binary(), "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", str(self.data_dir / "db"),
            "--cache-size", "256M",
            # Keeps idle change streams' resume tokens inside the oplog window, as mongod does.
            "--noop-heartbeat-seconds", "10",
            "--log-level", "WARNING",
            *self.extra_args,
        ]
        self.process.start(argv, cwd=self.data_dir)

    def check_health(self) -> str:
        client: MongoClient[dict[str, Any]] = MongoClient(
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
