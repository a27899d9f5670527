"""Apache Kafka in KRaft mode (one combined broker/controller node) from its Maven Central jars."""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from typing import Any

from confluent_kafka.admin import AdminClient

from cdc.kafka import ensure_topics
from cdc.settings import Settings
from infra.errors import InstallError, StartError
from infra.maven import fetch_jars, java_binary
from infra.servers.base import Server

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


class KafkaServer(Server):
    """A single-node KRaft Kafka broker on loopback."""

    name = "kafka"
    uri_setting = "KAFKA_BOOTSTRAP_SERVERS"
    start_timeout = 90.0

    def __init__(
        self, settings: Settings, *, instance: str | None = None, port: int | None = None,
        controller_port: int | None = None,
    ) -> None:
        super().__init__(settings, instance=instance)
        self.port = port or settings.kafka_port
        self.controller_port = controller_port or settings.kafka_controller_port

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers of this broker."""
        return self.settings.kafka_bootstrap_servers if not self.local else f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.bootstrap

    @property
    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def install(self) -> None:
        java_binary(self.name)
        fetch_jars("kafka", KAFKA_COORDINATES, self.settings.cache_dir)

    def _properties(self) -> str:
        logs = self.data_dir / "logs"
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
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
        conf = self.data_dir / "server.properties"
        conf.write_text(self._properties())
        log4j = self.data_dir / "log4j2.xml"
        log4j.write_text(_LOG4J2.format(log=self.data_dir / "server.log"))
        cluster_file = self.data_dir / "cluster.id"
        if not cluster_file.exists():
            # A random base64 UUID, the same thing `kafka-storage random-uuid` prints.
            cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        classpath = f"{lib}/*"
        fmt = subprocess.run(
            [java, "-Xmx256m", "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", cluster_file.read_text().strip(), "-c", str(conf), "--standalone", "--ignore-formatted"],
            capture_output=True, text=True, timeout=120,
        )
        if fmt.returncode != 0:
            raise StartError(self.name, "formatting the KRaft log dir failed: " + (fmt.stderr or fmt.stdout)[-300:])
        self.process.start(
            [java, "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             f"-Dlog4j2.configurationFile={log4j}", "-Dlog4j2.shutdownHookEnabled=false",
             "-Djava.awt.headless=true",
             "-cp", classpath, "kafka.Kafka", str(conf)],
            cwd=self.data_dir,
        )

    def check_health(self) -> str:
        # Refused connections are expected while the broker starts: keep librdkafka quiet here.
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 3000, "logger": _QUIET}
        admin = AdminClient(config)
        meta = admin.list_topics(timeout=3)
        if not meta.brokers:
            raise RuntimeError("no broker in metadata")
        settings = self.settings.model_copy(update={"kafka_bootstrap_override": self.bootstrap})
        ensure_topics(settings, ["__cdcflow_health"], partitions=1, timeout=10, admin=admin)
        return f"{len(meta.brokers)} broker(s), {len(meta.topics)} topic(s), topic creation ok"
