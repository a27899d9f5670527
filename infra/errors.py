"""Errors of infra/: each message is one line naming the server, the setting and what to do."""

from __future__ import annotations


class InfraError(Exception):
    """A local server could not be installed, started, reached or stopped."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.message = message


class InstallError(InfraError):
    """Installing a server failed (package manager, Maven, javac)."""


class StartError(InfraError):
    """A server did not start or did not become healthy before its deadline."""


class UnreachableError(InfraError):
    """A configured (external) server cannot be reached."""
