"""SFTP storage (any OpenSSH server) via paramiko.

Atomic put: write ``name.tmp-XXXXXXXX`` beside the target, then ``posix-rename`` it into place
(the OpenSSH extension, atomic on the server's filesystem); an error or an interruption removes
the temporary file, and ``list`` never shows one. The server's host key is always checked
against a known_hosts file: an unknown or changed key is refused, never accepted silently.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import secrets
import socket
import stat
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vya_backupdb.errors import CredentialError, NotFoundError, StorageError, ToolMissing
from vya_backupdb.storage.base import ObjectInfo
from vya_backupdb.storage.cloud import RemoteStorageBase, object_parts
from vya_backupdb.storage.remote import TransientStorageError, env_or_credential

if TYPE_CHECKING:
    from vya_backupdb.config.models import Settings
    from vya_backupdb.config.remote import RemoteConfig

log = logging.getLogger("vya_backupdb.storage.sftp")

TMP_MARKER = ".tmp-"
T = TypeVar("T")


def _translate(exc: BaseException, what: str) -> BaseException:
    import paramiko

    if isinstance(exc, FileNotFoundError) or (
        isinstance(exc, OSError) and exc.errno == errno.ENOENT
    ):
        return NotFoundError(f"backup object not found: {what}")
    if isinstance(exc, PermissionError) or (
        isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM)
    ):
        return StorageError(
            f"permission denied on the SFTP server: {what}",
            hint="Check the owner and mode of the remote directory for the login user.",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return CredentialError(
            f"SFTP login refused: {what}",
            hint="Check key_file / password_env and the user in the URL; try: "
            "vya-backupdb remote test NAME",
        )
    if isinstance(exc, paramiko.BadHostKeyException | paramiko.SSHException) and (
        "not found in known_hosts" in str(exc) or isinstance(exc, paramiko.BadHostKeyException)
    ):
        return CredentialError(
            f"the SFTP server's host key is unknown or changed: {exc}",
            hint="Add it to the known_hosts file after checking its fingerprint "
            "(ssh-keyscan -p PORT HOST >> known_hosts), or set known_hosts on the remote.",
        )
    if isinstance(exc, paramiko.SSHException | EOFError | socket.error | ConnectionError):
        return TransientStorageError(f"SFTP connection problem during {what}: {exc}")
    if isinstance(exc, OSError):
        return StorageError(f"SFTP error during {what}: {exc.strerror or exc}")
    return exc


class _Writer:
    def __init__(self, handle: Any, what: str):
        self._handle = handle
        self._what = what

    def write(self, data: bytes, /) -> int:
        try:
            self._handle.write(data)
        except Exception as exc:
            raise _translate(exc, self._what) from None
        return len(data)


class _Reader:
    def __init__(self, handle: Any, what: str):
        self._handle = handle
        self._what = what

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self._handle.read(size if size and size > 0 else 1024 * 1024)
        except Exception as exc:
            raise _translate(exc, self._what) from None
        return data


class SftpStorage(RemoteStorageBase):
    """Objects are files under ``root`` on the server; names map to relative paths."""

    def __init__(self, connect: Callable[[], Any], root: str, description: str):
        #: Returns a connected paramiko SSHClient; called again after a dropped connection.
        self._connect = connect
        self._client: Any = None
        self._sftp: Any = None
        self.root = "/" + root.strip("/")
        self.description = description

    @classmethod
    def from_config(
        cls,
        remote: RemoteConfig,
        environ: Mapping[str, str] = os.environ,
        settings: Settings | None = None,
    ) -> SftpStorage:
        """Return the storage of an ``sftp://`` remote (connecting on first use)."""
        try:
            import paramiko
        except ImportError:
            raise ToolMissing(
                "the SFTP client library (paramiko) is not installed",
                hint="Install it in the tool's environment: pip install 'paramiko>=3.4,<6'",
            ) from None
        password = env_or_credential(
            remote.password_env, None, f"remote {remote.name}", environ, settings
        )
        known_hosts = (remote.known_hosts or Path("~/.ssh/known_hosts")).expanduser()
        user = remote.user or os.environ.get("USER") or "root"

        def connect() -> Any:
            client = paramiko.SSHClient()
            if known_hosts.exists():
                client.load_host_keys(str(known_hosts))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(
                remote.host,
                port=remote.port,
                username=user,
                password=password,
                key_filename=str(remote.key_file.expanduser()) if remote.key_file else None,
                look_for_keys=remote.key_file is None and password is None,
                allow_agent=False,
                timeout=remote.timeout_seconds,
                banner_timeout=remote.timeout_seconds,
                auth_timeout=remote.timeout_seconds,
            )
            return client

        return cls(connect, remote.path, f"{remote.name} ({remote.url})")

    # -- connection ------------------------------------------------------------------------
    def _session(self) -> Any:
        transport = self._client.get_transport() if self._client is not None else None
        if self._sftp is None or transport is None or not transport.is_active():
            self.close()
            try:
                self._client = self._connect()
                self._sftp = self._client.open_sftp()
            except Exception as exc:
                raise _translate(exc, f"connecting to {self.description}") from None
        return self._sftp

    def _do(self, operation: Callable[[Any], T], what: str) -> T:
        try:
            return operation(self._session())
        except Exception as exc:
            error = _translate(exc, what)
            if isinstance(error, TransientStorageError):
                self.close()  # reconnect on the next attempt
            raise error from None

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        for thing in (self._sftp, self._client):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self._sftp = self._client = None

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, *object_parts(name))

    def _makedirs(self, sftp: Any, directory: str) -> None:
        missing: list[str] = []
        while directory not in ("/", ""):
            try:
                sftp.stat(directory)
                break
            except FileNotFoundError:
                missing.append(directory)
                directory = posixpath.dirname(directory)
        for path in reversed(missing):
            with contextlib.suppress(OSError):  # created meanwhile by another writer
                sftp.mkdir(path, 0o750)

    # -- the Storage protocol ----------------------------------------------------------------
    @contextlib.contextmanager
    def put(self, name: str) -> Iterator[_Writer]:
        path = self._path(name)
        tmp = f"{path}{TMP_MARKER}{secrets.token_hex(4)}"

        def start(sftp: Any) -> Any:
            self._makedirs(sftp, posixpath.dirname(path))
            handle = sftp.open(tmp, "wb")
            handle.set_pipelined(True)  # don't wait for each write's acknowledgement
            return handle

        handle = self._do(start, f"creating {name}")
        committed = False
        try:
            yield _Writer(handle, name)
            self._do(lambda s: handle.close(), f"writing {name}")
            self._do(lambda s: s.chmod(tmp, 0o640), f"writing {name}")
            self._do(lambda s: s.posix_rename(tmp, path), f"renaming {name} into place")
            committed = True
        finally:
            if not committed:
                with contextlib.suppress(Exception):
                    handle.close()
                with contextlib.suppress(Exception):
                    self._session().remove(tmp)

    @contextlib.contextmanager
    def get(self, name: str) -> Iterator[_Reader]:
        path = self._path(name)
        handle = self._do(lambda s: s.open(path, "rb"), name)
        try:
            yield _Reader(handle, name)
        finally:
            with contextlib.suppress(Exception):
                handle.close()

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of ``name`` from ``offset``."""

        def read(sftp: Any) -> bytes:
            with sftp.open(self._path(name), "rb") as handle:
                handle.seek(offset)
                data: bytes = handle.read(length)
                return data

        return self._do(read, name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base_parts = [p for p in prefix.split("/")[:-1] if p]
        start = "/".join(base_parts)
        yield from self._walk(start, prefix)

    def _walk(self, rel_dir: str, prefix: str) -> Iterator[ObjectInfo]:
        directory = posixpath.join(self.root, rel_dir) if rel_dir else self.root
        try:
            entries = self._do(lambda s: s.listdir_attr(directory), f"listing {rel_dir or '/'}")
        except NotFoundError:
            return
        for entry in sorted(entries, key=lambda e: e.filename):
            rel = f"{rel_dir}/{entry.filename}" if rel_dir else entry.filename
            mode = entry.st_mode or 0
            if stat.S_ISDIR(mode):
                if rel.startswith(prefix) or prefix.startswith(rel + "/"):
                    yield from self._walk(rel, prefix)
            elif stat.S_ISREG(mode) and TMP_MARKER not in entry.filename and rel.startswith(prefix):
                modified = datetime.fromtimestamp(entry.st_mtime or 0, UTC)
                yield ObjectInfo(rel, int(entry.st_size or 0), modified)

    def stat(self, name: str) -> ObjectInfo:
        attrs = self._do(lambda s: s.stat(self._path(name)), name)
        if not stat.S_ISREG(attrs.st_mode or 0):
            raise NotFoundError(f"backup object not found: {name} (not a file)")
        return ObjectInfo(
            name, int(attrs.st_size or 0), datetime.fromtimestamp(attrs.st_mtime or 0, UTC)
        )

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            self._do(lambda s: s.remove(path), name)
        except NotFoundError:
            return
        # Remove now-empty parent directories up to the root, like the local backend.
        parent = posixpath.dirname(path)
        while parent != self.root and parent.startswith(self.root + "/"):
            try:
                self._do(lambda s, p=parent: s.rmdir(p), parent)  # type: ignore[misc]
            except (StorageError, NotFoundError):
                break
            parent = posixpath.dirname(parent)
