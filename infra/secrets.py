"""Generated credentials of the local servers, and the private folders they and the servers' data live in.

Passwords are made once per server user (cdc/credentials.py names them), kept in `<data dir>/secrets/<server>.json`
(folder 0700, file 0600, written atomically), and never logged, put in a process's arguments or in another
server's environment. Each server records which set of passwords it was provisioned with
(`provisioned_with` / `mark_provisioned`), so a changed or regenerated set provisions it again; so do changed
grants where a server's provisioning passes them (MongoDB's roles).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from cdc.credentials import SERVER_USERS, read_secrets, secrets_dir, secrets_file

#: The marker a server's data folder keeps: the fingerprint of the passwords it was provisioned with.
MARKER = "auth-provisioned"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if missing and make it 0700: only our user may enter it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def tighten(folder: Path) -> None:
    """Take group and other permissions off everything under `folder` (symlinks not followed): files written
    by an older cdcflow, before the data folder was private."""
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by our user only (0600 from creation, never wider)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(data_dir: Path, server: str) -> Iterator[None]:
    # Two `infra up` at once (a test and a terminal) must not each generate a different set.
    lock = private_dir(secrets_dir(data_dir)) / f".{server}.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def new_password() -> str:
    """A random password: 32 URL-safe characters (192 bits), safe unquoted in URIs, JAAS and CQL strings."""
    return secrets.token_urlsafe(24)


def ensure_secrets(data_dir: Path, server: str) -> dict[str, str]:
    """The passwords of `server`'s users, generating (once) those missing; {user: password}."""
    with _locked(data_dir, server):
        current = read_secrets(data_dir, server)
        missing = [u for u in SERVER_USERS[server] if u not in current]
        if missing:
            current.update({user: new_password() for user in missing})
            write_private(secrets_file(data_dir, server), json.dumps(current, indent=2, sort_keys=True) + "\n")
        return {u: current[u] for u in SERVER_USERS[server]}


def fingerprint(passwords: dict[str, str], grants: object = None) -> str:
    """A one-way fingerprint of a set of passwords, and of the grants given with them when the server's
    provisioning defines some (what a server was provisioned with)."""
    provisioned: object = passwords if grants is None else {"passwords": passwords, "grants": grants}
    return hashlib.sha256(json.dumps(provisioned, sort_keys=True).encode()).hexdigest()


def provisioned_with(server_dir: Path, passwords: dict[str, str], grants: object = None) -> bool:
    """True when the server in `server_dir` was provisioned with exactly these passwords (and grants)."""
    try:
        recorded = (server_dir / MARKER).read_text().strip()
    except OSError:
        return False
    return hmac.compare_digest(recorded, fingerprint(passwords, grants))


def mark_provisioned(server_dir: Path, passwords: dict[str, str], grants: object = None) -> None:
    """Record that the server in `server_dir` now has these passwords (and grants)."""
    write_private(server_dir / MARKER, fingerprint(passwords, grants) + "\n")


def scram_sha_256_verifier(password: str, iterations: int = 4096) -> str:
    """Postgres' stored form of a SCRAM-SHA-256 password (RFC 7677), so the plain password never reaches the
    server, its logs or `pg_stat_activity`: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
