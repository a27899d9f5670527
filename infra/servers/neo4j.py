"""The local Neo4j: the embedded DBMS from Maven Central with Bolt enabled, run by our own small launcher."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cdc.connect import neo4j_driver
from cdc.credentials import NEO4J_USER
from cdc.settings import Settings
from infra.errors import InstallError
from infra.maven import fetch_jars, java_binary
from infra.secrets import ensure_secrets, mark_provisioned, provisioned_with, write_private
from infra.servers.base import Server

COORDINATES = ["org.neo4j:neo4j:5.26.30"]
#: Parquet import only; leaving them out saves ~20 MB and 11 jars.
EXCLUSIONS = ["org.apache.hadoop:*", "blue.strategic.parquet:*"]
LAUNCHER_SOURCE = Path(__file__).resolve().parent.parent / "java" / "Neo4jLauncher.java"
MAIN_CLASS = "Neo4jLauncher"

_STALE_LAUNCHER_SECONDS = 24 * 3600

_JVM_ARGS = [
    "-Xms64m",
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    # Neo4j's page cache and Bolt reach into these; it runs without them but warns at every start.
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "-Dfile.encoding=UTF-8",
]


class Neo4jServer(Server):
    """Neo4j 5.26 LTS serving Bolt (no HTTP; auth on, user `neo4j` with a generated password) with its home under
    the data dir. The launcher sets the password (Bolt closed meanwhile) when it changed. Bolt is plaintext,
    or TLS only when `tls` is given (the TLS tests' private instance)."""

    name = "neo4j"
    uri_setting = "NEO4J_URI"
    port_setting = "CDCFLOW_NEO4J_BOLT_PORT"
    # The first start builds the store twice (the password is set with Bolt closed): slow on a busy machine.
    start_timeout = 240.0

    def __init__(
        self, settings: Settings, *, instance: str | None = None, tls: tuple[bytes, bytes, bytes] | None = None,
        max_heap: str = "512m",
    ) -> None:
        super().__init__(settings, instance=instance)
        self.lib_dir = settings.cache_dir / self.name / "lib"
        self._pending: dict[str, str] | None = None  # passwords the launcher is setting right now
        # (certificate chain PEM, PKCS#8 key PEM, CA PEM): Bolt accepts TLS connections only.
        self.tls = tls
        self.max_heap = max_heap

    @property
    def tls_dir(self) -> Path:
        """The Bolt SSL policy's base directory (`private.key`, `public.crt`) and the CA (`ca.pem`)."""
        return self.data_dir / "bolt-tls"

    def client_settings(self) -> Settings:
        """Settings whose Neo4j driver reaches this server (verifying it against its CA when it serves TLS)."""
        if self.tls is None:
            return self.settings
        return self.settings.model_copy(update={"neo4j_ca_file": self.tls_dir / "ca.pem"})

    @property
    def endpoint(self) -> str:
        """The Bolt URI."""
        return self.settings.neo4j_uri

    @property
    def ports(self) -> list[int]:
        """The Bolt port."""
        return [self.settings.neo4j_bolt_port]

    @property
    def classes_dir(self) -> Path:
        """Where the compiled launcher lives; the name carries a hash so a changed source recompiles."""
        digest = hashlib.sha256(LAUNCHER_SOURCE.read_bytes())
        digest.update("\n".join(COORDINATES).encode())
        return self.settings.cache_dir / self.name / f"launcher-{digest.hexdigest()[:16]}"

    def install(self) -> None:
        """Fetch the Neo4j jars (once) and compile the launcher against them (when its source changed)."""
        java_binary(self.name)
        if not LAUNCHER_SOURCE.is_file():
            raise InstallError(self.name, f"missing {LAUNCHER_SOURCE}: reinstall cdcflow (package data)")
        self.lib_dir = fetch_jars(self.name, COORDINATES, self.settings.cache_dir, EXCLUSIONS)
        target = self.classes_dir
        if (target / f"{MAIN_CLASS}.class").is_file():
            return
        javac = shutil.which("javac")
        if javac is None:
            raise InstallError(
                self.name, "`javac` is not on PATH: apt-get install -y openjdk-17-jdk-headless"
            )
        # Compile aside and rename, so an interrupted compile never leaves a half-filled launcher dir.
        tmp = Path(tempfile.mkdtemp(prefix=".launcher-", dir=target.parent))
        try:
            result = subprocess.run(
                [javac, "-nowarn", "-cp", f"{self.lib_dir}/*", "-d", str(tmp), str(LAUNCHER_SOURCE)],
                capture_output=True, text=True, timeout=300,
            )
            if result.returncode != 0:
                tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
                raise InstallError(self.name, "compiling Neo4jLauncher.java failed: " + " | ".join(tail))
            # Checkouts of other versions share this cache and may be starting theirs right now: only launchers
            # unused for a day go (a missing one is compiled again on demand).
            stale = time.time() - _STALE_LAUNCHER_SECONDS
            for old in target.parent.glob("launcher-*"):
                with contextlib.suppress(OSError):  # another checkout may prune at the same time
                    if old.stat().st_mtime < stale:
                        shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def launch(self) -> None:
        """Start the launcher JVM on the Bolt port with its home in the data dir."""
        java = java_binary(self.name)
        classes = self.classes_dir
        if not (classes / f"{MAIN_CLASS}.class").is_file() or not any(self.lib_dir.glob("*.jar")):
            raise InstallError(self.name, f"not installed under {classes.parent}: run `cdcflow infra up`")
        os.utime(classes)  # in use: not stale (install prunes launchers unused for a day)
        tls: list[str] = []
        if self.tls is not None:
            cert, key, ca = self.tls
            write_private(self.tls_dir / "public.crt", cert.decode())
            write_private(self.tls_dir / "private.key", key.decode())
            write_private(self.tls_dir / "ca.pem", ca.decode())
            tls = [f"-Dcdcflow.bolt.tls.dir={self.tls_dir.resolve()}"]
        argv = [
            java,
            f"-Xmx{self.max_heap}",
            *_JVM_ARGS,
            *tls,
            "-cp",
            f"{classes}:{self.lib_dir}/*",
            MAIN_CLASS,
            str(self.data_dir.resolve()),
            str(self.settings.neo4j_bolt_port),
            "127.0.0.1",
        ]
        passwords = ensure_secrets(self.settings.data_dir, "neo4j")
        if not provisioned_with(self.data_dir, passwords):
            # The launcher reads the password from this 0600 file and deletes it (no password in the argv).
            password_file = self.data_dir / "initial-password"
            write_private(password_file, passwords[NEO4J_USER])
            argv.append(str(password_file.resolve()))
            self._pending = passwords
        self.process.start(argv, cwd=self.data_dir)

    def provision(self, deadline: float) -> None:
        """Record the new password as set once the server answers with it."""
        if self._pending is not None:
            self.wait_healthy(max(1.0, deadline - time.monotonic()))
            mark_provisioned(self.data_dir, self._pending)
            self._pending = None

    def check_health(self) -> str:
        """Run `RETURN 1` over Bolt (auto-commit, no retries: a probe must answer or fail fast)."""
        with neo4j_driver(self.client_settings().as_role("admin")) as driver, driver.session() as session:
            result = session.run("RETURN 1 AS ok")
            record = result.single(strict=True)
            agent = result.consume().server.agent
        if record["ok"] != 1:
            raise RuntimeError(f"RETURN 1 gave {record['ok']!r}")
        return f"{agent} at {self.endpoint}"
