"""Run the benchmark scripts and write what they print into README.md, so its figures are never typed by hand.

    .venv/bin/python bench/update_readme.py [tailer] [sinks] [e2e]      (all three by default)

Each script's output replaces the block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in README.md.
The servers must be up (`cdcflow infra up`).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SCRIPTS = {"tailer": "bench_tailer.py", "sinks": "bench_sinks.py", "e2e": "bench_e2e.py"}


def run(name: str) -> str:
    """Run one benchmark script; its stdout, or SystemExit with its stderr on failure."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / SCRIPTS[name])], capture_output=True, text=True, cwd=ROOT, timeout=1800
    )
    if result.returncode != 0:
        raise SystemExit(f"bench {name} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return result.stdout.strip()


def replace_block(text: str, name: str, body: str) -> str:
    """README text with block `name` replaced by `body` (fenced); SystemExit when the markers are missing."""
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- bench:{name} --> … <!-- /bench:{name} --> block")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    block = f"```text\n# {SCRIPTS[name]}, {stamp}\n{body}\n```"
    return pattern.sub(lambda m: m.group(1) + block + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(SCRIPTS)} (default: all)")
    names = parser.parse_args().names or list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(SCRIPTS)}")
    for name in names:
        print(f"running {SCRIPTS[name]} …", flush=True)
        output = run(name)
        print(output, flush=True)
        README.write_text(replace_block(README.read_text(), name, output))
    print("README.md updated")


if __name__ == "__main__":
    main()
