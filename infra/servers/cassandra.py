"""The local Cassandra: a single node from the Maven Central jars, with our own small configuration.

Authentication and authorization are on (PasswordAuthenticator, CassandraAuthorizer). On its first start
Cassandra creates the default superuser cassandra/cassandra; `provision` logs in with it, creates our own
superuser with a generated password, drops `cassandra`, and creates the worker role (may create keyspaces,
and owns those it creates; reads the others, e.g. the namespace pointers) and the read-only reader role. It
runs again whenever the generated passwords change.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cassandra import AuthenticationFailed
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster, NoHostAvailable, Session
from cassandra.policies import DCAwareRoundRobinPolicy

from cdc.connect import cassandra_cluster
from cdc.credentials import CASSANDRA_ADMIN, CASSANDRA_READER, CASSANDRA_WORKER
from cdc.settings import Settings
from infra.errors import InstallError, StartError
from infra.maven import fetch_jars, java_binary
from infra.process import port_open
from infra.secrets import ensure_secrets, mark_provisioned, private_dir, provisioned_with, write_private
from infra.servers.base import Server

#: The superuser Cassandra creates on a fresh node (replaced by ours at the first start).
DEFAULT_SUPERUSER = ("cassandra", "cassandra")

COORDINATES = ["org.apache.cassandra:cassandra-all:5.0.9"]
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
NODETOOL_CLASS = "org.apache.cassandra.tools.NodeTool"

#: The --add-exports/--add-opens list Cassandra needs on Java 17 (an @argfile, shared with nodetool).
JVM17_OPTIONS = Path(__file__).resolve().parent.parent / "conf" / "cassandra-jvm17.options"

#: The node runs on a shared 2-core machine next to Kafka, Neo4j, Postgres and MongoDB.
CORES = 2

_YAML = """\
# Written by cdcflow infra/ at every start (edits are lost): one local node for the demo and tests.
cluster_name: cdcflow
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
# Nothing older to stay compatible with: use the 5.0 on-disk formats from the first start.
storage_compatibility_mode: NONE

data_file_directories:
  - {data}/data
commitlog_directory: {data}/commitlog
saved_caches_directory: {data}/saved_caches
hints_directory: {data}/hints
cdc_raw_directory: {data}/cdc_raw

commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB

seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage_port}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage_port}
ssl_storage_port: {ssl_storage_port}
start_native_transport: true
native_transport_port: {native_port}
# SimpleSnitch puts the node in "datacenter1", the local DC the clients are configured with.
endpoint_snitch: SimpleSnitch

# Passwords and permissions (roles set up by cdcflow infra/ at the first start).
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
roles_validity: 2000ms
permissions_validity: 2000ms
credentials_validity: 2000ms

# Sized for {cores} cores and a 1 GiB heap, not for a production box.
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_materialized_view_writes: 8
concurrent_compactors: 1
native_transport_max_threads: 32
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB
row_cache_size: 0MiB
counter_cache_size: 8MiB
file_cache_size: 64MiB

# One node: there is no peer to hand hints to.
hinted_handoff_enabled: false
# Tests truncate and drop tables all the time; snapshots would only fill the disk.
auto_snapshot: false
snapshot_before_compaction: false
"""

_LOGBACK = """\
<!-- Written by cdcflow infra/ at every start. Full log in system.log; warnings also go to stdout. -->
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{logs}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{logs}/system.log.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <root level="INFO">
    <appender-ref ref="FILE"/>
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


class CassandraServer(Server):
    """Single-node Cassandra 5.0 (CassandraDaemon) with its data, commit log and logs under the data dir."""

    name = "cassandra"
    uri_setting = "CASSANDRA_HOSTS"
    start_timeout = 180.0

    def __init__(self, settings: Settings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.lib_dir = settings.cache_dir / self.name / "lib"

    @property
    def endpoint(self) -> str:
        """CQL contact points, host:port, comma-separated."""
        return ",".join(f"{host}:{port}" for host, port in self.settings.cassandra_contact_points)

    @property
    def ports(self) -> list[int]:
        """CQL, inter-node storage and JMX ports."""
        s = self.settings
        return [s.cassandra_port, s.cassandra_storage_port, s.cassandra_jmx_port]

    @property
    def conf_dir(self) -> Path:
        """Where the generated cassandra.yaml and logback.xml go."""
        return self.data_dir / "conf"

    @property
    def log_dir(self) -> Path:
        """Cassandra's own logs (system.log); stdout goes to the process log."""
        return self.data_dir / "logs"

    def install(self) -> None:
        """Fetch the cassandra-all jars into the cache (once)."""
        java_binary(self.name)
        self.lib_dir = fetch_jars(self.name, COORDINATES, self.settings.cache_dir)

    def write_config(self) -> Path:
        """Write cassandra.yaml and logback.xml from the settings; returns the yaml path."""
        s = self.settings
        private_dir(self.conf_dir)
        private_dir(self.log_dir)
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "triggers"):
            private_dir(self.data_dir / sub)
        yaml = self.conf_dir / "cassandra.yaml"
        write_private(yaml,
            _YAML.format(
                data=self.data_dir.resolve(),
                storage_port=s.cassandra_storage_port,
                # Only opened with legacy inter-node TLS, which is off; must still differ from storage_port.
                ssl_storage_port=s.cassandra_storage_port + 1,
                native_port=s.cassandra_port,
                cores=CORES,
            )
        )
        write_private(self.conf_dir / "logback.xml", _LOGBACK.format(logs=self.log_dir.resolve()))
        return yaml

    def jvm_args(self) -> list[str]:
        """JVM flags and system properties shared by the daemon (and usable for nodetool)."""
        if not JVM17_OPTIONS.is_file():
            raise InstallError(self.name, f"missing {JVM17_OPTIONS}: reinstall cdcflow (package data)")
        jmx = self.settings.cassandra_jmx_port
        args = [
            "-Xms512m",
            "-Xmx1g",
            "-Xss256k",
            "-XX:+UseG1GC",
            "-XX:+ParallelRefProcEnabled",
            "-XX:MaxGCPauseMillis=300",
            f"-XX:ParallelGCThreads={CORES}",
            "-XX:ConcGCThreads=1",
            f"-XX:ActiveProcessorCount={CORES}",
            # Avoid an mmap'd hsperfdata file per JVM (upstream does the same).
            "-XX:+PerfDisableSharedMem",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.net.preferIPv4Stack=true",
            f"@{JVM17_OPTIONS}",
        ]
        # jamm measures memtable sizes; without its agent Cassandra falls back to slower guessing.
        jamm = sorted(self.lib_dir.glob("jamm-*.jar"))
        if jamm:
            args.append(f"-javaagent:{jamm[-1]}")
        args += [
            # JMX on localhost only; the RMI port pinned to the same one, else a random second port opens.
            f"-Dcassandra.jmx.local.port={jmx}",
            f"-Dcom.sun.management.jmxremote.rmi.port={jmx}",
        ]
        return args

    def launch(self) -> None:
        """Write the config and start CassandraDaemon in the foreground of its own detached process."""
        java = java_binary(self.name)
        if not any(self.lib_dir.glob("*.jar")):
            raise InstallError(self.name, f"no jars in {self.lib_dir}: run `cdcflow infra up` to install")
        yaml = self.write_config()
        argv = [
            java,
            *self.jvm_args(),
            # A lone node has nobody to gossip with: skip the waits meant for real rings.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.shutdown_announce_in_ms=0",
            # The default superuser is created 10 s after start by default: nothing to wait for on one node.
            "-Dcassandra.superuser_setup_delay_ms=0",
            f"-Dcassandra.available_processors={CORES}",
            f"-Dcassandra.config={yaml.resolve().as_uri()}",
            f"-Dcassandra.storagedir={self.data_dir.resolve()}",
            f"-Dcassandra.logdir={self.log_dir.resolve()}",
            # Cassandra warns on every schema change when its trigger directory is missing.
            f"-Dcassandra.triggers_dir={(self.data_dir / 'triggers').resolve()}",
            f"-Dlogback.configurationFile={(self.conf_dir / 'logback.xml').resolve()}",
            "-Dcassandra-foreground=yes",
            "-cp",
            f"{self.conf_dir.resolve()}:{self.lib_dir.resolve()}/*",
            MAIN_CLASS,
        ]
        self.process.start(argv, cwd=self.data_dir)

    def provision(self, deadline: float) -> None:
        """Replace the default superuser and create the worker and reader roles (when the passwords changed)."""
        passwords = ensure_secrets(self.settings.data_dir, "cassandra")
        if provisioned_with(self.data_dir, passwords):
            return
        ours = (CASSANDRA_ADMIN, passwords[CASSANDRA_ADMIN])
        session = self._login(deadline, [ours, DEFAULT_SUPERUSER])
        try:
            # Cassandra refuses a second password change of a role within 5 s: set each one once.
            if session.cluster.auth_provider.username != CASSANDRA_ADMIN:  # type: ignore[union-attr]
                self._set_role(session, CASSANDRA_ADMIN, ours[1], "SUPERUSER = true AND LOGIN = true")
                session.cluster.shutdown()
                session = self._login(deadline, [ours])
            session.execute(f"DROP ROLE IF EXISTS {DEFAULT_SUPERUSER[0]}")
            for role in (CASSANDRA_WORKER, CASSANDRA_READER):
                self._set_role(session, role, passwords[role], "SUPERUSER = false AND LOGIN = true")
            # A keyspace's creator gets every permission on it: the worker owns the read models' keyspaces.
            session.execute(f"GRANT CREATE ON ALL KEYSPACES TO {CASSANDRA_WORKER}")
            session.execute(f"GRANT SELECT ON ALL KEYSPACES TO {CASSANDRA_WORKER}")
            session.execute(f"GRANT SELECT ON ALL KEYSPACES TO {CASSANDRA_READER}")
            # Keyspaces from before authentication (nobody owns them): the worker's, as if it had created them.
            for row in session.execute("SELECT keyspace_name FROM system_schema.keyspaces"):
                if not row.keyspace_name.startswith("system"):
                    session.execute(f'GRANT ALL PERMISSIONS ON KEYSPACE "{row.keyspace_name}" TO {CASSANDRA_WORKER}')
        finally:
            session.cluster.shutdown()
        mark_provisioned(self.data_dir, passwords)

    @staticmethod
    def _set_role(session: Session, role: str, password: str, options: str) -> None:
        exists = session.execute("SELECT role FROM system_auth.roles WHERE role = %s", (role,)).one()
        verb = "ALTER" if exists is not None else "CREATE"
        session.execute(f"{verb} ROLE {role} WITH {options} AND PASSWORD = %s", (password,))

    def _login(self, deadline: float, candidates: list[tuple[str, str]]) -> Session:
        """A session as the first of `candidates` that logs in, waiting for the node to accept CQL."""
        driver_log = logging.getLogger("cassandra")
        level = driver_log.level
        driver_log.setLevel(logging.CRITICAL)  # refused logins and timeouts are expected while it starts
        try:
            return self._try_login(deadline, candidates)
        finally:
            driver_log.setLevel(level)

    def _try_login(self, deadline: float, candidates: list[tuple[str, str]]) -> Session:
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.exited_early():
                raise StartError(self.name, f"process exited during start-up; log {self.process.log_file}:\n"
                                 + self.process.log_tail())
            if port_open(self.settings.cassandra_port):
                for user, password in candidates:
                    cluster = Cluster(
                        contact_points=self.settings.cassandra_contact_points, protocol_version=5,
                        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=self.settings.cassandra_local_dc),
                        auth_provider=PlainTextAuthProvider(user, password), connect_timeout=5.0,
                        control_connection_timeout=5.0, schema_metadata_enabled=False, token_metadata_enabled=False,
                    )
                    try:
                        return cluster.connect()
                    except NoHostAvailable as exc:
                        cluster.shutdown()
                        errors = list(exc.errors.values())
                        last = str(errors[0]) if errors else str(exc)
                        if not any(isinstance(e, AuthenticationFailed) for e in errors):
                            break  # not ready yet: the next candidate would fail the same way
            time.sleep(1.0)
        raise StartError(self.name, f"could not log in to set up its roles ({last[:200]}); if "
                                    f"{self.settings.data_dir / 'secrets'} was changed or removed, remove "
                                    f"{self.data_dir} (its data is lost) and run `cdcflow infra up` again")

    def check_health(self) -> str:
        """Ask the node for its release version over CQL."""
        cluster = cassandra_cluster(self.admin_settings, connect_timeout=3.0, metadata=False)
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local", timeout=5.0).one()
        finally:
            cluster.shutdown()
        if row is None:
            raise RuntimeError("system.local returned no row")
        return f"Cassandra {row.release_version} at {self.endpoint}"
