"""The one settings object: read from the environment (or a `.env` file) once, then passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Shortest API key the HTTP APIs accept (a guessable key is no key).
MIN_API_KEY_LENGTH = 16
#: What a Kafka topic or group prefix may hold (legal in topic names, at most 100 characters).
KAFKA_PREFIX_PATTERN = r"^[A-Za-z0-9._-]{0,100}$"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


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

    # External servers: set these to point at real clusters instead of the local ones.
    mongo_uri_override: str | None = Field(default=None, validation_alias=_env("MONGO_URI", "CDCFLOW_MONGO_URI"))
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

    # MongoDB client pool (one pooled client per process).
    mongo_max_pool_size: int = 50
    mongo_min_pool_size: int = 1
    mongo_server_selection_timeout_ms: int = 3000
    mongo_wait_queue_timeout_ms: int = 2000

    # Kafka.
    kafka_partitions: int = 4
    kafka_replication_factor: int = 1
    # Two deployments share one Kafka cluster by prefixes: records go to `<topic prefix><topic>` (the event's
    # `topic` field stays the logical name), and every consumer group is `<group prefix><group>` (unset: the
    # topic prefix). Applied where records are produced and consumed: tailer, workers, dead letters, replay,
    # dlq, status, demo, trace.
    kafka_topic_prefix: str = Field(default="", pattern=KAFKA_PREFIX_PATTERN)
    kafka_group_prefix: str | None = Field(default=None, pattern=KAFKA_PREFIX_PATTERN)

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
        """The MongoDB connection string in force."""
        if self.mongo_uri_override:
            return self.mongo_uri_override
        return f"mongodb://127.0.0.1:{self.mongo_port}/?directConnection=true"

    @property
    def kafka_bootstrap_servers(self) -> str:
        """Kafka bootstrap servers, comma-separated."""
        return self.kafka_bootstrap_override or f"127.0.0.1:{self.kafka_port}"

    @property
    def postgres_dsn(self) -> str:
        """The Postgres connection string in force (contains the password: never log it)."""
        if self.postgres_dsn_override is not None:
            return self.postgres_dsn_override.get_secret_value()
        return f"postgresql://postgres@127.0.0.1:{self.postgres_port}/postgres"

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
        """Driver auth tuple, or None when the server runs without auth (the local default)."""
        if self.neo4j_user and self.neo4j_password is not None:
            return (self.neo4j_user, self.neo4j_password.get_secret_value())
        return None

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


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; keyword overrides win (tests use them)."""
    return Settings(**overrides)  # type: ignore[arg-type]
