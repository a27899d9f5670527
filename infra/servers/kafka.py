"""Apache Kafka in KRaft mode (one combined broker/controller node) from its Maven Central jars.

Clients authenticate with SASL/SCRAM-SHA-512 on the one client listener (the broker talks to itself over it
as user `broker`); the controller listener takes SASL/PLAIN (KRaft controllers cannot check SCRAM, whose
credentials live in the metadata they serve) with a user known only to the node. The SCRAM credentials are
written into the metadata when the storage is formatted (`--add-scram`). No authorizer: every authenticated
client may do everything (see README, "ACLs"). Passwords go in the 0600 server.properties and in an
argument file of the format command (`java @file`), never on a command line.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from typing import Any

from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from cdc.credentials import KAFKA_BROKER, KAFKA_CLIENT, KAFKA_CONTROLLER
from cdc.kafka import ensure_topics, kafka_config
from cdc.settings import Settings
from infra.errors import InstallError, StartError
from infra.maven import fetch_jars, java_binary
from infra.secrets import ensure_secrets, mark_provisioned, provisioned_with, write_private
from infra.servers.base import Server

#: The SCRAM mechanism of the local broker's client listener.
SCRAM = "SCRAM-SHA-512"

_QUIET = logging.getLogger("rdkafka.health")
_QUIET.setLevel(logging.CRITICAL)
_QUIET.propagate = False

KAFKA_COORDINATES = [
    "org.apache.kafka:kafka_2.13:4.1.2",
    # Without an SLF4J binding the broker logs nothing at all.
    "org.apache.logging.log4j:log4j-slf4j-impl:2.24.3",
]

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def cluster_id() -> str:
    """A random base64 UUID, as `kafka-storage random-uuid` prints it: never one that starts with "-", which the
    storage tool would read as an option (one id in 64 did: a fresh `infra up` then failed to format)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


class KafkaServer(Server):
    """A single-node KRaft Kafka broker on loopback."""

    name = "kafka"
    uri_setting = "KAFKA_BOOTSTRAP_SERVERS"
    start_timeout = 90.0

    def __init__(
        self, settings: Settings, *, instance: str | None = None, port: int | None = None,
        controller_port: int | None = None, tls: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        super().__init__(settings, instance=instance)
        self.port = port or settings.kafka_port
        self.controller_port = controller_port or settings.kafka_controller_port
        # (certificate chain PEM, PKCS#8 key PEM, CA PEM): the client listener speaks SASL_SSL (the TLS tests).
        self.tls = tls

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers of this broker."""
        return self.settings.kafka_bootstrap_servers if not self.local else f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.bootstrap

    def client_settings(self) -> Settings:
        """Settings whose Kafka clients reach this broker, as the local client user (a private test broker)."""
        update: dict[str, Any] = {"kafka_bootstrap_override": self.bootstrap}
        if self.local:
            password = ensure_secrets(self.settings.data_dir, "kafka")[KAFKA_CLIENT]
            update.update(kafka_sasl_mechanism=SCRAM, kafka_sasl_username=KAFKA_CLIENT,
                          kafka_sasl_password=SecretStr(password))
        if self.tls is not None:
            update.update(kafka_security_protocol="SASL_SSL", kafka_ssl_ca_file=self.data_dir / "tls-ca.pem")
        return self.settings.model_copy(update=update)

    @property
    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def install(self) -> None:
        java_binary(self.name)
        fetch_jars("kafka", KAFKA_COORDINATES, self.settings.cache_dir)

    def _properties(self, passwords: dict[str, str]) -> str:
        logs = self.data_dir / "logs"
        broker, controller = passwords[KAFKA_BROKER], passwords[KAFKA_CONTROLLER]
        tls: list[str] = []
        if self.tls is not None:
            cert, key, ca = self.tls
            keystore, truststore = self.data_dir / "tls-keystore.pem", self.data_dir / "tls-ca.pem"
            write_private(keystore, (key + cert).decode())
            write_private(truststore, ca.decode())
            # The broker's own connections to the listener (inter-broker) are clients of it too: same files.
            for prefix in ("", "listener.name.client."):
                tls += [f"{prefix}ssl.keystore.type=PEM", f"{prefix}ssl.keystore.location={keystore}",
                        f"{prefix}ssl.truststore.type=PEM", f"{prefix}ssl.truststore.location={truststore}"]
        client_protocol = "SASL_SSL" if self.tls is not None else "SASL_PLAINTEXT"
        return "\n".join([
            "# Written by cdcflow infra/ at every start (edits are lost). Holds passwords: mode 0600.",
            *tls,
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
            f"listeners=CLIENT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=CLIENT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map=CLIENT:{client_protocol},CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name=CLIENT",
            f"sasl.enabled.mechanisms={SCRAM}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM}",
            f"listener.name.client.{SCRAM.lower()}.sasl.jaas.config="
            f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{KAFKA_BROKER}" '
            f'password="{broker}";',
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "listener.name.controller.plain.sasl.jaas.config="
            f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{KAFKA_CONTROLLER}" '
            f'password="{controller}" user_{KAFKA_CONTROLLER}="{controller}";',
            f"log.dirs={logs}",
            "num.partitions=1",
            "default.replication.factor=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "min.insync.replicas=1",
            "group.initial.rebalance.delay.ms=0",
            "num.network.threads=2",
            "num.io.threads=4",
            "log.retention.hours=168",
            "log.segment.bytes=67108864",
            "auto.create.topics.enable=true",
            "",
        ])

    def launch(self) -> None:
        java = java_binary(self.name)
        lib = self.settings.cache_dir / "kafka" / "lib"
        if not any(lib.glob("*.jar")):
            raise InstallError(self.name, f"no jars in {lib}; run `cdcflow infra up` to install")
        passwords = ensure_secrets(self.settings.data_dir, "kafka")
        conf = self.data_dir / "server.properties"
        write_private(conf, self._properties(passwords))
        log4j = self.data_dir / "log4j2.xml"
        write_private(log4j, _LOG4J2.format(log=self.data_dir / "server.log"))
        cluster_file = self.data_dir / "cluster.id"
        formatted = (self.data_dir / "logs" / "meta.properties").exists()
        if not cluster_file.exists() or (not formatted and cluster_file.read_text().startswith("-")):
            write_private(cluster_file, cluster_id())
        classpath = f"{lib}/*"
        if not provisioned_with(self.data_dir, passwords):
            self._format(java, classpath, conf, cluster_file.read_text().strip(), passwords)
            mark_provisioned(self.data_dir, passwords)
        self.process.start(
            [java, "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             f"-Dlog4j2.configurationFile={log4j}", "-Dlog4j2.shutdownHookEnabled=false",
             "-Djava.awt.headless=true",
             "-cp", classpath, "kafka.Kafka", str(conf)],
            cwd=self.data_dir,
        )

    def _format(self, java: str, classpath: str, conf: Any, cluster_id: str, passwords: dict[str, str]) -> None:
        """Format the KRaft storage with the SCRAM users (idempotent on a formatted one: it is left alone)."""
        if (self.data_dir / "logs" / "meta.properties").exists():
            # SCRAM credentials can only be added at format time (or by an authenticated admin): a storage
            # formatted before authentication was on, or with other passwords, cannot be let in.
            raise StartError(
                self.name,
                f"{self.data_dir / 'logs'} was formatted without the current SCRAM credentials "
                f"(before authentication was on, or {self.settings.data_dir / 'secrets'} changed): remove "
                f"{self.data_dir} (its topics are lost) and run `cdcflow infra up` again",
            )
        args = [
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(conf), "--standalone",
            "--ignore-formatted",
            "--add-scram", f"{SCRAM}=[name={KAFKA_BROKER},password={passwords[KAFKA_BROKER]}]",
            "--add-scram", f"{SCRAM}=[name={KAFKA_CLIENT},password={passwords[KAFKA_CLIENT]}]",
        ]
        # The java launcher reads the main class and its arguments from the file: no password in `ps`.
        argfile = self.data_dir / "format.args"
        write_private(argfile, "\n".join(args) + "\n")
        try:
            fmt = subprocess.run(
                [java, "-Xmx256m", "-cp", classpath, f"@{argfile}"],
                capture_output=True, text=True, timeout=120, umask=0o077,
            )
        finally:
            argfile.unlink(missing_ok=True)
        if fmt.returncode != 0:
            raise StartError(self.name, "formatting the KRaft log dir failed: " + (fmt.stderr or fmt.stdout)[-300:])

    def check_health(self) -> str:
        # Refused connections are expected while the broker starts: keep librdkafka quiet here.
        settings = self.client_settings() if self.local else self.admin_settings
        config = kafka_config(settings, **{"socket.timeout.ms": 3000, "logger": _QUIET})
        admin = AdminClient(config)
        meta = admin.list_topics(timeout=3)
        if not meta.brokers:
            raise RuntimeError("no broker in metadata")
        ensure_topics(settings, ["__cdcflow_health"], partitions=1, timeout=10, admin=admin)
        return f"{len(meta.brokers)} broker(s), {len(meta.topics)} topic(s), topic creation ok"
