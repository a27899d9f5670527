"""PostgreSQL from Debian's `postgresql` package, with a cluster of our own.

Authentication is on: every connection, TCP or Unix socket, needs a scram-sha-256 password (pg_hba.conf is
written at every start), and the socket lives in the cluster's own 0700 directory (not /tmp) with 0700
permissions. The roles (cdc/credentials.py) are set up in single-user mode before the server starts, so no
password ever crosses a connection or lands in a log, and the cluster never runs with `trust`:
- `postgres`: the superuser (infra, tests);
- `cdcflow_worker`: may create schemas in the database (the read models' schemas are its own);
- `cdcflow_reader`: SELECT on what the worker creates (default privileges), read-only transactions by default,
  no temporary tables.

The cluster directory must belong to the `postgres` OS user (initdb refuses root), who cannot enter our 0700
data folder: it is a fresh directory of unpredictable name made by `mkdtemp` in the temp folder (0700 from
creation, then given to `postgres`), linked from `<data>/postgres/cluster`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from cdc.credentials import POSTGRES_ADMIN, POSTGRES_READER, POSTGRES_WORKER, role_credentials
from cdc.settings import Settings, local_postgres_dsn
from infra.errors import InstallError, StartError
from infra.secrets import ensure_secrets, mark_provisioned, provisioned_with, scram_sha_256_verifier
from infra.servers.base import Server

_PG_ROOT = Path("/usr/lib/postgresql")
_PG_USER = "postgres"
#: The database cdcflow's read models live in (the DSN's).
DATABASE = "postgres"


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

    def __init__(
        self, settings: Settings, *, instance: str | None = None, port: int | None = None,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(settings, instance=instance)
        self.port = port or settings.postgres_port
        # (certificate chain PEM, key PEM): serve TLS only (`hostssl`), for the TLS tests' private instance.
        self.tls = tls

    @property
    def dsn(self) -> str:
        """Connection string of this server, as the superuser (holds a password: never log it)."""
        if not self.local:
            return self.settings.postgres_dsn
        return local_postgres_dsn(self.port, role_credentials(self.settings.data_dir, "postgres", "admin"))

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
    def link(self) -> Path:
        """`<data>/postgres/cluster`: the cluster directory, or a link to it."""
        return self.data_dir / "cluster"

    def _pgdata(self) -> Path:
        """The cluster directory, made on first use: in the data folder when the postgres user can reach it,
        else a private directory of unpredictable name in the temp folder, linked from the data folder."""
        link = self.link
        if link.is_symlink() or link.exists():
            pgdata = link.resolve()
            self._check_owned(pgdata)
            return pgdata
        if self._reachable_by_postgres(self.data_dir):
            link.mkdir(mode=0o700)
            shutil.chown(link, _PG_USER, _PG_USER)
            return link
        # mkdtemp: a new name nobody could predict, created 0700 by us (O_EXCL semantics): no one can have made
        # it, or a link in its place, before we hand it to the postgres user.
        pgdata = Path(tempfile.mkdtemp(prefix="cdcflow-pg-"))
        os.chown(pgdata, pwd.getpwnam(_PG_USER).pw_uid, pwd.getpwnam(_PG_USER).pw_gid)
        link.symlink_to(pgdata)
        return pgdata

    def _check_owned(self, pgdata: Path) -> None:
        # The link may point at a directory made by an older cdcflow at a predictable path: use it only if it
        # is a real directory of the postgres user that nobody else may enter.
        st = pgdata.lstat() if pgdata.exists() else None
        expected = pwd.getpwnam(_PG_USER).pw_uid
        if st is None:
            raise StartError(self.name, f"{self.link} points at {pgdata}, which is gone: remove the link "
                                        "(the cluster's data is lost) and run `cdcflow infra up` again")
        if not pgdata.is_dir() or st.st_uid != expected or st.st_mode & 0o077:
            raise StartError(self.name, f"{pgdata} is not a private directory of the postgres user: remove "
                                        f"{self.link} and run `cdcflow infra up` again")

    @staticmethod
    def _reachable_by_postgres(path: Path) -> bool:
        result = subprocess.run(
            ["setpriv", f"--reuid={_PG_USER}", f"--regid={_PG_USER}", "--init-groups", "test", "-x", str(path)],
            capture_output=True,
        )
        return result.returncode == 0

    def _prepare_cluster(self, bin_dir: Path) -> Path:
        pgdata = self._pgdata()
        if not (pgdata / "PG_VERSION").exists():
            # `-A trust` only fills the initial pg_hba.conf, which `_write_hba` replaces before the first start:
            # the cluster never runs with it. The passwords are set in single-user mode (`_provision`).
            result = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", POSTGRES_ADMIN, "-A", "trust", "-E", "UTF8",
                 "--locale=C.UTF-8", "--no-sync"],
                capture_output=True, text=True, user=_PG_USER, group=_PG_USER, cwd="/tmp", timeout=300,
                umask=0o077,
            )
            if result.returncode != 0:
                raise StartError(self.name, f"initdb failed: {result.stderr.strip()[-300:]}")
        passwords = ensure_secrets(self.settings.data_dir, "postgres")
        if not provisioned_with(self.data_dir, passwords):
            self._provision(bin_dir, pgdata, passwords)
            mark_provisioned(self.data_dir, passwords)
        self._write_hba(pgdata)
        if self.tls is not None:
            self._write_private(pgdata / "server.crt", self.tls[0])
            self._write_private(pgdata / "server.key", self.tls[1])
        return pgdata

    def _provision(self, bin_dir: Path, pgdata: Path, passwords: dict[str, str]) -> None:
        """Set the passwords and create the roles in single-user mode (no server, no connection, no log of
        the passwords: only their SCRAM verifiers are sent, on stdin)."""

        def password(role: str) -> str:
            return "'" + scram_sha_256_verifier(passwords[role]) + "'"

        def ensure_role(role: str) -> str:
            return (f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
                    f"CREATE ROLE {role}; END IF; END$$;")

        db = DATABASE
        plain = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
        statements = [
            f"ALTER ROLE {POSTGRES_ADMIN} PASSWORD {password(POSTGRES_ADMIN)};",
            ensure_role(POSTGRES_WORKER),
            f"ALTER ROLE {POSTGRES_WORKER} {plain} PASSWORD {password(POSTGRES_WORKER)};",
            ensure_role(POSTGRES_READER),
            f"ALTER ROLE {POSTGRES_READER} {plain} PASSWORD {password(POSTGRES_READER)};",
            f"ALTER ROLE {POSTGRES_READER} SET default_transaction_read_only = on;",
            # The worker creates (and so owns) the read models' schemas; nobody else but the superuser may.
            f"REVOKE CREATE, TEMPORARY ON DATABASE {db} FROM PUBLIC;",
            f"GRANT CONNECT ON DATABASE {db} TO {POSTGRES_WORKER}, {POSTGRES_READER};",
            f"GRANT CREATE, TEMPORARY ON DATABASE {db} TO {POSTGRES_WORKER};",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
            # Whatever the worker creates, the reader may read (and nothing more).
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {POSTGRES_WORKER} GRANT USAGE ON SCHEMAS TO {POSTGRES_READER};",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {POSTGRES_WORKER} GRANT SELECT ON TABLES TO {POSTGRES_READER};",
            # A cluster from before authentication: its read models were created by the superuser. Hand them
            # to the worker (and let the reader read them), as if the worker had created them.
            "DO $$DECLARE s record; t record; BEGIN "
            "FOR s IN SELECT nspname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
            f"WHERE r.rolname = '{POSTGRES_ADMIN}' AND nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema', 'public') LOOP "
            f"EXECUTE format('ALTER SCHEMA %I OWNER TO {POSTGRES_WORKER}', s.nspname); "
            "FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = s.nspname "
            f"AND tableowner = '{POSTGRES_ADMIN}' "
            f"LOOP EXECUTE format('ALTER TABLE %I.%I OWNER TO {POSTGRES_WORKER}', s.nspname, t.tablename); END LOOP; "
            f"EXECUTE format('GRANT USAGE ON SCHEMA %I TO {POSTGRES_READER}', s.nspname); "
            f"EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {POSTGRES_READER}', s.nspname); "
            "END LOOP; END$$;",
        ]
        result = subprocess.run(
            [str(bin_dir / "postgres"), "--single", "-D", str(pgdata), "-c", "log_min_messages=warning", db],
            input="\n".join(statements) + "\n", capture_output=True, text=True, user=_PG_USER, group=_PG_USER,
            cwd="/tmp", timeout=120, umask=0o077,
        )
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
        if result.returncode != 0 or errors:
            raise StartError(self.name, "setting up roles (single-user mode) failed: "
                             + " | ".join(errors or [result.stderr.strip()[-300:]]))

    def _write_hba(self, pgdata: Path) -> None:
        """Passwords (scram-sha-256) for every connection; over TCP only with TLS when this instance has it."""
        host = "hostssl" if self.tls is not None else "host"
        self._write_private(pgdata / "pg_hba.conf", "\n".join([
            "# Written by cdcflow infra/ at every start (edits are lost).",
            "local all all scram-sha-256",
            f"{host} all all 127.0.0.1/32 scram-sha-256",
            f"{host} all all ::1/128 scram-sha-256",
            "",
        ]).encode())

    @staticmethod
    def _write_private(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        shutil.chown(path, _PG_USER, _PG_USER)

    def launch(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            raise InstallError(self.name, "PostgreSQL binaries missing; run `cdcflow infra up` to install")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self._prepare_cluster(bin_dir)
        tls = ["-c", "ssl=on", "-c", f"ssl_cert_file={pgdata / 'server.crt'}",
               "-c", f"ssl_key_file={pgdata / 'server.key'}"] if self.tls is not None else []
        self.process.start(
            [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(self.port),
             # The socket in the cluster's own 0700 directory, 0700 itself: only the postgres user reaches it.
             "-c", f"unix_socket_directories={pgdata}", "-c", "unix_socket_permissions=0700",
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=128MB",
             "-c", "password_encryption=scram-sha-256",
             "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "log_min_messages=warning", *tls],
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
