"""Client TLS contexts, one way for every store that takes a Python `ssl.SSLContext` (Cassandra, Faust's Kafka)."""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import SecretStr


def client_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None, check_hostname: bool,
    key_password: SecretStr | None = None,
) -> ssl.SSLContext:
    """Verifies the server against `ca_file` (or the system's CAs), and its host name unless told not to;
    presents a client certificate when `cert_file` is given."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.check_hostname = check_hostname
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None,
                                key_password.get_secret_value() if key_password else None)
    return context
