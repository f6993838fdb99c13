"""Restoring files backups: a chain of archives guided by a manifest, or a lone tar.

Safety first: an archive may be tampered with, so nothing is ever written outside ``target``.

- Member names (and manifest paths) that are absolute, empty, or hold a ``..`` component are
  refused (IntegrityError) before anything is written for them.
- A relative symlink whose target climbs above ``target`` is refused. An absolute symlink is
  judged as if ``target`` were the root (where it will point once the tree is back in place)
  and created verbatim: a link by itself writes nothing.
- Every write resolves its parent directory (``realpath``) and refuses when a symlink leads
  outside ``target``; the last component is never followed (``O_NOFOLLOW``, write to a
  temporary name then ``rename``, which replaces a link instead of writing through it).
- A hard link must name a regular file inside ``target`` reached without leaving it.
- Device files are created only when running as root.

Chain restore (``restore_chain``): the final manifest says what the tree was; each file's
content comes from the archive of the backup its entry names. The manifest is spooled to a
temporary file (bounded memory), then: directories, file contents (each archive read once,
oldest first, merged with the manifest since both are sorted by path), links and special
files, and at last directory modes and mtimes (children would change them). Metadata comes
from the manifest, so a chmod-only change recorded by an incremental is restored too.

Paths that exist in ``target`` but not in the manifest are left alone: restoring into a fresh
``--target`` never meets any, and in place we do not delete what the user may have created
since (``deleted`` stays 0; a future ``--delete`` option can merge-join the target tree).
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import json
import os
import pwd
import secrets
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

from wcmatch import glob

from vya_backupdb.engines.files_manifest import (
    ManifestEntry,
    ManifestReader,
    ManifestWriter,
    path_key,
)
from vya_backupdb.engines.process import Readable
from vya_backupdb.errors import IntegrityError, RestoreFailed

Existing = Literal["overwrite", "skip", "error"]

LISTING_LIMIT = 1000
MAX_WARNINGS = 1000
_COPY_CHUNK = 1024 * 1024
_TAR_BUFSIZE = 1024 * 1024
_TMP_PREFIX = b".vya-restore-"
_INCLUDE_FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB

_HOSTILE_HINT = (
    "This archive tries to write outside the restore target: it was tampered with or built "
    "by hand. Do not restore it; pick another backup with: vya-backupdb list"
)


@dataclass
class ChainLink:
    """One backup of a chain: its id and how to open its (decompressed) tar stream."""

    backup_id: str
    open_archive: Callable[[], AbstractContextManager[Readable]]


@dataclass
class RestoreResult:
    """What a restore did (or, with dry_run, would do).

    ``entries`` selected entries; ``written`` entries created or replaced; ``skipped`` entries
    left alone (existing with skip, or without content); ``listing`` the first
    :data:`LISTING_LIMIT` lines of a dry run.
    """

    written: int = 0
    skipped: int = 0
    deleted: int = 0
    entries: int = 0
    bytes_written: int = 0
    dry_run_listing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warning_count: int = 0

    def warn(self, path: bytes, reason: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(f"{_show(path)}: {reason}")

    def listing(self, line: str) -> None:
        if len(self.dry_run_listing) < LISTING_LIMIT:
            self.dry_run_listing.append(line)


def _show(path: bytes) -> str:
    """Return a path for messages: undecodable bytes and newlines escaped."""
    return repr(os.fsdecode(path))[1:-1]


def _hostile(message: str) -> IntegrityError:
    return IntegrityError(message, hint=_HOSTILE_HINT)


def safe_relpath(name: bytes | str, *, what: str = "archive member") -> bytes:
    """Return ``name`` as a normalized relative path; raise IntegrityError when it is unsafe.

    Unsafe: absolute, empty, or holding a ``..`` component (NUL cannot come out of tar).
    """
    raw = os.fsencode(name)
    if raw.startswith(b"/"):
        raise _hostile(f"{what} {_show(raw)!r} has an absolute path; refusing to restore it")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if not parts:
        raise _hostile(f"{what} {_show(raw)!r} has an empty name; refusing to restore it")
    if b".." in parts:
        raise _hostile(f"{what} {_show(raw)!r} contains '..'; refusing to restore it")
    return b"/".join(parts)


def _manifest_relpath(path: bytes) -> bytes:
    if not path.startswith(b"/"):
        raise _hostile(f"manifest path {_show(path)!r} is not absolute")
    return safe_relpath(path[1:], what="manifest path")


def check_symlink(rel: bytes, link: bytes) -> None:
    """Raise IntegrityError when the symlink ``rel`` -> ``link`` would point above the target.

    Absolute targets are judged as if the target directory were ``/``: they stay inside.
    """
    if not link:
        raise _hostile(f"symlink {_show(rel)!r} has an empty target")
    if link.startswith(b"/"):
        return
    depth = rel.count(b"/")  # components of the link's directory below the target
    for part in link.split(b"/"):
        if part == b"..":
            depth -= 1
            if depth < 0:
                raise _hostile(
                    f"symlink {_show(rel)!r} points outside the restore target "
                    f"({_show(link)!r}); refusing it"
                )
        elif part not in (b"", b"."):
            depth += 1


class IncludeFilter:
    """Selects entries for a selective restore: a match selects the entry and all below it.

    Patterns are matched against the original absolute paths; a pattern not starting with
    ``/`` or ``**`` matches at any depth (``*.conf`` == ``**/*.conf``).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        normalized = [p if p.startswith(("/", "**")) else "**/" + p for p in patterns if p]
        self._matcher = glob.compile(normalized, flags=_INCLUDE_FLAGS) if normalized else None
        self._selected_dir: bytes | None = None

    def _match(self, path: bytes) -> bool:
        return self._matcher is None or bool(self._matcher.match(os.fsdecode(path)))

    def selected(self, path: bytes, is_dir: bool) -> bool:
        """Return True when ``path`` is selected; call in path order (for subtree selection)."""
        if self._matcher is None:
            return True
        if self._selected_dir is not None and path.startswith(self._selected_dir + b"/"):
            return True
        if self._match(path):
            if is_dir:
                self._selected_dir = path
            return True
        return False

    def selected_anywhere(self, path: bytes) -> bool:
        """Return True when ``path`` or one of its ancestors matches (any order)."""
        if self._matcher is None:
            return True
        current = path
        while current not in (b"", b"/"):
            if self._match(current):
                return True
            current = current.rsplit(b"/", 1)[0]
        return False


@dataclass
class _Meta:
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime_ns: int

    @classmethod
    def of_entry(cls, entry: ManifestEntry) -> _Meta:
        return cls(entry.mode, entry.uid, entry.gid, entry.uname, entry.gname, entry.mtime_ns)

    @classmethod
    def of_member(cls, member: tarfile.TarInfo) -> _Meta:
        return cls(
            stat.S_IMODE(member.mode),
            member.uid,
            member.gid,
            member.uname,
            member.gname,
            _member_mtime_ns(member),
        )


def _member_mtime_ns(member: tarfile.TarInfo) -> int:
    """Return the member's mtime in ns, exact when a PAX record holds it."""
    raw = member.pax_headers.get("mtime")
    if raw:
        negative = raw.startswith("-")
        whole, _, frac = raw.lstrip("-").partition(".")
        try:
            ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9])
        except ValueError:
            ns = int(float(member.mtime) * 1_000_000_000)
        else:
            return -ns if negative else ns
        return ns
    return int(member.mtime) * 1_000_000_000


class _HashingWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


class _Extractor:
    """Creates entries under ``target`` with every safety check (see the module docstring)."""

    def __init__(self, target: Path, existing: Existing, result: RestoreResult) -> None:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RestoreFailed(
                f"cannot create the restore target {target}: {exc.strerror or exc}",
                hint="Check the path and its permissions, or pick another --target DIR.",
            ) from exc
        if not target.is_dir():
            raise RestoreFailed(f"restore target {target} is not a directory")
        self.root = os.fsencode(os.path.realpath(target))
        self.existing = existing
        self.result = result
        self.as_root = os.geteuid() == 0
        self._verified_parent: bytes | None = None
        self._uids: dict[str, int | None] = {}
        self._gids: dict[str, int | None] = {}
        self._dirs = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        self._dirs.close()

    # -- paths -------------------------------------------------------------------------------
    def dest(self, rel: bytes) -> bytes:
        return (self.root.rstrip(b"/") + b"/" + rel) if rel else self.root

    def _inside(self, real: bytes) -> bool:
        return self.root == b"/" or real == self.root or real.startswith(self.root + b"/")

    def ensure_parent(self, rel: bytes) -> bytes:
        """Return the real parent directory of ``rel``, creating missing directories.

        Raise IntegrityError when a symlink on the way leads outside the target.
        """
        parent_rel = rel.rpartition(b"/")[0]
        if parent_rel == self._verified_parent:
            return self.dest(parent_rel)
        current = self.root
        for part in parent_rel.split(b"/") if parent_rel else []:
            current = current.rstrip(b"/") + b"/" + part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(current)
                if not self._inside(real):
                    raise _hostile(
                        f"{_show(rel)!r} would be written through the symlink "
                        f"{_show(current)!r}, which leads outside the restore target "
                        f"({_show(real)!r}); refusing"
                    )
                if not os.path.isdir(real):
                    raise RestoreFailed(
                        f"cannot restore {_show(rel)!r}: {_show(current)!r} is not a directory"
                    )
                current = real
            elif not stat.S_ISDIR(st.st_mode):
                raise RestoreFailed(
                    f"cannot restore {_show(rel)!r}: {_show(current)!r} is in the way and is "
                    "not a directory",
                    hint="Remove it, or restore into an empty --target DIR.",
                )
        self._verified_parent = parent_rel
        return current

    def _forget_parents(self) -> None:
        # A new symlink may change where a cached parent leads: verify again next time.
        self._verified_parent = None

    def _slot(self, rel: bytes, is_dir: bool) -> bool | None:
        """Return None when ``rel`` is free, True when writable (exists), False to skip it."""
        try:
            st = os.lstat(self.dest(rel))
        except FileNotFoundError:
            return None
        if is_dir and stat.S_ISDIR(st.st_mode):
            return self.existing != "skip"
        if self.existing == "skip":
            self.result.skipped += 1
            return False
        if self.existing == "error":
            raise _exists_error(self.dest(rel))
        if stat.S_ISDIR(st.st_mode):
            raise RestoreFailed(
                f"cannot replace the directory {_show(self.dest(rel))!r} with a non-directory",
                hint="Remove the directory, or restore into an empty --target DIR.",
            )
        if is_dir:
            os.unlink(self.dest(rel))
            return None
        return True

    def _tmp_name(self, parent: bytes) -> bytes:
        return parent.rstrip(b"/") + b"/" + _TMP_PREFIX + secrets.token_hex(8).encode()

    # -- ownership and metadata --------------------------------------------------------------
    def _ids(self, meta: _Meta) -> tuple[int, int]:
        """Return (uid, gid): by name when the name exists here (like GNU tar), else numeric."""
        if meta.uname and meta.uname not in self._uids:
            try:
                self._uids[meta.uname] = pwd.getpwnam(meta.uname).pw_uid
            except KeyError:
                self._uids[meta.uname] = None
        if meta.gname and meta.gname not in self._gids:
            try:
                self._gids[meta.gname] = grp.getgrnam(meta.gname).gr_gid
            except KeyError:
                self._gids[meta.gname] = None
        uid = self._uids.get(meta.uname) if meta.uname else None
        gid = self._gids.get(meta.gname) if meta.gname else None
        return (meta.uid if uid is None else uid), (meta.gid if gid is None else gid)

    def _apply(self, target: int | bytes, meta: _Meta, *, link: bool = False) -> None:
        follow = not link
        if self.as_root:
            uid, gid = self._ids(meta)
            os.chown(target, uid, gid, follow_symlinks=follow)
        if not link:
            os.chmod(target, meta.mode)
        ns = (meta.mtime_ns, meta.mtime_ns)
        os.utime(target, ns=ns, follow_symlinks=follow)

    # -- entries -----------------------------------------------------------------------------
    def write_file(
        self, rel: bytes, content: Readable, size: int, meta: _Meta, sha256: str | None = None
    ) -> None:
        parent = self.ensure_parent(rel)
        if self._slot(rel, is_dir=False) is False:
            return
        tmp = self._tmp_name(parent)
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            try:
                writer = _HashingWriter(fd)
                left = size
                while left > 0:
                    chunk = content.read(min(_COPY_CHUNK, left))
                    if not chunk:
                        raise IntegrityError(
                            f"the archive is truncated inside {_show(rel)!r}",
                            hint="Do not restore this file; pick another with: vya-backupdb list",
                        )
                    writer.write(chunk)
                    left -= len(chunk)
                if sha256 is not None and writer.digest.hexdigest() != sha256:
                    raise IntegrityError(
                        f"the content of {_show(rel)!r} does not match its manifest checksum",
                        hint="The archive is damaged; run: vya-backupdb verify, "
                        "or restore another backup.",
                    )
                self._apply(fd, meta)
            finally:
                os.close(fd)
            os.rename(tmp, self.dest(rel))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.result.written += 1
        self.result.bytes_written += size

    def make_dir(self, rel: bytes, meta: _Meta) -> None:
        self.ensure_parent(rel)
        state = self._slot(rel, is_dir=True)
        if state is None:
            os.mkdir(self.dest(rel), 0o700)
        # Modes and mtimes of directories are set last: creating children changes mtimes,
        # and a read-only mode would stop us from creating them.
        if state is not False:
            record = {
                "p": base64.b64encode(rel).decode("ascii"),
                "m": meta.mode,
                "u": meta.uid,
                "g": meta.gid,
                "un": meta.uname,
                "gn": meta.gname,
                "t": meta.mtime_ns,
            }
            self._dirs.write(json.dumps(record).encode("ascii") + b"\n")
            self.result.written += 1

    def make_symlink(self, rel: bytes, link: bytes, meta: _Meta) -> None:
        check_symlink(rel, link)
        parent = self.ensure_parent(rel)
        if self._slot(rel, is_dir=False) is False:
            return
        tmp = self._tmp_name(parent)
        os.symlink(link, tmp)
        try:
            os.rename(tmp, self.dest(rel))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._forget_parents()
        self._apply(self.dest(rel), meta, link=True)
        self.result.written += 1

    def make_hardlink(self, rel: bytes, source_rel: bytes) -> bool:
        """Link ``rel`` to ``source_rel``; return False when the source is not there."""
        source_parent = os.path.realpath(self.dest(source_rel.rpartition(b"/")[0]))
        if not self._inside(source_parent):
            raise _hostile(
                f"hard link {_show(rel)!r} names {_show(source_rel)!r}, reached through a "
                "symlink leading outside the restore target; refusing"
            )
        source = source_parent.rstrip(b"/") + b"/" + source_rel.rpartition(b"/")[2]
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise _hostile(
                f"hard link {_show(rel)!r} names {_show(source_rel)!r}, which is not a "
                "regular file inside the target; refusing"
            )
        parent = self.ensure_parent(rel)
        if self._slot(rel, is_dir=False) is False:
            return True
        tmp = self._tmp_name(parent)
        os.link(source, tmp, follow_symlinks=False)
        try:
            os.rename(tmp, self.dest(rel))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.result.written += 1
        return True

    def make_special(self, rel: bytes, kind: str, rdev: int, meta: _Meta) -> None:
        if kind != "fifo" and not self.as_root:
            raise RestoreFailed(
                f"{_show(rel)!r} is a device file; only root may create device files",
                hint="Run the restore as root, or leave it out with --include.",
            )
        parent = self.ensure_parent(rel)
        if self._slot(rel, is_dir=False) is False:
            return
        tmp = self._tmp_name(parent)
        if kind == "fifo":
            os.mkfifo(tmp, 0o600)
        else:
            kind_bits = stat.S_IFCHR if kind == "chr" else stat.S_IFBLK
            os.mknod(tmp, 0o600 | kind_bits, rdev)
        try:
            os.rename(tmp, self.dest(rel))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._apply(self.dest(rel), meta)
        self.result.written += 1

    def finish(self) -> None:
        """Apply the directory modes and mtimes recorded by make_dir."""
        self._dirs.seek(0)
        for line in self._dirs:
            record = json.loads(line)
            rel = base64.b64decode(record["p"])
            self.ensure_parent(rel)
            path = self.dest(rel)
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
            except FileNotFoundError:
                continue
            meta = _Meta(
                record["m"], record["u"], record["g"], record["un"], record["gn"], record["t"]
            )
            self._apply(path, meta)


def _exists_error(path: bytes) -> RestoreFailed:
    return RestoreFailed(
        f"{_show(path)!r} already exists in the restore target",
        hint="Add --overwrite to replace existing files, --skip-existing to keep them, or "
        "restore into an empty directory with --target DIR.",
    )


def _os_failure(exc: OSError, target: Path) -> RestoreFailed:
    name = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes)) else str(target)
    return RestoreFailed(
        f"restore into {target} failed at {name!r}: {exc.strerror or exc}",
        hint="Check free space and permissions of the target, then run the restore again "
        "(add --overwrite to replace what the failed run wrote).",
    )


def _open_tar(stream: Readable) -> tarfile.TarFile:
    try:
        return tarfile.open(
            fileobj=cast(Any, stream),
            mode="r|",
            encoding="utf-8",
            errors="surrogateescape",
            bufsize=_TAR_BUFSIZE,
        )
    except tarfile.TarError as exc:
        raise IntegrityError(f"not a readable tar archive: {exc}") from exc


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Yield the members of a streamed tar without tarfile keeping them all in memory."""
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as exc:
            raise IntegrityError(f"the tar archive is damaged: {exc}") from exc
        if member is None:
            return
        # tarfile keeps every member it read; forget them to keep memory bounded.
        cast(Any, tar).members.clear()
        yield member


# -- lone archive --------------------------------------------------------------------------------
def restore_archive(
    archive: Readable,
    target: Path,
    *,
    include: Sequence[str] = (),
    existing: Existing = "error",
    dry_run: bool = False,
    on_entry: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Extract a lone tar stream (``restore --file PATH --target DIR``) safely into ``target``.

    The archive is read once, so with ``existing="error"`` a conflict stops the restore after
    the members before it were written. Return the counts; raise IntegrityError for unsafe
    members, RestoreFailed when writing fails or a path already exists.
    """
    result = RestoreResult()
    selection = IncludeFilter(include)
    extractor = None if dry_run else _Extractor(Path(target), existing, result)
    tar = _open_tar(archive)
    try:
        for member in _members(tar):
            rel = safe_relpath(member.name)
            link_rel: bytes | None = None
            if member.issym():
                check_symlink(rel, os.fsencode(member.linkname))
            elif member.islnk():
                link_rel = safe_relpath(member.linkname, what="hard link target")
            if not selection.selected(b"/" + rel, member.isdir()):
                continue
            result.entries += 1
            if extractor is None:
                result.listing(f"{_member_kind(member)} /{_show(rel)}")
                continue
            _extract_member(tar, member, rel, link_rel, extractor, result)
            if on_entry is not None:
                on_entry("/" + os.fsdecode(rel))
        if extractor is not None:
            extractor.finish()
    except OSError as exc:
        raise _os_failure(exc, Path(target)) from exc
    finally:
        tar.close()
        if extractor is not None:
            extractor.close()
    return result


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isreg():
        return "file"
    return "other"


def _extract_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    rel: bytes,
    link_rel: bytes | None,
    extractor: _Extractor,
    result: RestoreResult,
) -> None:
    meta = _Meta.of_member(member)
    if member.isreg():
        content = tar.extractfile(member)
        assert content is not None
        extractor.write_file(rel, content, member.size, meta)
    elif member.isdir():
        extractor.make_dir(rel, meta)
    elif member.issym():
        extractor.make_symlink(rel, os.fsencode(member.linkname), meta)
    elif member.islnk():
        assert link_rel is not None
        if not extractor.make_hardlink(rel, link_rel):
            result.skipped += 1
            result.warn(rel, f"hard link target {_show(link_rel)!r} is not in the target")
    elif member.isfifo():
        extractor.make_special(rel, "fifo", 0, meta)
    elif member.ischr() or member.isblk():
        kind = "chr" if member.ischr() else "blk"
        extractor.make_special(rel, kind, os.makedev(member.devmajor, member.devminor), meta)
    else:
        result.skipped += 1
        result.warn(rel, f"unsupported tar member type {member.type!r}; skipped")


# -- chain ---------------------------------------------------------------------------------------
def _spooled(spool: IO[bytes]) -> Iterator[ManifestEntry]:
    spool.seek(0)
    return iter(ManifestReader(spool, name="restore spool"))


def restore_chain(
    chain: Sequence[ChainLink],
    final_manifest: Readable,
    target: Path,
    *,
    include: Sequence[str] = (),
    existing: Existing = "error",
    dry_run: bool = False,
    on_entry: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Restore the tree described by ``final_manifest`` from the archives of ``chain``.

    ``chain`` lists the backups oldest first (a full, then the incrementals/differential
    leading to the manifest's backup). Return the counts; raise IntegrityError when the
    manifest or an archive is damaged, unsafe, or lacks content the manifest promises,
    RestoreFailed when a path exists (``existing="error"``, checked before writing anything)
    or writing fails.
    """
    result = RestoreResult()
    known = {link.backup_id for link in chain}
    with tempfile.TemporaryFile() as spool:
        needed = _spool_selection(final_manifest, spool, IncludeFilter(include), known, result)
        if dry_run:
            _list_dry_run(spool, Path(target), result)
            return result
        extractor = _Extractor(Path(target), existing, result)
        try:
            if existing == "error":
                _preflight(spool, extractor)
            for entry in _spooled(spool):
                if entry.type == "dir":
                    extractor.make_dir(_manifest_relpath(entry.path), _Meta.of_entry(entry))
                    _notify(on_entry, entry)
            for link in chain:
                if needed.get(link.backup_id):
                    _restore_contents(link, spool, extractor, on_entry)
            _restore_links(spool, extractor, result, on_entry)
            extractor.finish()
        except OSError as exc:
            raise _os_failure(exc, Path(target)) from exc
        finally:
            extractor.close()
    return result


def _notify(on_entry: Callable[[str], None] | None, entry: ManifestEntry) -> None:
    if on_entry is not None:
        on_entry(os.fsdecode(entry.path))


def _spool_selection(
    manifest: Readable,
    spool: IO[bytes],
    selection: IncludeFilter,
    known: set[str],
    result: RestoreResult,
) -> dict[str, int]:
    """Validate the manifest, copy the selected entries to ``spool``; return files per backup."""
    needed: dict[str, int] = {}
    writer = ManifestWriter(spool, backup_id="restore", strategy="restore")
    for entry in ManifestReader(manifest, name="final manifest"):
        rel = _manifest_relpath(entry.path)
        if entry.type == "symlink":
            check_symlink(rel, entry.link or b"")
        elif entry.type == "hardlink":
            _manifest_relpath(entry.link or b"")
        if not selection.selected(entry.path, entry.type == "dir"):
            continue
        result.entries += 1
        if entry.type == "file":
            if entry.backup is None:
                result.skipped += 1
                result.warn(entry.path, f"was not archived ({entry.warning or 'no content'})")
                continue
            if entry.backup not in known:
                raise IntegrityError(
                    f"the manifest takes {_show(entry.path)!r} from backup {entry.backup!r}, "
                    "which is not in the restore chain",
                    hint="The chain is incomplete (a backup was deleted?). Check with: "
                    "vya-backupdb list; restore an older full backup instead.",
                )
            needed[entry.backup] = needed.get(entry.backup, 0) + 1
        elif entry.type == "hardlink" and not selection.selected_anywhere(entry.link or b""):
            result.skipped += 1
            result.warn(entry.path, "hard link to a path left out by --include; skipped")
            continue
        writer.add(entry)
    writer.close()
    return needed


def _list_dry_run(spool: IO[bytes], target: Path, result: RestoreResult) -> None:
    root = os.fsencode(os.path.realpath(target))
    for entry in _spooled(spool):
        rel = _manifest_relpath(entry.path)
        dest = root.rstrip(b"/") + b"/" + rel
        note = " (exists)" if os.path.lexists(dest) and entry.type != "dir" else ""
        result.listing(f"{entry.type} {_show(entry.path)}{note}")


def _preflight(spool: IO[bytes], extractor: _Extractor) -> None:
    conflicts: list[bytes] = []
    count = 0
    for entry in _spooled(spool):
        dest = extractor.dest(_manifest_relpath(entry.path))
        try:
            st = os.lstat(dest)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if entry.type == "dir" and stat.S_ISDIR(st.st_mode):
            continue
        count += 1
        if len(conflicts) < 5:
            conflicts.append(dest)
    if count:
        shown = ", ".join(repr(_show(p)) for p in conflicts)
        more = f" and {count - len(conflicts)} more" if count > len(conflicts) else ""
        raise RestoreFailed(
            f"{count} path(s) already exist in the restore target: {shown}{more}; "
            "nothing was written",
            hint="Add --overwrite to replace them, --skip-existing to keep them, or restore "
            "into an empty directory with --target DIR.",
        )


def _restore_contents(
    link: ChainLink,
    spool: IO[bytes],
    extractor: _Extractor,
    on_entry: Callable[[str], None] | None,
) -> None:
    """Extract from one archive the files whose content the manifest takes from it."""
    wanted = (e for e in _spooled(spool) if e.type == "file" and e.backup == link.backup_id)
    current = next(wanted, None)
    with link.open_archive() as stream:
        tar = _open_tar(stream)
        try:
            for member in _members(tar):
                if current is None:
                    break
                rel = safe_relpath(member.name)
                key = path_key(b"/" + rel)
                if current.key < key:
                    break  # sorted archive: `current` is not in it
                if current.key > key:
                    continue
                if not member.isreg() or member.size != current.size:
                    raise IntegrityError(
                        f"backup {link.backup_id!r}: member {_show(rel)!r} is not the file of "
                        f"{current.size} bytes the manifest describes",
                        hint="The archive and its manifest disagree; run: vya-backupdb verify",
                    )
                content = tar.extractfile(member)
                assert content is not None
                extractor.write_file(
                    rel, content, member.size, _Meta.of_entry(current), current.sha256
                )
                _notify(on_entry, current)
                current = next(wanted, None)
        finally:
            tar.close()
    if current is not None:
        raise IntegrityError(
            f"the archive of backup {link.backup_id!r} lacks {_show(current.path)!r}, which "
            "the manifest takes from it",
            hint="The archive is damaged or not the one of this manifest; run: vya-backupdb verify",
        )


def _restore_links(
    spool: IO[bytes],
    extractor: _Extractor,
    result: RestoreResult,
    on_entry: Callable[[str], None] | None,
) -> None:
    for entry in _spooled(spool):
        rel = _manifest_relpath(entry.path)
        if entry.type == "symlink":
            assert entry.link is not None
            extractor.make_symlink(rel, entry.link, _Meta.of_entry(entry))
        elif entry.type == "hardlink":
            assert entry.link is not None
            if not extractor.make_hardlink(rel, _manifest_relpath(entry.link)):
                result.skipped += 1
                result.warn(entry.path, "its hard link target was not restored; skipped")
                continue
        elif entry.type == "other":
            extractor.make_special(rel, entry.kind or "fifo", entry.rdev, _Meta.of_entry(entry))
        else:
            continue
        _notify(on_entry, entry)
