"""Reading a ``password_file`` (no dependencies: a backup's head start reads one before the
configuration models load, cli/early.py)."""

from __future__ import annotations

import stat
from pathlib import Path


def read_password_file(path: Path) -> tuple[str, int]:
    """Return the password in ``path`` — its first line: a trailing newline (``echo pass >
    file``) is not part of it — and the file's permission bits. Raise OSError or
    UnicodeDecodeError."""
    mode = stat.S_IMODE(path.stat().st_mode)
    with path.open(encoding="utf-8") as handle:
        return handle.readline().rstrip("\r\n"), mode
