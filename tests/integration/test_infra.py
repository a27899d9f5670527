"""infra/: the five real servers, `cdcflow infra up | down | status`, and its clear errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cdc.settings import Settings
from infra import stack
from infra.process import pid_alive
from infra.servers.base import ServerStatus
from infra.smoke import ROUND_TRIPS
from tests.helpers import free_port

pytestmark = pytest.mark.integration

CDCFLOW = [sys.executable, "-m", "cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the cdcflow CLI as a user would, with extra environment."""
    full_env = {**os.environ, "CDCFLOW_LOG_JSON": "true", **(env or {})}
    return subprocess.run([*CDCFLOW, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture(scope="module")
def all_up(settings: Settings) -> list[ServerStatus]:
    """The whole stack, up (a no-op when `make test` already started it)."""
    return stack.up(settings)


def test_every_server_is_healthy_after_up(all_up: list[ServerStatus]) -> None:
    assert [s.name for s in all_up] == list(stack.SERVER_NAMES)
    for status in all_up:
        assert status.healthy, f"{status.name}: {status.detail}"
        assert status.pid is not None and pid_alive(status.pid)


@pytest.mark.parametrize("name", stack.SERVER_NAMES)
def test_write_and_read_through_project_helpers(
    all_up: list[ServerStatus], settings: Settings, name: str
) -> None:
    result = ROUND_TRIPS[name](settings)
    assert result


def test_up_twice_is_harmless(all_up: list[ServerStatus], settings: Settings) -> None:
    before = {s.name: s.pid for s in all_up}
    again = stack.up(settings)
    assert {s.name: s.pid for s in again} == before
    assert all(s.healthy for s in again)


def test_status_json_shows_five_healthy_servers(all_up: list[ServerStatus]) -> None:
    result = run_cli("infra", "status", "--json")
    assert result.returncode == 0, result.stderr
    statuses = json.loads(result.stdout)
    assert sorted(s["name"] for s in statuses) == sorted(stack.SERVER_NAMES)
    assert all(s["healthy"] for s in statuses)


def test_whole_stack_stays_under_6_gib(all_up: list[ServerStatus]) -> None:
    total_kib = 0
    for status in all_up:
        assert status.pid is not None
        for line in Path(f"/proc/{status.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    assert total_kib < 6 * 1024 * 1024, f"servers use {total_kib / 1024 / 1024:.2f} GiB"



def test_down_stops_only_ours_and_status_reports_down(tmp_path: Path) -> None:
    # A private stack configuration (own data dir and port) so the shared servers stay up.
    env = {"CDCFLOW_DATA_DIR": str(tmp_path), "CDCFLOW_MONGO_PORT": str(free_port())}
    up = run_cli("infra", "up", "mongo", "--json", env=env)
    assert up.returncode == 0, up.stderr
    pid = json.loads(up.stdout)[0]["pid"]
    assert pid_alive(pid)

    down = run_cli("infra", "down", "mongo", env=env)
    assert down.returncode == 0, down.stderr
    assert "mongo" in down.stdout
    assert not pid_alive(pid), "down left the server process running"
    ours = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert ours.stdout.strip() == "", f"processes of ours left behind: {ours.stdout}"

    status = run_cli("infra", "status", "mongo", "--json", env=env)
    assert status.returncode == 1
    reported = json.loads(status.stdout)[0]
    assert reported["running"] is False and reported["healthy"] is False

    again = run_cli("infra", "down", "mongo", env=env)
    assert again.returncode == 0 and "nothing was running" in again.stdout


def test_unreachable_mongo_uri_is_one_clear_line(tmp_path: Path) -> None:
    env = {"CDCFLOW_DATA_DIR": str(tmp_path), "MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"}
    result = run_cli("infra", "up", "mongo", env=env, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "mongo" in lines[0] and "MONGO_URI" in lines[0] and "unreachable" in lines[0]


def test_port_already_taken_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {"CDCFLOW_DATA_DIR": str(tmp_path), "CDCFLOW_MONGO_PORT": str(port)}
        result = run_cli("infra", "up", "mongo", env=env, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"port {port} is already taken" in result.stderr and "CDCFLOW_MONGO_PORT" in result.stderr


def test_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    # A PATH without java (nor mvn): Kafka cannot be installed or run.
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {
        "CDCFLOW_DATA_DIR": str(tmp_path),
        "CDCFLOW_KAFKA_PORT": str(free_port()),
        "CDCFLOW_KAFKA_CONTROLLER_PORT": str(free_port()),
        "PATH": str(bare),
    }
    result = run_cli("infra", "up", "kafka", env=env, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "kafka" in result.stderr and "java" in result.stderr.lower()
