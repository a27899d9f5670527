"""Settings: environment names from DESIGN.md, local defaults, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.settings import load_settings


def test_defaults_point_at_local_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MONGO_URI", "KAFKA_BOOTSTRAP_SERVERS", "POSTGRES_DSN", "CASSANDRA_HOSTS", "NEO4J_URI"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings(data_dir=tmp_path)  # no generated credentials there
    assert s.mongo_uri.startswith("mongodb://127.0.0.1:")
    assert s.kafka_bootstrap_servers.startswith("127.0.0.1:")
    assert all(s.is_local(n) for n in ("mongo", "kafka", "postgres", "cassandra", "neo4j"))
    assert s.neo4j_auth is None


def test_design_env_names_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_URI", "mongodb://db.example:27017/?replicaSet=rs0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://app:hunter2@pg:5432/app")
    monkeypatch.setenv("CASSANDRA_HOSTS", "c1,c2:9142")
    monkeypatch.setenv("NEO4J_URI", "neo4j://graph:7687")
    monkeypatch.setenv("NEO4J_USER", "neo4j")
    monkeypatch.setenv("NEO4J_PASSWORD", "s3cret")
    s = load_settings()
    assert s.mongo_uri == "mongodb://db.example:27017/?replicaSet=rs0"
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert s.postgres_dsn == "postgresql://app:hunter2@pg:5432/app"
    assert s.cassandra_contact_points == [("c1", 9042), ("c2", 9142)]
    assert s.neo4j_uri == "neo4j://graph:7687" and s.neo4j_auth == ("neo4j", "s3cret")
    assert not s.is_local("mongo") and not s.is_local("neo4j")
    # Secrets never show in the settings' repr (which may end up in logs).
    assert "hunter2" not in repr(s) and "s3cret" not in repr(s)


def test_keyword_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCFLOW_MONGO_PORT", "1234")
    assert load_settings().mongo_port == 1234
    assert load_settings(mongo_port=4321).mongo_port == 4321
