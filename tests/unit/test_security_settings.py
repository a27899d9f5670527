"""Security settings: generated local credentials per role, Kafka SASL/TLS and passthrough properties for every
client (librdkafka and Faust), Cassandra replication, secrets kept out of repr, the RF=1 status warning."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path

import faust
import pytest
from pydantic import SecretStr

from cdc.connect import cassandra_replication, cassandra_ssl_context
from cdc.credentials import ROLE_USERS, secrets_file
from cdc.kafka import KafkaConfigError, faust_credentials, kafka_config, kafka_ssl_context, topic_config
from cdc.settings import Settings, load_settings
from cli.status import replication_warnings
from infra.secrets import ensure_secrets, fingerprint, mark_provisioned, provisioned_with, scram_sha_256_verifier


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for server in ROLE_USERS:
        ensure_secrets(tmp_path, server)
    return tmp_path


def local(data_dir: Path, **overrides: object) -> Settings:
    return load_settings(data_dir=data_dir, **overrides).model_copy(update={
        "mongo_uri_override": None, "kafka_bootstrap_override": None, "postgres_dsn_override": None,
        "cassandra_hosts_override": None, "neo4j_uri_override": None, "neo4j_user": None, "neo4j_password": None,
        "cassandra_username": None, "cassandra_password": None, "kafka_sasl_username": None,
        "kafka_sasl_password": None,
    })


def test_generated_secrets_are_private_and_stable(data_dir: Path) -> None:
    path = secrets_file(data_dir, "mongo")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    first = json.loads(path.read_text())
    assert ensure_secrets(data_dir, "mongo") == first  # generated once
    assert len(set(first.values())) == len(first) and all(len(p) >= 32 for p in first.values())


def test_each_role_gets_only_its_own_users(data_dir: Path) -> None:
    s = local(data_dir)
    assert "cdcflow_admin:" in s.as_role("admin").mongo_uri
    assert "order_service:" in s.as_role("order").mongo_uri
    assert "cdcflow_tailer:" in s.as_role("tailer").mongo_uri
    assert "@" not in s.as_role("worker").mongo_uri  # no MongoDB user: the server refuses it
    assert s.as_role("reader").postgres_dsn.startswith("postgresql://cdcflow_reader:")
    assert s.as_role("worker").postgres_dsn.startswith("postgresql://cdcflow_worker:")
    assert s.as_role("product").postgres_dsn.startswith("postgresql://postgres@")  # no password: refused
    reader = s.as_role("reader").cassandra_auth
    assert reader is not None and reader[0] == "cdcflow_reader"
    assert s.as_role("order").cassandra_auth is None
    assert s.as_role("worker").neo4j_auth is not None
    assert s.as_role("tailer").kafka_sasl is not None and s.kafka_protocol == "SASL_PLAINTEXT"


def test_configured_credentials_win_over_generated_ones(data_dir: Path) -> None:
    s = local(data_dir).model_copy(update={
        "cassandra_hosts_override": "c1", "cassandra_username": "app", "cassandra_password": SecretStr("pw"),
        "kafka_bootstrap_override": "k1:9093",
    })
    assert s.cassandra_auth == ("app", "pw")
    assert s.kafka_sasl is None and s.kafka_protocol == "PLAINTEXT"  # an external cluster gets no local user


def test_kafka_security_reaches_every_librdkafka_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("# comment\nsocket.keepalive.enable=true\nclient.id: from-file\nfetch.wait.max.ms=5\n")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9093")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SSL_CA_FILE", "/etc/ca.pem")
    monkeypatch.setenv("CDCFLOW_KAFKA_PROPERTIES_FILE", str(props))
    monkeypatch.setenv("CDCFLOW_KAFKA_PROPERTIES", json.dumps({"client.id": "from-json"}))
    s = load_settings()
    config = kafka_config(s, **{"group.id": "g"})
    assert config["security.protocol"] == "SASL_SSL"
    assert (config["sasl.mechanism"], config["sasl.username"], config["sasl.password"]) == (
        "SCRAM-SHA-256", "svc", "hunter2")
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert config["socket.keepalive.enable"] == "true" and config["fetch.wait.max.ms"] == "5"
    assert config["client.id"] == "from-json"  # the JSON wins over the file
    assert config["group.id"] == "g"
    assert "hunter2" not in repr(s)


def test_bad_properties_file_is_a_clear_error(tmp_path: Path) -> None:
    props = tmp_path / "bad.properties"
    props.write_text("no separator here\n")
    s = load_settings(kafka_properties_file=props)
    with pytest.raises(KafkaConfigError, match="line 1"):
        kafka_config(s)
    with pytest.raises(KafkaConfigError, match="cannot read"):
        kafka_config(load_settings(kafka_properties_file=tmp_path / "missing"))


def test_faust_gets_the_same_credentials(data_dir: Path) -> None:
    creds = faust_credentials(local(data_dir))
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.username == "cdcflow" and creds.ssl_context is None
    tls = local(data_dir).model_copy(update={"kafka_bootstrap_override": "k:9093", "kafka_security_protocol": "SSL",
                                            "kafka_ssl_check_hostname": False})
    context = faust_credentials(tls)
    assert isinstance(context, ssl.SSLContext) and context is not None and not context.check_hostname
    assert kafka_ssl_context(local(data_dir)) is None
    assert faust_credentials(tls.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})) is None


def test_topic_settings() -> None:
    unset = topic_config(load_settings().model_copy(update={"kafka_min_insync_replicas": None}))
    assert "min.insync.replicas" not in unset and "max.message.bytes" in unset
    set_ = topic_config(load_settings(kafka_min_insync_replicas=2))
    assert set_ == {**unset, "min.insync.replicas": "2"}


def test_cassandra_replication_and_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDCFLOW_CASSANDRA_REPLICATION", raising=False)
    assert cassandra_replication(load_settings()) == "{'class': 'SimpleStrategy', 'replication_factor': '1'}"
    monkeypatch.setenv("CDCFLOW_CASSANDRA_REPLICATION", '{"class": "NetworkTopologyStrategy", "dc1": 3, "dc\'2": 2}')
    assert cassandra_replication(load_settings()) == (
        "{'class': 'NetworkTopologyStrategy', 'dc1': '3', 'dc''2': '2'}")
    monkeypatch.setenv("CDCFLOW_CASSANDRA_REPLICATION", '{"dc1": 3}')
    with pytest.raises(ValueError, match="class"):
        cassandra_replication(load_settings())
    assert cassandra_ssl_context(load_settings()) is None
    context = cassandra_ssl_context(load_settings(cassandra_tls=True))
    assert context is not None and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_consistency_levels_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCFLOW_CASSANDRA_READ_CONSISTENCY", "LOCAL_ONE")
    assert load_settings().cassandra_read_consistency == "LOCAL_ONE"
    assert load_settings().cassandra_write_consistency == "LOCAL_QUORUM"
    monkeypatch.setenv("CDCFLOW_CASSANDRA_READ_CONSISTENCY", "MOST")
    with pytest.raises(ValueError):
        load_settings()


def test_neo4j_ca_file_needs_a_plain_scheme(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    monkeypatch.setenv("NEO4J_CA_FILE", str(ca))
    monkeypatch.setenv("NEO4J_URI", "neo4j://graph:7687")
    monkeypatch.setenv("NEO4J_PASSWORD", "pw-not-in-the-error")
    assert load_settings().neo4j_ca_file == ca
    for scheme in ("neo4j+s", "bolt+ssc"):
        monkeypatch.setenv("NEO4J_URI", f"{scheme}://graph:7687")
        with pytest.raises(ValueError, match=re.escape("needs a bolt:// or neo4j:// NEO4J_URI")) as error:
            load_settings()
        assert f"not {scheme}://" in str(error.value) and "pw-not-in-the-error" not in str(error.value)


def test_status_warns_about_rf1_on_several_brokers() -> None:
    assert replication_warnings(1, 3) and "CDCFLOW_KAFKA_REPLICATION_FACTOR" in replication_warnings(1, 3)[0]
    assert replication_warnings(1, 1) == [] and replication_warnings(3, 3) == [] and replication_warnings(1, None) == []


def test_provisioning_marker_follows_the_passwords(tmp_path: Path) -> None:
    passwords = {"a": "x"}
    assert not provisioned_with(tmp_path, passwords)
    mark_provisioned(tmp_path, passwords)
    assert provisioned_with(tmp_path, passwords) and not provisioned_with(tmp_path, {"a": "y"})
    assert "x" not in (tmp_path / "auth-provisioned").read_text() and fingerprint(passwords) != "x"


def test_provisioning_marker_follows_the_grants(tmp_path: Path) -> None:
    # A server provisioned under other grants (the tailer's role before it pruned instead of marking) is again.
    passwords = {"a": "x"}
    mark_provisioned(tmp_path, passwords, {"tailer": ["update"]})
    assert provisioned_with(tmp_path, passwords, {"tailer": ["update"]})
    assert not provisioned_with(tmp_path, passwords, {"tailer": ["remove"]})
    assert not provisioned_with(tmp_path, passwords)


def test_postgres_scram_verifier_shape() -> None:
    verifier = scram_sha_256_verifier("pw")
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256" and rest.startswith("4096:") and "pw" not in verifier
    assert scram_sha_256_verifier("pw") != verifier  # salted
