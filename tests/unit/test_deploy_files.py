"""The deployment examples (infra/deploy/) stay true to the code: every command they run is one the CLI accepts,
every setting they set is one cdcflow reads, every file they mount exists, and the image holds every package.
(No Docker engine runs here: the image and the compose stack are not started by the tests.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import AliasChoices

from cdc.settings import Settings
from cli.main import app
from cli.serve import APP_ROLES
from sinks.registry import READ_MODELS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
SYSTEMD = DEPLOY / "systemd"
#: Names the servers' images read from the environment, not cdcflow.
SERVER_IMAGES = {"mongo", "apache/kafka", "postgres", "cassandra", "neo4j"}


def setting_names() -> set[str]:
    """Every environment variable name that sets a field of the settings (upper case)."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        else:
            names.add(f"CDCFLOW_{name.upper()}")
    return names


def parse_command(args: list[str]) -> None:
    """Parse `cdcflow ARGS` as the CLI would, without running it (click raises on an unknown command or option)."""
    # Typer carries its own copy of click: reach its classes through the objects, not `import click`.
    group: Any = typer.main.get_command(app)
    name, *rest = args
    command = group.get_command(group.make_context("cdcflow", [name]), name)
    assert command is not None, f"no command {name!r}"
    if hasattr(command, "get_command"):
        sub, *rest = rest
        command = command.get_command(command.make_context(name, [sub]), sub)
        assert command is not None, f"no command {name} {sub!r}"
    command.make_context(name, list(rest))


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def cdcflow_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image") == "cdcflow:local"}


def test_parse_command_refuses_what_the_cli_would() -> None:
    parse_command(["worker", "--read-model", "order_view"])
    with pytest.raises(Exception, match="No such option"):
        parse_command(["worker", "--no-such-option"])
    with pytest.raises(AssertionError):
        parse_command(["tial"])


def test_compose_runs_every_process_with_real_commands_and_settings() -> None:
    services = cdcflow_services()
    commands = {" ".join(svc["command"][:2]) for svc in services.values()}
    assert "worker --read-model" in commands
    assert {"tail", "status"} <= {svc["command"][0] for svc in services.values()}
    assert {svc["command"][1] for svc in services.values() if svc["command"][0] == "serve"} == set(APP_ROLES)
    assert {svc["command"][2] for svc in services.values() if svc["command"][0] == "worker"} == set(READ_MODELS)
    known = setting_names()
    for name, svc in services.items():
        parse_command(svc["command"])
        unknown = sorted(set(svc["environment"]) - known)
        assert not unknown, f"{name} sets what cdcflow never reads: {unknown}"


def test_compose_passwords_come_from_the_env_file_and_mounted_files_exist() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    example = {line.split("=", 1)[0] for line in (DEPLOY / "compose.env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    assert used == example, f"in compose only: {used - example}; in the example only: {example - used}"
    # No password has a default: each is required (`:?`) where it first appears.
    for var in used:
        assert f"${{{var}:?" in text, f"{var} has no `:?` (required) reference"
    for name, svc in compose()["services"].items():
        image = svc.get("image", "")
        assert image == "cdcflow:local" or image.split(":")[0] in SERVER_IMAGES, name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), f"{name} mounts a missing {source}"


def test_dockerfile_copies_every_package_and_runs_cdcflow() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r'include = \[([^\]]*)\]', pyproject)
    assert include is not None
    packages = {p.strip().strip('"').rstrip("*") for p in include.group(1).split(",")}
    assert copied == packages
    assert all((ROOT / p).is_dir() for p in copied)
    assert 'ENTRYPOINT ["tini", "--", "cdcflow"]' in text
    assert re.search(r"^USER cdcflow$", text, re.M), "the image runs as root"


def unit_commands() -> list[list[str]]:
    """Each systemd unit's ExecStart, as cdcflow arguments, for every instance it is meant for."""
    instances = {"cdcflow-worker@.service": list(READ_MODELS), "cdcflow-serve@.service": list(APP_ROLES)}
    found = []
    for unit in sorted(SYSTEMD.glob("*.service")):
        exec_start = re.search(r"^ExecStart=/opt/cdcflow/bin/cdcflow (.*)$", unit.read_text(), re.M)
        assert exec_start, f"{unit.name} does not run /opt/cdcflow/bin/cdcflow"
        for instance in instances.get(unit.name, [""]):
            found.append(exec_start.group(1).replace("%i", instance).split())
    return found


def test_systemd_units_run_real_commands() -> None:
    commands = unit_commands()
    assert {args[0] for args in commands} == {"tail", "worker", "serve"}
    for args in commands:
        parse_command(args)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds no unknown key or bad value (run against this checkout's cdcflow)."""
    cdcflow = Path(shutil.which("cdcflow") or ROOT / ".venv" / "bin" / "cdcflow")
    units = []
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text().replace("/opt/cdcflow/bin/cdcflow", str(cdcflow))
        name = unit.name.replace("@.", "@order_view.") if unit.name.endswith("@.service") else unit.name
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, cwd=tmp_path)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if str(tmp_path) in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
