"""Fetch a server's jars from Maven Central into the cache, once (a marker records what was fetched)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from infra.errors import InstallError

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cdcflow.infra</groupId>
  <artifactId>{name}-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""

_DEP = """    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
      <exclusions>
{exclusions}
      </exclusions>
    </dependency>"""

_EXCL = """        <exclusion><groupId>{group}</groupId><artifactId>{artifact}</artifactId></exclusion>"""


def fetch_jars(
    name: str,
    coordinates: Sequence[str],
    cache_dir: Path,
    exclusions: Sequence[str] = (),
) -> Path:
    """Ensure `<cache>/<name>/lib` holds the jars of `coordinates` (group:artifact:version) and return it.

    `exclusions` are group:artifact patterns (artifact may be `*`) left out of every dependency.
    """
    if shutil.which("mvn") is None:
        raise InstallError(name, "Maven (mvn) is not installed: apt-get install -y maven")
    fingerprint = hashlib.sha256("\n".join([*coordinates, "--", *exclusions]).encode()).hexdigest()[:16]
    home = cache_dir / name
    lib = home / "lib"
    marker = home / f".complete-{fingerprint}"
    if marker.exists() and any(lib.glob("*.jar")):
        return lib
    home.mkdir(parents=True, exist_ok=True)
    excl_xml = "\n".join(
        _EXCL.format(group=e.split(":")[0], artifact=e.split(":")[1]) for e in exclusions
    )
    deps = []
    for coord in coordinates:
        group, artifact, version = coord.split(":")
        deps.append(_DEP.format(group=group, artifact=artifact, version=version, exclusions=excl_xml))
    (home / "pom.xml").write_text(_POM.format(name=name, deps="\n".join(deps)))
    if lib.exists():
        shutil.rmtree(lib)
    cmd = [
        "mvn", "-q", "-B",
        f"-Dmaven.repo.local={cache_dir / 'm2'}",
        "-f", str(home / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={lib}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0 or not any(lib.glob("*.jar")):
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise InstallError(name, "fetching jars from Maven Central failed: " + " | ".join(tail))
    for old in home.glob(".complete-*"):
        old.unlink()
    marker.write_text("\n".join(coordinates) + "\n")
    return lib


def java_binary(server: str) -> str:
    """The java executable, or a clear InstallError naming what to install."""
    java = shutil.which("java")
    if java is None:
        raise InstallError(
            server, "Java 17+ is required but `java` is not on PATH: apt-get install -y openjdk-17-jdk-headless"
        )
    return java
