"""A real OpenSSH server on loopback for the tests, with a throwaway host key and user key.

Runs ``/usr/sbin/sshd -D`` with a temporary config on a free port, logging in as the current
OS user with a key made for the session. Import the fixture into a test module:
``from harness.sftp import sftp_server  # noqa: F401``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.postgres import free_port

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SftpServer:
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    root: Path  # a directory on the server (the same machine) for the tests' objects

    def url(self, sub: str) -> str:
        return f"sftp://{self.user}@127.0.0.1:{self.port}{self.root}/{sub}"

    def remote(self, sub: str, name: str = "nas") -> dict[str, object]:
        """Return a storage.remotes entry for a directory under the server's root."""
        return {
            "name": name,
            "url": self.url(sub),
            "key_file": str(self.key_file),
            "known_hosts": str(self.known_hosts),
            "retries": 1,
        }

    def storage(self, sub: str):  # type: ignore[no-untyped-def]
        from vya_backupdb.config.remote import RemoteConfig
        from vya_backupdb.storage.sftp import SftpStorage

        return SftpStorage.from_config(RemoteConfig.model_validate(self.remote(sub)))


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """Yield a running sshd on 127.0.0.1 (stopped and removed afterwards)."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    base = tmp_path_factory.mktemp("sshd")
    base.chmod(0o700)
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True
        )
    (base / "authorized_keys").write_text((base / "user_key.pub").read_text())
    (base / "authorized_keys").chmod(0o600)
    port = free_port()
    host_pub = (base / "host_key.pub").read_text().split()
    (base / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = base / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {base / "host_key"}
PidFile {base / "sshd.pid"}
AuthorizedKeysFile {base / "authorized_keys"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
LogLevel ERROR
"""
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"sshd did not start: {err}")
            time.sleep(0.05)
    root = base / "srv"
    root.mkdir()
    try:
        yield SftpServer(port, getpass.getuser(), base / "user_key", base / "known_hosts", root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
