"""The files engine: glob-selected trees archived as a streamed PAX tar plus a manifest.

The job hands in plain binary streams (already wrapped in compression and hashing); this module
knows nothing of storage or codecs. ``archive`` walks the tree once, in sorted order, and
writes each entry that is new or changed (all of them for a full backup) to the tar while it
writes the manifest of the whole tree state. Incremental and differential backups compare the
walk with the base manifest by a streaming merge-join: memory stays bounded whatever the size
of the tree (see files_walk and files_manifest).

The tar is a plain POSIX (PAX) archive, restorable with ``tar -xf`` alone (a full backup gives
the whole tree; an incremental holds only the entries that changed). Member names are the
absolute paths without the leading ``/`` (like GNU tar). Mtimes keep nanoseconds in the PAX
``mtime`` record.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.files_manifest import (
    ManifestEntry,
    ManifestReader,
    ManifestWriter,
    Writable,
    read_manifest,
)
from vya_backupdb.engines.files_restore import (
    ChainLink,
    RestoreResult,
    restore_archive,
    restore_chain,
)
from vya_backupdb.engines.files_tar import TarWriter
from vya_backupdb.engines.files_walk import PathSelection, WalkEntry
from vya_backupdb.engines.process import Readable
from vya_backupdb.errors import BackupFailed

__all__ = [
    "ArchiveResult",
    "ChainLink",
    "FilesEngine",
    "ManifestEntry",
    "RestoreResult",
    "check_manifest",
    "read_manifest",
    "restore_archive",
    "restore_chain",
]

Strategy = Literal["full", "incremental", "differential"]

MAX_WARNINGS = 1000
_COPY_CHUNK = 1024 * 1024
_NOATIME = getattr(os, "O_NOATIME", 0)


@dataclass
class ArchiveResult:
    """What one ``archive`` run produced.

    ``files``/``dirs``/``symlinks``/``hardlinks``/``others`` count the archive's members;
    ``unchanged`` the tree entries taken from the base; ``deleted`` the base entries gone;
    ``entries_total`` the manifest size (whole tree state); ``warnings`` the first
    :data:`MAX_WARNINGS` ``"path: reason"`` lines of ``warning_count``.
    """

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    others: int = 0
    bytes_read: int = 0
    unchanged: int = 0
    deleted: int = 0
    warnings: list[str] = field(default_factory=list)
    warning_count: int = 0
    entries_total: int = 0
    strategy: Strategy = "full"
    base_backup_id: str | None = None

    def warn(self, path: bytes, reason: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(f"{os.fsdecode(path)!s}: {reason}".replace("\n", "\\n"))


class _ContentReader:
    """Reads exactly ``size`` bytes of an open file for the tar, hashing them on the way.

    The tar header (with the size) is written before the content, so a file that shrinks is
    padded with zeros and one that grows is cut at ``size``; ``short`` / ``error`` say so.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size
        self.digest = hashlib.sha256()
        self.short = False
        self.error: str | None = None
        self.read_bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        if want <= 0:
            return b""
        data = b""
        if not self.short and self.error is None:
            try:
                data = os.read(self._fd, want)
            except OSError as exc:
                self.error = exc.strerror or str(exc)
                data = b""
            self.read_bytes += len(data)
            if len(data) < want:
                # Short reads of regular files only happen at EOF: the file shrank.
                if self.error is None:
                    self.short = True
                data += b"\0" * (want - len(data))
        else:
            data = b"\0" * want
        self._left -= want
        self.digest.update(data)
        return data


def _pax_time(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    whole, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}"


class _Names:
    """Caches uid/gid -> user/group names (a handful of ids per tree)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]


def _entry_type(st: os.stat_result) -> tuple[str, str | None] | None:
    """Return (manifest type, kind) of a stat result; None for sockets (not archivable)."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file", None
    if stat.S_ISDIR(mode):
        return "dir", None
    if stat.S_ISLNK(mode):
        return "symlink", None
    if stat.S_ISFIFO(mode):
        return "other", "fifo"
    if stat.S_ISCHR(mode):
        return "other", "chr"
    if stat.S_ISBLK(mode):
        return "other", "blk"
    return None


def _unchanged(new: ManifestEntry, old: ManifestEntry) -> bool:
    return (
        old.warning is None
        and old.backup is not None
        and new.type == old.type
        and new.size == old.size
        and new.mtime_ns == old.mtime_ns
        and new.inode == old.inode
        and new.mode == old.mode
        and new.uid == old.uid
        and new.gid == old.gid
        and new.link == old.link
        and new.kind == old.kind
        and new.rdev == old.rdev
    )


class FilesEngine:
    """Archives and estimates the tree selected by a ``files`` instance's patterns."""

    kind = "files"

    def __init__(self, instance: InstanceConfig) -> None:
        self.instance = instance
        self.selection = PathSelection.from_patterns(instance.paths, instance.exclude)
        self.compare_content = instance.compare_content

    def estimate(self) -> tuple[int, int]:
        """Return (entries, bytes of file content) the selection covers now (for --dry-run)."""
        entries = 0
        total = 0
        seen: set[tuple[int, int]] = set()
        for walked in self.selection.walk():
            entries += 1
            st = walked.st
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    inode = (st.st_dev, st.st_ino)
                    if inode in seen:
                        continue
                    seen.add(inode)
                total += st.st_size
        return entries, total

    def archive(
        self,
        out: BinaryIO | Writable,
        manifest_out: BinaryIO | Writable,
        *,
        backup_id: str,
        strategy: Strategy,
        base_manifest: Readable | None = None,
        on_entry: Callable[[str], None] | None = None,
    ) -> ArchiveResult:
        """Write the tar of new/changed entries to ``out`` and the manifest to ``manifest_out``.

        ``base_manifest`` is the decompressed manifest to compare with (the previous backup
        for incremental, the last full for differential); None makes a full backup.
        Return the counts and warnings; raise IntegrityError when the base manifest is damaged,
        BackupFailed when nothing matched the patterns.
        """
        result = ArchiveResult(strategy=strategy if base_manifest is not None else "full")
        base_reader = ManifestReader(base_manifest, name="base manifest") if base_manifest else None
        run = _ArchiveRun(self, out, manifest_out, backup_id, result, base_reader, on_entry)
        run.execute()
        if result.entries_total == 0:
            raise BackupFailed(
                f"the patterns of instance {self.instance.id!r} matched nothing",
                hint="Check 'paths' and 'exclude' in the configuration (patterns are absolute, "
                "e.g. /srv/app/**/*), then run: vya-backupdb backup INSTANCE --dry-run",
            )
        return result


class _ArchiveRun:
    """State of one archive run (kept out of FilesEngine so the engine stays reusable)."""

    def __init__(
        self,
        engine: FilesEngine,
        out: Writable,
        manifest_out: Writable,
        backup_id: str,
        result: ArchiveResult,
        base: ManifestReader | None,
        on_entry: Callable[[str], None] | None,
    ) -> None:
        self.engine = engine
        self.out = out
        self.manifest_out = manifest_out
        self.backup_id = backup_id
        self.result = result
        self.base = base
        self.on_entry = on_entry
        self.names = _Names()
        # First path of each multiply-linked inode; only files with st_nlink > 1 are kept.
        self.inodes: dict[tuple[int, int], bytes] = {}

    def execute(self) -> None:
        base_iter: Iterator[ManifestEntry] = iter(self.base) if self.base is not None else iter(())
        base_next = next(base_iter, None)  # reads the base header too
        if self.base is not None and self.base.header is not None:
            self.result.base_backup_id = self.base.header.backup_id
        writer = ManifestWriter(
            self.manifest_out,
            backup_id=self.backup_id,
            strategy=self.result.strategy,
            base=self.result.base_backup_id,
        )
        tar = TarWriter(self.out)
        for walked in self.engine.selection.walk(self.result.warn):
            entry = self._entry(walked)
            if entry is None:
                continue
            key = entry.key
            while base_next is not None and base_next.key < key:
                self.result.deleted += 1
                base_next = next(base_iter, None)
            old: ManifestEntry | None = None
            if base_next is not None and base_next.key == key:
                old = base_next
                base_next = next(base_iter, None)
            if old is not None and self._same(walked, entry, old):
                entry.sha256 = old.sha256
                entry.backup = old.backup
                self.result.unchanged += 1
            elif not self._write(tar, walked, entry):
                continue
            writer.add(entry)
            self.result.entries_total += 1
        while base_next is not None:
            self.result.deleted += 1
            base_next = next(base_iter, None)
        # The end-of-archive blocks only on success: a failed run must not look complete.
        tar.close()
        writer.close()

    def _entry(self, walked: WalkEntry) -> ManifestEntry | None:
        st = walked.st
        kinds = _entry_type(st)
        if kinds is None:
            self.result.warn(walked.path, "socket skipped (cannot be archived)")
            return None
        etype, kind = kinds
        entry = ManifestEntry(
            path=walked.path,
            type=etype,  # type: ignore[arg-type]
            size=st.st_size if etype == "file" else 0,
            mtime_ns=st.st_mtime_ns,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            uname=self.names.user(st.st_uid),
            gname=self.names.group(st.st_gid),
            inode=st.st_ino,
            dev=st.st_dev,
            kind=kind,
            rdev=st.st_rdev if kind in ("chr", "blk") else 0,
        )
        if etype == "symlink":
            try:
                entry.link = os.readlink(walked.path)
            except FileNotFoundError:
                self.result.warn(walked.path, "vanished during the backup")
                return None
            except OSError as exc:
                self.result.warn(walked.path, f"cannot read link ({exc.strerror or exc})")
                return None
        elif etype == "file" and st.st_nlink > 1:
            inode = (st.st_dev, st.st_ino)
            first = self.inodes.get(inode)
            if first is None:
                self.inodes[inode] = walked.path
            else:
                entry.type = "hardlink"
                entry.link = first
                entry.size = 0
        return entry

    def _same(self, walked: WalkEntry, entry: ManifestEntry, old: ManifestEntry) -> bool:
        if not _unchanged(entry, old):
            return False
        if entry.type != "file" or not self.engine.compare_content:
            return True
        digest = self._hash_file(walked.path)
        return digest is not None and digest == old.sha256

    def _hash_file(self, path: bytes) -> str | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None  # the archiving step reports it
        try:
            digest = hashlib.sha256()
            while chunk := os.read(fd, _COPY_CHUNK):
                digest.update(chunk)
            return digest.hexdigest()
        except OSError:
            return None
        finally:
            os.close(fd)

    def _tarinfo(self, entry: ManifestEntry) -> tarfile.TarInfo:
        info = tarfile.TarInfo(os.fsdecode(entry.path.lstrip(b"/")))
        seconds, frac = divmod(entry.mtime_ns, 1_000_000_000)
        info.mtime = seconds
        if frac:
            info.pax_headers = {"mtime": _pax_time(entry.mtime_ns)}
        info.mode = entry.mode
        info.uid = entry.uid
        info.gid = entry.gid
        info.uname = entry.uname
        info.gname = entry.gname
        return info

    def _add(self, tar: TarWriter, info: tarfile.TarInfo, content: Readable | None) -> None:
        tar.add(info, content)

    def _write(self, tar: TarWriter, walked: WalkEntry, entry: ManifestEntry) -> bool:
        """Write ``entry`` to the tar; return False when it vanished (then it is not listed)."""
        entry.backup = self.backup_id
        if entry.type == "file":
            return self._write_file(tar, walked, entry)
        info = self._tarinfo(entry)
        if entry.type == "dir":
            info.type = tarfile.DIRTYPE
            self.result.dirs += 1
        elif entry.type == "symlink":
            assert entry.link is not None
            info.type = tarfile.SYMTYPE
            info.linkname = os.fsdecode(entry.link)
            self.result.symlinks += 1
        elif entry.type == "hardlink":
            assert entry.link is not None
            info.type = tarfile.LNKTYPE
            info.linkname = os.fsdecode(entry.link.lstrip(b"/"))
            self.result.hardlinks += 1
        else:
            info.type = {"fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}.get(
                entry.kind or "", tarfile.BLKTYPE
            )
            info.devmajor = os.major(entry.rdev)
            info.devminor = os.minor(entry.rdev)
            self.result.others += 1
        self._add(tar, info, None)
        self._notify(entry)
        return True

    def _write_file(self, tar: TarWriter, walked: WalkEntry, entry: ManifestEntry) -> bool:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            try:
                fd = os.open(walked.path, flags | _NOATIME)
            except PermissionError:
                # O_NOATIME needs ownership of the file; retry without it.
                fd = os.open(walked.path, flags)
        except FileNotFoundError:
            self.result.warn(walked.path, "vanished during the backup")
            return False
        except PermissionError as exc:
            self.result.warn(walked.path, f"unreadable ({exc.strerror or exc}); not archived")
            entry.backup = None
            entry.warning = "unreadable"
            return True
        except OSError as exc:
            self.result.warn(walked.path, f"cannot open ({exc.strerror or exc}); not archived")
            entry.backup = None
            entry.warning = "unreadable"
            return True
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                self.result.warn(walked.path, "replaced by a non-file during the backup; skipped")
                return False
            # What we archive is what the open file says now, not the earlier lstat.
            entry.size = before.st_size
            entry.mtime_ns = before.st_mtime_ns
            entry.mode = stat.S_IMODE(before.st_mode)
            entry.uid, entry.gid, entry.inode = before.st_uid, before.st_gid, before.st_ino
            info = self._tarinfo(entry)
            info.type = tarfile.REGTYPE
            info.size = before.st_size
            content = _ContentReader(fd, before.st_size)
            self._add(tar, info, content)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        entry.sha256 = content.digest.hexdigest()
        self.result.files += 1
        self.result.bytes_read += content.read_bytes
        if content.error is not None:
            self.result.warn(walked.path, f"read error ({content.error}); content zero-filled")
            entry.warning = "read error"
        elif (
            content.short
            or after.st_size != before.st_size
            or after.st_mtime_ns != before.st_mtime_ns
        ):
            self.result.warn(walked.path, "changed while it was read; archived content may mix")
            entry.warning = "changed during read"
        self._notify(entry)
        return True

    def _notify(self, entry: ManifestEntry) -> None:
        if self.on_entry is not None:
            self.on_entry(os.fsdecode(entry.path))


def check_manifest(stream: Readable) -> int:
    """Return the number of entries of a manifest stream; raise IntegrityError when damaged."""
    count = 0
    for _entry in read_manifest(stream):
        count += 1
    return count
