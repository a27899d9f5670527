"""The one settings object: read from the environment (or a `.env` file) once, then passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import quote, quote_plus

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdc.credentials import Role, role_credentials

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Shortest API key the HTTP APIs accept (a guessable key is no key).
MIN_API_KEY_LENGTH = 16
#: What a Kafka topic or group prefix may hold (legal in topic names, at most 100 characters).
KAFKA_PREFIX_PATTERN = r"^[A-Za-z0-9._-]{0,100}$"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _both(name: str) -> AliasChoices:
    """A setting read from `NAME` (as Kafka and Cassandra users name it) or `CDCFLOW_NAME`."""
    return AliasChoices(name, f"CDCFLOW_{name}")


KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Consistency = Literal["ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"]


class Settings(BaseSettings):
    """Every knob of cdcflow. Unset server addresses mean the local servers that infra/ starts."""

    model_config = SettingsConfigDict(
        env_prefix="CDCFLOW_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where infra/ keeps server data (inside the checkout, git-ignored) and downloaded jars (outside it).
    data_dir: Path = REPO_ROOT / ".data"
    cache_dir: Path = Path.home() / ".cache" / "cdcflow"

    # Local server ports (used when the matching URI/DSN is unset).
    mongo_port: int = 27117
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    postgres_port: int = 15432
    cassandra_port: int = 19042
    cassandra_storage_port: int = 17000
    cassandra_jmx_port: int = 17199
    neo4j_bolt_port: int = 17687

    # Which credentials of the local servers this process uses (cdc/credentials.py): each `cdcflow` command
    # sets its own; library use and the tests are `admin`. Ignored for servers whose URI/credentials are set.
    role: Role = "admin"

    # External servers: set these to point at real clusters instead of the local ones.
    # (The URI may hold a password: kept out of repr.)
    mongo_uri_override: str | None = Field(
        default=None, validation_alias=_env("MONGO_URI", "CDCFLOW_MONGO_URI"), repr=False
    )
    kafka_bootstrap_override: str | None = Field(
        default=None, validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS", "CDCFLOW_KAFKA_BOOTSTRAP_SERVERS")
    )
    postgres_dsn_override: SecretStr | None = Field(
        default=None, validation_alias=_env("POSTGRES_DSN", "CDCFLOW_POSTGRES_DSN")
    )
    cassandra_hosts_override: str | None = Field(
        default=None, validation_alias=_env("CASSANDRA_HOSTS", "CDCFLOW_CASSANDRA_HOSTS")
    )
    neo4j_uri_override: str | None = Field(default=None, validation_alias=_env("NEO4J_URI", "CDCFLOW_NEO4J_URI"))
    neo4j_user: str | None = Field(default=None, validation_alias=_env("NEO4J_USER", "CDCFLOW_NEO4J_USER"))
    neo4j_password: SecretStr | None = Field(
        default=None, validation_alias=_env("NEO4J_PASSWORD", "CDCFLOW_NEO4J_PASSWORD")
    )
    # A CA bundle (PEM) to verify the Neo4j server against, instead of the system's: TLS with a `bolt://` or
    # `neo4j://` URI (the driver takes a custom CA only with those schemes; `+s` means the system's CAs).
    neo4j_ca_file: Path | None = Field(default=None, validation_alias=_both("NEO4J_CA_FILE"))

    # MongoDB client pool (one pooled client per process).
    mongo_max_pool_size: int = 50
    mongo_min_pool_size: int = 1
    mongo_server_selection_timeout_ms: int = 3000
    mongo_wait_queue_timeout_ms: int = 2000

    # Kafka.
    kafka_partitions: int = 4
    # Topics cdcflow creates (its own and Faust's internal ones). RF=1 loses data when a broker dies: use 3
    # (and min.insync.replicas=2) on a real cluster; `cdcflow status` warns about RF=1 on several brokers.
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)  # None: the broker's default
    # Two deployments share one Kafka cluster by prefixes: records go to `<topic prefix><topic>` (the event's
    # `topic` field stays the logical name), and every consumer group is `<group prefix><group>` (unset: the
    # topic prefix). Applied where records are produced and consumed: tailer, workers, dead letters, replay,
    # dlq, status, demo, trace.
    kafka_topic_prefix: str = Field(default="", pattern=KAFKA_PREFIX_PATTERN)
    kafka_group_prefix: str | None = Field(default=None, pattern=KAFKA_PREFIX_PATTERN)
    # Security of every Kafka client (librdkafka and Faust's aiokafka). Unset protocol: SASL_SSL / SASL_PLAINTEXT
    # / SSL / PLAINTEXT depending on which of credentials and TLS files are given; the local broker: SCRAM.
    kafka_security_protocol: KafkaProtocol | None = Field(
        default=None, validation_alias=_both("KAFKA_SECURITY_PROTOCOL")
    )
    kafka_sasl_mechanism: SaslMechanism = Field(default="SCRAM-SHA-512", validation_alias=_both("KAFKA_SASL_MECHANISM"))
    kafka_sasl_username: str | None = Field(default=None, validation_alias=_both("KAFKA_SASL_USERNAME"))
    kafka_sasl_password: SecretStr | None = Field(default=None, validation_alias=_both("KAFKA_SASL_PASSWORD"))
    kafka_ssl_ca_file: Path | None = Field(default=None, validation_alias=_both("KAFKA_SSL_CA_FILE"))
    kafka_ssl_cert_file: Path | None = Field(default=None, validation_alias=_both("KAFKA_SSL_CERT_FILE"))
    kafka_ssl_key_file: Path | None = Field(default=None, validation_alias=_both("KAFKA_SSL_KEY_FILE"))
    kafka_ssl_key_password: SecretStr | None = Field(default=None, validation_alias=_both("KAFKA_SSL_KEY_PASSWORD"))
    kafka_ssl_check_hostname: bool = Field(default=True, validation_alias=_both("KAFKA_SSL_CHECK_HOSTNAME"))
    # Any other librdkafka client property, as Kafka users write them: a Java-style properties file and/or a
    # JSON object (`{"socket.keepalive.enable": true}`); the JSON wins over the file, both over cdcflow's own.
    # Applied to the tailer's producer, the admin client and the replay/DLQ/status consumers (not to Faust's
    # aiokafka clients, which take only the security settings above).
    kafka_properties: dict[str, str | int | float | bool] = Field(default_factory=dict, repr=False)
    kafka_properties_file: Path | None = None

    # Cassandra.
    cassandra_username: str | None = Field(default=None, validation_alias=_both("CASSANDRA_USERNAME"))
    cassandra_password: SecretStr | None = Field(default=None, validation_alias=_both("CASSANDRA_PASSWORD"))
    cassandra_tls: bool = Field(default=False, validation_alias=_both("CASSANDRA_TLS"))
    cassandra_tls_ca_file: Path | None = Field(default=None, validation_alias=_both("CASSANDRA_TLS_CA_FILE"))
    cassandra_tls_cert_file: Path | None = Field(default=None, validation_alias=_both("CASSANDRA_TLS_CERT_FILE"))
    cassandra_tls_key_file: Path | None = Field(default=None, validation_alias=_both("CASSANDRA_TLS_KEY_FILE"))
    cassandra_tls_check_hostname: bool = Field(default=True, validation_alias=_both("CASSANDRA_TLS_CHECK_HOSTNAME"))
    # The data centre the clients prefer (SimpleSnitch, the local node, puts everything in "datacenter1").
    cassandra_local_dc: str = Field(default="datacenter1", validation_alias=_both("CASSANDRA_LOCAL_DC"))
    # Replication of the keyspaces cdcflow creates, as CQL's replication map, e.g.
    # {"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 3} on a real ring.
    cassandra_replication: dict[str, str | int] = Field(
        default_factory=lambda: dict[str, str | int]({"class": "SimpleStrategy", "replication_factor": 1}),
        validation_alias=_both("CASSANDRA_REPLICATION"),
    )
    cassandra_read_consistency: Consistency = Field(
        default="LOCAL_QUORUM", validation_alias=_both("CASSANDRA_READ_CONSISTENCY")
    )
    cassandra_write_consistency: Consistency = Field(
        default="LOCAL_QUORUM", validation_alias=_both("CASSANDRA_WRITE_CONSISTENCY")
    )

    # Start-up deadlines (seconds) for `infra up`.
    infra_start_timeout: float = 180.0

    # streams and sinks
    clickstream_ttl_days: int = 90  # page views expire this long after they happened
    sink_namespace: str = "cdcflow"  # Postgres schema / Cassandra keyspace of the live read models
    stream_batch_size: int = 500  # events per sink write (stream.take max)
    # Seconds to wait for a batch to fill: short, since under load batches fill while the previous one is written.
    stream_batch_within: float = 0.05
    sink_retry_initial: float = 0.2  # first backoff (s) after a transient sink error, doubling
    sink_retry_max: float = 5.0  # backoff ceiling (s); a down sink is retried forever
    worker_web_port: int | None = None  # Faust web server port; None disables it
    worker_session_timeout: float = 10.0  # seconds before a dead worker's partitions move to another
    # Interface the worker's web server and metrics exporter bind to (loopback: nothing is exposed by default).
    worker_host: str = "127.0.0.1"
    # Prometheus exporter port of `cdcflow worker` (0: none); supervised, the i-th read model gets port + i.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # The worker's `/healthz` fails once its sink has been waited on (down, refusing) for longer than this.
    worker_health_max_sink_wait_seconds: float = Field(default=120.0, gt=0)
    # A record larger than this is a dead letter ("too large"), never decoded.
    stream_max_record_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # `cdcflow worker` (all read models): a dead child is restarted after a backoff (initial, doubling, max);
    # after `worker_restart_give_up` deaths in a row, each within `worker_restart_quick_seconds` of its start,
    # the supervisor stops everything and exits non-zero (0: never give up).
    worker_restart_initial: float = Field(default=1.0, gt=0)
    worker_restart_max: float = Field(default=30.0, gt=0)
    worker_restart_quick_seconds: float = Field(default=60.0, ge=0)
    worker_restart_give_up: int = Field(default=5, ge=0)
    # SIGTERM: children still running this long after it are killed; an agent that crashed ends its process
    # within this long even if the shutdown hangs.
    worker_stop_timeout: float = Field(default=30.0, gt=0)

    log_level: str = "INFO"
    # OpenTelemetry tracing (cdc/tracing.py): off by default; `console` prints spans as JSON lines on stdout,
    # `otlp` sends them to an OTLP/HTTP collector (`pip install 'cdcflow[otlp]'`) at `tracing_otlp_endpoint`.
    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    tracing_otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    # Share of new traces recorded (a request's); the tailer and the workers follow the request's decision.
    tracing_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    log_json: bool | None = None  # None: JSON lines when stderr is not a terminal

    # tailer
    # Service databases whose `outbox` collection the tailer watches (JSON list in the environment).
    tailer_databases: list[str] = Field(
        default_factory=lambda: ["product_service", "order_service", "clickstream_service"]
    )
    tailer_collection: str = "outbox"
    # The tailer's own database: resume tokens (`checkpoints`), leader leases (`leases`), its dead letters.
    tailer_state_database: str = "cdcflow_tailer"
    # Change-stream batch size and how long one getMore waits on the server for new events (the server answers
    # as soon as one arrives, so a longer wait adds no latency, only fewer empty getMores on an idle outbox).
    tailer_batch_size: int = Field(default=1000, ge=1)
    tailer_max_await_ms: int = Field(default=1000, ge=1)
    # Events sent to Kafka but not yet acknowledged, at most (back-pressure beyond it).
    tailer_max_in_flight: int = Field(default=20000, ge=1)
    # What Kafka acknowledged is checkpointed at most this often (one small write on the tailer's database, which
    # every change stream on the server then reads past); a crash re-sends at most this much.
    tailer_commit_interval_ms: int = Field(default=1000, ge=1)
    # An idle outbox still checkpoints the stream's post-batch resume token this often.
    tailer_heartbeat_seconds: float = Field(default=5.0, gt=0)
    # Leader lease: one active tailer per outbox; a standby takes over after the TTL.
    tailer_lease_ttl_seconds: float = Field(default=10.0, gt=0)
    # Waiting this long on Kafka acknowledgements re-opens the stream from the checkpoint afterwards.
    tailer_stall_reopen_seconds: float = Field(default=5.0, gt=0)
    # How long librdkafka waits to fill a batch. At 1 ms a backlog goes out in tiny requests, and the broker and
    # librdkafka spent about 3x the CPU per event here; 5 ms adds ~4 ms to the latency of a lone event.
    tailer_linger_ms: int = Field(default=5, ge=0)
    # A catch-up scan (history lost) re-sends the events created up to this long before the newest one on Kafka:
    # events are committed (and streamed) in commit order, which can differ from creation order by as long as a
    # transaction may take (the driver retries a commit for up to 120 s) plus clock skew between services.
    tailer_scan_margin_seconds: float = Field(default=300.0, ge=0)
    # SIGTERM ends `cdcflow tail` within this long, even with Kafka or MongoDB away: what Kafka acknowledged by
    # then is checkpointed, the rest is sent again by the next tailer.
    tailer_stop_timeout_seconds: float = Field(default=30.0, ge=2)
    # Prometheus exporter (and `/healthz`) port of `cdcflow tail` (0: no exporter), and the interface it binds.
    tailer_metrics_port: int = Field(default=0, ge=0, le=65535)
    tailer_metrics_host: str = "127.0.0.1"
    # Name of this tailer in leases and logs (default: host:pid).
    tailer_instance_id: str | None = None

    # producers
    # Outbox documents are deleted this long after they were created, once they are on Kafka (the leading
    # tailer prunes every `outbox_prune_interval_seconds`; what has not reached Kafka is never deleted).
    outbox_retention_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    outbox_prune_interval_seconds: float = Field(default=60.0, gt=0)
    # Largest encoded event (JSON on Kafka, BSON in the outbox) a service may write; the topics cdcflow creates
    # take records this large (`max.message.bytes`), and so do its producers and consumers.
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Service database names are `<prefix><name>` (tests use a unique prefix).
    service_db_prefix: str = ""
    # Order service: a snapshot every N events; how long concurrent appends retry before a 409.
    order_snapshot_interval: int = Field(default=100, ge=1)
    order_append_retry_seconds: float = 5.0
    # Circuit breaker on the MongoDB client: trips after N consecutive connection failures (or a failed
    # heartbeat), fails fast with 503 for `breaker_reset_seconds`, then lets one trial request through.
    # Each request's MongoDB work is bounded by `breaker_call_timeout_ms`.
    breaker_failure_threshold: int = Field(default=2, ge=1)
    breaker_reset_seconds: float = 1.0
    breaker_call_timeout_ms: int = 10_000
    # `cdcflow serve`: default host and ports of the example services; `cdcflow load` targets them.
    services_host: str = "127.0.0.1"
    product_port: int = 8101
    order_port: int = 8102
    clickstream_port: int = 8103

    # replay
    # `replay --rebuild` into a store whose swap is a pointer (Cassandra): how long live writers may still
    # write to the replaced keyspace (pointer cache + one request timeout) before the catch-up and its drop.
    replay_swap_grace_seconds: float = Field(default=16.0, ge=0)

    # usage
    # `cdcflow serve read-api`: default port of the HTTP read API (host: services_host).
    read_api_port: int = Field(default=8104, ge=1, le=65535)
    # `cdcflow status` exits 1 beyond these: consumer lag (events, per read model), unpublished outbox
    # backlog (events, per outbox) and the age of an outbox's oldest unpublished event (seconds).
    status_max_lag: int = Field(default=1000, ge=0)
    status_max_backlog: int = Field(default=1000, ge=0)
    status_max_backlog_age_seconds: float = Field(default=60.0, gt=0)
    # Per-call deadline (seconds) of the Kafka and MongoDB requests `status` makes.
    status_timeout_seconds: float = Field(default=10.0, gt=0)

    def local_credentials(self, server: str) -> tuple[str, str] | None:
        """(user, password) of this process's role on the local `server` (None: not generated, or no user)."""
        return role_credentials(self.data_dir, server, self.role)

    def as_role(self, role: Role) -> Settings:
        """These settings for a process of another role (other credentials on the local servers)."""
        return self.model_copy(update={"role": role})
    # HTTP APIs
    # API keys, one for the write services (product, order, clickstream), one for the read API: a key of the other
    # kind gets 403. Unset: that API is open, and `cdcflow serve` refuses to bind it beyond loopback.
    write_api_key: SecretStr | None = None
    read_api_key: SecretStr | None = None
    # How clients present a key: `Authorization: Bearer KEY` ("bearer") or `X-API-Key: KEY` ("api-key").
    http_auth_scheme: Literal["bearer", "api-key"] = "bearer"
    # Request bodies over this many bytes get 413 before they are read (the largest batch fits well inside).
    http_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Deadline of one read-API query in its store (the Neo4j transaction timeout, the Cassandra request
    # timeout): beyond it the API answers 504.
    read_api_query_timeout_seconds: float = Field(default=10.0, gt=0)
    # Read-your-writes (GET /orders/{id}?min_version=N&wait_ms=M): the longest wait a request may ask for
    # (larger wait_ms is 422), and how many requests may wait at once (more get 503 with Retry-After).
    read_api_max_wait_ms: int = Field(default=10_000, ge=0, le=600_000)
    read_api_max_waiters: int = Field(default=1000, ge=1)

    @field_validator("neo4j_ca_file")
    @classmethod
    def _neo4j_ca_with_plain_scheme(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # A field validator, not a model one: its error shows only this value, never the other settings' secrets.
        scheme = (info.data.get("neo4j_uri_override") or "bolt://").partition("://")[0]
        if value is not None and "+" in scheme:
            raise ValueError(
                f"NEO4J_CA_FILE needs a bolt:// or neo4j:// NEO4J_URI (it turns TLS on itself), not {scheme}://: "
                "`+s` trusts the system's CAs, `+ssc` any certificate"
            )
        return value

    @field_validator("write_api_key", "read_api_key")
    @classmethod
    def _strong_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_API_KEY_LENGTH:
            raise ValueError(f"an API key needs at least {MIN_API_KEY_LENGTH} characters")
        return value

    # -- Kafka names ------------------------------------------------------------------------------------

    def kafka_topic(self, topic: str) -> str:
        """The Kafka topic that records of logical topic `topic` go to (with the deployment's prefix)."""
        return self.kafka_topic_prefix + topic

    def logical_topic(self, kafka_topic: str) -> str:
        """The logical topic of a Kafka topic of this deployment (the prefix taken off)."""
        prefix = self.kafka_topic_prefix
        return kafka_topic[len(prefix):] if prefix and kafka_topic.startswith(prefix) else kafka_topic

    def kafka_group(self, group: str) -> str:
        """The consumer group `group` of this deployment (with its group prefix, by default the topic prefix)."""
        prefix = self.kafka_topic_prefix if self.kafka_group_prefix is None else self.kafka_group_prefix
        return prefix + group

    @property
    def mongo_uri(self) -> str:
        """The MongoDB connection string in force (may hold a password: never log it)."""
        if self.mongo_uri_override:
            return self.mongo_uri_override
        return local_mongo_uri(self.mongo_port, self.local_credentials("mongo"))

    @property
    def kafka_bootstrap_servers(self) -> str:
        """Kafka bootstrap servers, comma-separated."""
        return self.kafka_bootstrap_override or f"127.0.0.1:{self.kafka_port}"

    @property
    def postgres_dsn(self) -> str:
        """The Postgres connection string in force (contains the password: never log it)."""
        if self.postgres_dsn_override is not None:
            return self.postgres_dsn_override.get_secret_value()
        return local_postgres_dsn(self.postgres_port, self.local_credentials("postgres"))

    @property
    def cassandra_contact_points(self) -> list[tuple[str, int]]:
        """Cassandra contact points as (host, port) pairs."""
        if not self.cassandra_hosts_override:
            return [("127.0.0.1", self.cassandra_port)]
        points: list[tuple[str, int]] = []
        for item in self.cassandra_hosts_override.split(","):
            host, _, port = item.strip().partition(":")
            points.append((host, int(port) if port else 9042))
        return points

    @property
    def neo4j_uri(self) -> str:
        """The Bolt URI in force."""
        return self.neo4j_uri_override or f"bolt://127.0.0.1:{self.neo4j_bolt_port}"

    @property
    def neo4j_auth(self) -> tuple[str, str] | None:
        """Driver auth tuple: the configured user, else the local server's generated one, else None."""
        if self.neo4j_user and self.neo4j_password is not None:
            return (self.neo4j_user, self.neo4j_password.get_secret_value())
        if self.is_local("neo4j"):
            return self.local_credentials("neo4j")
        return None

    @property
    def cassandra_auth(self) -> tuple[str, str] | None:
        """(user, password) for PlainTextAuthProvider: the configured ones, else the local server's, else None."""
        if self.cassandra_username and self.cassandra_password is not None:
            return (self.cassandra_username, self.cassandra_password.get_secret_value())
        if self.is_local("cassandra"):
            return self.local_credentials("cassandra")
        return None

    @property
    def kafka_sasl(self) -> tuple[str, str, str] | None:
        """(mechanism, user, password) of the Kafka clients: configured, else the local broker's SCRAM user."""
        if self.kafka_sasl_username and self.kafka_sasl_password is not None:
            return (self.kafka_sasl_mechanism, self.kafka_sasl_username, self.kafka_sasl_password.get_secret_value())
        if self.is_local("kafka"):
            local = self.local_credentials("kafka")
            if local is not None:
                return ("SCRAM-SHA-512", *local)
        return None

    @property
    def kafka_tls(self) -> bool:
        """True when the Kafka clients speak TLS (set explicitly, or implied by a CA or client certificate)."""
        if self.kafka_security_protocol is not None:
            return self.kafka_security_protocol in ("SSL", "SASL_SSL")
        return any(f is not None for f in (self.kafka_ssl_ca_file, self.kafka_ssl_cert_file))

    @property
    def kafka_protocol(self) -> KafkaProtocol:
        """The security.protocol in force."""
        if self.kafka_security_protocol is not None:
            return self.kafka_security_protocol
        if self.kafka_sasl is not None:
            return "SASL_SSL" if self.kafka_tls else "SASL_PLAINTEXT"
        return "SSL" if self.kafka_tls else "PLAINTEXT"

    def is_local(self, server: str) -> bool:
        """True when `server` is one that infra/ starts here (its address was not configured)."""
        overrides = {
            "mongo": self.mongo_uri_override,
            "kafka": self.kafka_bootstrap_override,
            "postgres": self.postgres_dsn_override,
            "cassandra": self.cassandra_hosts_override,
            "neo4j": self.neo4j_uri_override,
        }
        return overrides[server] is None

    @property
    def runtime_dir(self) -> Path:
        """Pid files and logs of the local servers."""
        return self.data_dir / "run"


def local_mongo_uri(port: int, credentials: tuple[str, str] | None) -> str:
    """The URI of a local SecantusDB on `port`, with SCRAM credentials (users live in `admin`) when given."""
    if credentials is None:
        return f"mongodb://127.0.0.1:{port}/?directConnection=true"
    user, password = (quote_plus(c) for c in credentials)
    return (f"mongodb://{user}:{password}@127.0.0.1:{port}/"
            "?directConnection=true&authSource=admin&authMechanism=SCRAM-SHA-256")


def local_postgres_dsn(port: int, credentials: tuple[str, str] | None) -> str:
    """The DSN of a local Postgres on `port`, as `credentials`' user (default `postgres`, no password)."""
    if credentials is None:
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"
    user, password = (quote(c, safe="") for c in credentials)
    return f"postgresql://{user}:{password}@127.0.0.1:{port}/postgres"


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; keyword overrides win (tests use them)."""
    return Settings(**overrides)  # type: ignore[arg-type]
