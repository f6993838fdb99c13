"""The encrypted credential store and the random machine key that protects it.

The key is random (``Fernet.generate_key``), created on first use with mode 0600; nothing in it
derives from public facts such as the host name. ``$VYA_BACKUPDB_MASTER_KEY`` replaces the key
file (useful in containers). The store is ``<directory>/credentials.json`` (directory 0700, file
0600): one Fernet token per credential plus a check token, so a wrong key is reported as such
instead of as a corrupt entry, and a second key can never be mixed into the same file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vya_backupdb.config.models import Settings
from vya_backupdb.errors import CredentialError

if TYPE_CHECKING:
    # Imported where a key is used: a backup without a stored credential never loads it.
    from cryptography.fernet import Fernet

ENV_MASTER_KEY = "VYA_BACKUPDB_MASTER_KEY"
DEFAULT_MASTER_KEY_FILE = Path("~/.local/share/vya-backupdb/master.key")
STORE_FILE = "credentials.json"
STORE_VERSION = 1
ENC_PREFIX = "enc:"
_CHECK_PLAINTEXT = b"vya-backupdb key check"


def master_key_path(settings: Settings) -> Path:
    """Return where the machine key lives (``secrets.master_key_file`` or the default)."""
    return (settings.secrets.master_key_file or DEFAULT_MASTER_KEY_FILE).expanduser()


def secrets_directory(settings: Settings, config_dir: Path | None) -> Path:
    """Return the credential store directory: ``secrets.directory`` or ``.secrets`` beside
    the config file (the current directory when there is no file)."""
    if settings.secrets.directory is not None:
        return settings.secrets.directory.expanduser()
    return (config_dir or Path.cwd()) / ".secrets"


def _validated_key(raw: bytes, origin: str) -> Fernet:
    from cryptography.fernet import Fernet

    try:
        return Fernet(raw.strip())
    except (ValueError, TypeError):
        raise CredentialError(
            f"the master key from {origin} is not a valid key "
            "(expected 32 url-safe base64-encoded bytes, as written by vya-backupdb)",
            hint="Restore the right key file from your backup, or unset the variable. "
            "A new key cannot decrypt credentials stored with the old one.",
        ) from None


def load_master_key(
    settings: Settings, environ: Mapping[str, str] = os.environ, *, create: bool = False
) -> Fernet | None:
    """Return the machine key; None when it does not exist and ``create`` is false.

    Raise CredentialError when the key file is unreadable or malformed.
    """
    if environ.get(ENV_MASTER_KEY):
        return _validated_key(environ[ENV_MASTER_KEY].encode(), f"${ENV_MASTER_KEY}")
    path = master_key_path(settings)
    if not path.exists():
        if not create:
            return None
        from cryptography.fernet import Fernet

        return Fernet(_create_key_file(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CredentialError(
            f"cannot read the master key file {path}: {exc.strerror}",
            hint=f"Run as the user that owns it, or check: ls -l {path}",
        ) from None
    return _validated_key(raw, str(path))


def _create_key_file(path: Path) -> bytes:
    from cryptography.fernet import Fernet

    key = Fernet.generate_key()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it between our check and now: use theirs.
        return path.read_bytes().strip()
    except OSError as exc:
        raise CredentialError(
            f"cannot create the master key file {path}: {exc.strerror}",
            hint="Set secrets.master_key_file to a writable location, or provide the key in "
            f"${ENV_MASTER_KEY}.",
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


def encrypt_value(key: Fernet, plaintext: str) -> str:
    """Return ``enc:<token>``, usable as ``password:`` in the config."""
    return ENC_PREFIX + key.encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt_value(key: Fernet, value: str, what: str) -> str:
    """Return the plaintext of an ``enc:`` value; raise CredentialError when it can't be read."""
    from cryptography.fernet import InvalidToken

    token = value.removeprefix(ENC_PREFIX).strip()
    try:
        return key.decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError, ValueError):
        raise CredentialError(
            f"cannot decrypt {what}: the master key is not the one that encrypted it, "
            "or the value is damaged",
            hint="Use the original master key (file or $VYA_BACKUPDB_MASTER_KEY), or encrypt "
            "the password again with: vya-backupdb credentials encrypt",
        ) from None


def _ensure_private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask, and an existing directory keeps its mode.
        os.chmod(directory, 0o700)
    except OSError as exc:
        raise CredentialError(
            f"cannot create the secrets directory {directory}: {exc.strerror}",
            hint="Set secrets.directory in the config to a directory you can write.",
        ) from None


class CredentialStore:
    """Credentials by name, each encrypted with the machine key, in one JSON file."""

    def __init__(self, directory: Path, key: Fernet | None):
        self.directory = directory
        self.path = directory / STORE_FILE
        self._key = key

    def _require_key(self) -> Fernet:
        if self._key is None:
            raise CredentialError(
                f"the credential store {self.path} exists but there is no master key",
                hint="Restore the master key file (see secrets.master_key_file) or set "
                f"${ENV_MASTER_KEY}; without it the stored credentials cannot be read.",
            )
        return self._key

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": STORE_VERSION, "check": None, "credentials": {}}
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CredentialError(
                f"cannot read the credential store {self.path}: {reason}",
                hint=f"Check it is a file you can read: ls -l {self.path}",
            ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CredentialError(
                f"the credential store {self.path} is corrupt (line {exc.lineno}: {exc.msg})",
                hint=f"Restore it from a backup, or move it away and store the credentials "
                f"again: mv {self.path} {self.path}.bad",
            ) from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("credentials"), dict)
            or not all(isinstance(v, str) for v in data["credentials"].values())
        ):
            raise CredentialError(
                f"the credential store {self.path} is corrupt (unexpected structure)",
                hint=f"Move it away and store the credentials again: mv {self.path} "
                f"{self.path}.bad",
            )
        return data

    def _check_key(self, data: Mapping[str, Any]) -> Fernet:
        from cryptography.fernet import InvalidToken

        key = self._require_key()
        check = data.get("check")
        if isinstance(check, str):
            try:
                key.decrypt(check.encode("ascii"))
            except (InvalidToken, ValueError):
                raise CredentialError(
                    f"wrong master key for the credential store {self.path}",
                    hint="Use the key that created the store (secrets.master_key_file or "
                    f"${ENV_MASTER_KEY}); 'vya-backupdb config show' prints the key file path.",
                ) from None
        return key

    def names(self) -> list[str]:
        """Return the stored credential names, sorted (no key needed)."""
        return sorted(self._load()["credentials"])

    def get(self, name: str) -> str | None:
        """Return the credential ``name``, None when absent; raise CredentialError when the
        store is unreadable or the key is wrong."""
        data = self._load()
        token = data["credentials"].get(name)
        if token is None:
            return None
        key = self._check_key(data)
        return decrypt_value(key, token, f"credential {name!r} in {self.path}")

    def set(self, name: str, secret: str) -> None:
        """Store ``secret`` under ``name`` (replacing it); raise CredentialError on failure."""
        data = self._load()
        key = self._check_key(data)
        if not isinstance(data.get("check"), str):
            data["check"] = key.encrypt(_CHECK_PLAINTEXT).decode("ascii")
        data["version"] = STORE_VERSION
        data["credentials"][name] = key.encrypt(secret.encode("utf-8")).decode("ascii")
        self._save(data)

    def remove(self, name: str) -> bool:
        """Delete ``name``; return False when it was not stored."""
        data = self._load()
        if name not in data["credentials"]:
            return False
        del data["credentials"][name]
        self._save(data)
        return True

    def _save(self, data: Mapping[str, Any]) -> None:
        _ensure_private_dir(self.directory)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=self.directory)
        except OSError as exc:
            raise CredentialError(
                f"cannot write the credential store in {self.directory}: {exc.strerror}"
            ) from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CredentialError(
                f"cannot write the credential store {self.path}: {exc.strerror}"
            ) from None

    def mode_problems(self) -> list[str]:
        """Return warnings about permissions looser than 0700 (dir) / 0600 (file)."""
        problems = []
        for path, wanted in ((self.directory, 0o700), (self.path, 0o600)):
            if path.exists():
                mode = stat.S_IMODE(path.stat().st_mode)
                if mode & 0o077:
                    problems.append(f"{path} has mode {mode:04o}, expected {wanted:04o}")
        return problems


def open_store(
    settings: Settings,
    config_dir: Path | None,
    environ: Mapping[str, str] = os.environ,
    *,
    create_key: bool = False,
) -> CredentialStore:
    """Return the credential store of ``settings`` (creating the machine key if asked)."""
    key = load_master_key(settings, environ, create=create_key)
    return CredentialStore(secrets_directory(settings, config_dir), key)
