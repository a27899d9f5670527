"""Log event names are snake_case identifiers, so that log pipelines can match on them (details go in fields)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cdc", "producers", "streams", "sinks", "infra", "cli", "bench")
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}
SNAKE = re.compile(r"[a-z][a-z0-9_]*")


def event_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every log call whose event name is a literal (`log.info("name", ...)`)."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def test_the_checker_sees_a_bad_name() -> None:
    names = event_names(ast.parse('log.warning("lease check failed", error=e)\nlog.info("lease_acquired")'))
    assert [name for _, name in names if not SNAKE.fullmatch(name)] == ["lease check failed"]


def test_every_log_event_name_is_snake_case() -> None:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, name in event_names(ast.parse(path.read_text(), filename=str(path))):
                if not SNAKE.fullmatch(name):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {name!r}")
    assert not bad, "\n".join(bad)
