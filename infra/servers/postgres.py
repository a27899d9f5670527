"""PostgreSQL from Debian's `postgresql` package, with a cluster of our own under the data folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psycopg

from cdc.settings import Settings
from infra.errors import InstallError, StartError
from infra.servers.base import Server

_PG_ROOT = Path("/usr/lib/postgresql")
_PG_USER = "postgres"


def _pg_bin() -> Path | None:
    versions = sorted(
        (p for p in _PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


class PostgresServer(Server):
    """A private Postgres cluster on loopback, run as the `postgres` OS user (initdb refuses root)."""

    name = "postgres"
    uri_setting = "POSTGRES_DSN"
    start_timeout = 60.0

    def __init__(self, settings: Settings, *, instance: str | None = None, port: int | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.port = port or settings.postgres_port

    @property
    def dsn(self) -> str:
        """Connection string of this server (contains credentials for an external one: never log it)."""
        if not self.local:
            return self.settings.postgres_dsn
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def endpoint(self) -> str:
        if not self.local:
            info = psycopg.conninfo.conninfo_to_dict(self.settings.postgres_dsn)
            return f"{info.get('host', '?')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        return f"127.0.0.1:{self.port}"

    @property
    def ports(self) -> list[int]:
        return [self.port]

    def install(self) -> None:
        if _pg_bin() is not None:
            return
        if os.geteuid() != 0:
            raise InstallError(
                self.name, "PostgreSQL is not installed and we are not root: apt-get install -y postgresql"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if result.returncode != 0:
                raise InstallError(self.name, f"`{' '.join(cmd)}` failed: {result.stderr.strip()[-300:]}")
        if _pg_bin() is None:
            raise InstallError(
                self.name, "apt-get installed postgresql but no initdb was found under /usr/lib/postgresql"
            )

    @property
    def pgdata(self) -> Path:
        """The cluster directory: in the data folder when the postgres user can reach it, else beside /tmp."""
        local = self.data_dir / "cluster"
        if local.is_symlink() or local.exists():
            return local.resolve()
        if self._reachable_by_postgres(self.data_dir):
            return local
        # A checkout under a private (0700) folder: the postgres user cannot enter it. Keep the cluster in a
        # folder of its own and leave a link in the data folder, so `.data/` still shows everything.
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:10]
        return Path("/tmp") / f"cdcflow-pg-{digest}"

    @staticmethod
    def _reachable_by_postgres(path: Path) -> bool:
        result = subprocess.run(
            ["setpriv", f"--reuid={_PG_USER}", f"--regid={_PG_USER}", "--init-groups", "test", "-x", str(path)],
            capture_output=True,
        )
        return result.returncode == 0

    def _prepare_cluster(self, bin_dir: Path) -> Path:
        pgdata = self.pgdata
        if (pgdata / "PG_VERSION").exists():
            return pgdata
        pgdata.mkdir(parents=True, exist_ok=True)
        shutil.chown(pgdata, _PG_USER, _PG_USER)
        pgdata.chmod(0o700)
        link = self.data_dir / "cluster"
        if pgdata != link and not link.exists():
            link.symlink_to(pgdata)
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"],
            capture_output=True, text=True, user=_PG_USER, group=_PG_USER, cwd="/tmp", timeout=300,
        )
        if result.returncode != 0:
            raise StartError(self.name, f"initdb failed: {result.stderr.strip()[-300:]}")
        return pgdata

    def launch(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            raise InstallError(self.name, "PostgreSQL binaries missing; run `cdcflow infra up` to install")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self._prepare_cluster(bin_dir)
        self.process.start(
            [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(self.port), "-k", "/tmp",
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=128MB",
             "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "log_min_messages=warning"],
            cwd=Path("/tmp"),
            user=_PG_USER,
        )

    def stop(self) -> bool:
        """Fast shutdown (SIGINT): SIGTERM is Postgres' "smart" mode, which waits for every client to leave."""
        return self.process.stop(timeout=60, sig=signal.SIGINT)

    def check_health(self) -> str:
        with psycopg.connect(self.dsn, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute("SELECT 1, current_setting('server_version')").fetchone()
        if row is None or row[0] != 1:
            raise RuntimeError("SELECT 1 returned nothing")
        return f"SELECT 1 ok (PostgreSQL {row[1]})"
