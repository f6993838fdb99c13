"""The files engine end to end on real trees: full -> incremental -> differential -> incremental,
each point restored into a fresh directory and compared exactly with the source at that point.

No database is needed; the tar and manifest streams are kept in memory (the job would wrap them
in compression and storage).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vya_backupdb.config.models import InstanceConfig
from vya_backupdb.engines.files import (
    ArchiveResult,
    ChainLink,
    FilesEngine,
    read_manifest,
    restore_archive,
    restore_chain,
)
from vya_backupdb.errors import BackupFailed, RestoreFailed

pytestmark = pytest.mark.integration

NS = 1_000_000_000
IS_ROOT = os.geteuid() == 0


# -- tree helpers ---------------------------------------------------------------------------------
def _write(
    path: bytes | Path, data: bytes, *, mode: int = 0o644, mtime_ns: int | None = None
) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def _snapshot(root: Path) -> dict[str, object]:
    """Return everything restore must reproduce under ``root`` (root included)."""
    base = os.fsencode(root)
    entries: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    stack = [base]
    while stack:
        path = stack.pop()
        st = os.lstat(path)
        rel = path[len(base) :] or b"."
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            detail: object = None
            stack.extend(os.path.join(path, name) for name in os.listdir(path))
        elif stat.S_ISLNK(mode):
            detail = os.readlink(path)
        elif stat.S_ISREG(mode):
            detail = hashlib.sha256(Path(os.fsdecode(path)).read_bytes()).hexdigest()
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        else:
            detail = stat.S_IFMT(mode)
        entries[rel] = (
            stat.S_IFMT(mode),
            stat.S_IMODE(mode),
            st.st_mtime_ns,
            st.st_uid,
            st.st_gid,
            detail,
        )
    groups = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return {"entries": entries, "hardlinks": groups}


def _diff(expected: dict[str, object], actual: dict[str, object]) -> list[str]:
    exp = expected["entries"]
    act = actual["entries"]
    assert isinstance(exp, dict)
    assert isinstance(act, dict)
    problems = [f"missing {k!r}" for k in exp.keys() - act.keys()]
    problems += [f"extra {k!r}" for k in act.keys() - exp.keys()]
    problems += [
        f"differs {k!r}: {exp[k]} != {act[k]}" for k in exp.keys() & act.keys() if exp[k] != act[k]
    ]
    if expected["hardlinks"] != actual["hardlinks"]:
        problems.append(f"hardlinks {expected['hardlinks']} != {actual['hardlinks']}")
    return sorted(problems)


def _build_tree(src: Path) -> None:
    t0 = 1_700_000_000 * NS
    src.mkdir()
    (src / "empty dir").mkdir()
    (src / "docs").mkdir()
    _write(src / "docs" / "with space.txt", b"space\n", mtime_ns=t0 + 123_456_789)
    _write(src / "docs" / "ünïcödé €.txt", "unicode ✓\n".encode(), mtime_ns=t0 + 1)
    _write(src / "docs" / "new\nline.txt", b"newline\n", mtime_ns=t0 + 2)
    _write(
        os.fsencode(src / "docs") + b"/bad-\xff\xfe-utf8", b"invalid utf-8 name\n", mtime_ns=t0 + 3
    )
    _write(src / "docs" / ("long-" + "x" * 150 + ".txt"), b"long name\n", mtime_ns=t0 + 4)
    _write(src / "secret.key", b"private\n", mode=0o600, mtime_ns=t0 + 5)
    _write(src / "run.sh", b"#!/bin/sh\necho hi\n", mode=0o755, mtime_ns=t0 + 6)
    _write(src / "big.bin", os.urandom(3 * 1024 * 1024 + 17), mtime_ns=t0 + 7)
    shared = src / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)  # setgid directory
    _write(shared / "data.txt", b"shared\n", mtime_ns=t0 + 8)
    os.link(shared / "data.txt", src / "docs" / "hardlink-to-data.txt")
    (src / "links").mkdir()
    os.symlink("../docs/with space.txt", src / "links" / "relative")
    os.symlink("/etc/hostname", src / "links" / "absolute")
    os.symlink("does-not-exist", src / "links" / "dangling")
    os.symlink("../shared", src / "links" / "dir-link")
    os.mkfifo(src / "links" / "fifo")
    deep = src / "a" / "b" / "c"
    deep.mkdir(parents=True)
    _write(deep / "deep.txt", b"deep\n", mtime_ns=t0 + 9)
    (src / ".hidden").mkdir()
    _write(src / ".hidden" / ".dotfile", b"dot\n", mtime_ns=t0 + 10)
    if IS_ROOT:
        _write(src / "owned.txt", b"owned by someone else\n", mtime_ns=t0 + 11)
        os.chown(src / "owned.txt", 1234, 5678)
        os.lchown(src / "links" / "relative", 4321, 8765)
    # Directory mtimes with nanoseconds, set last (creating children changes them).
    for index, directory in enumerate([deep, src / "a" / "b", src / "empty dir", src / "links"]):
        os.utime(directory, ns=(t0 + 100 + index, t0 + 987_654_321 + index), follow_symlinks=False)


@dataclass
class Stored:
    backup_id: str
    archive: bytes
    manifest: bytes
    result: ArchiveResult


class Store:
    """Keeps backups in memory like the job keeps them in storage."""

    def __init__(self, engine: FilesEngine) -> None:
        self.engine = engine
        self.backups: dict[str, Stored] = {}

    def backup(self, backup_id: str, strategy: str, base: str | None = None) -> Stored:
        out, manifest = io.BytesIO(), io.BytesIO()
        base_stream = io.BytesIO(self.backups[base].manifest) if base else None
        result = self.engine.archive(
            out,
            manifest,
            backup_id=backup_id,
            strategy=strategy,
            base_manifest=base_stream,  # type: ignore[arg-type]
        )
        stored = Stored(backup_id, out.getvalue(), manifest.getvalue(), result)
        self.backups[backup_id] = stored
        return stored

    def link(self, backup_id: str) -> ChainLink:
        data = self.backups[backup_id].archive

        def opener() -> contextlib.AbstractContextManager[io.BytesIO]:
            return contextlib.nullcontext(io.BytesIO(data))

        return ChainLink(backup_id, opener)

    def restore(self, chain: list[str], target: Path, **options: object) -> object:
        final = io.BytesIO(self.backups[chain[-1]].manifest)
        return restore_chain([self.link(b) for b in chain], final, target, **options)  # type: ignore[arg-type]


def _restored(target: Path, src: Path) -> Path:
    return target / str(src).lstrip("/")


def _engine(src: Path, **extra: object) -> FilesEngine:
    return FilesEngine(InstanceConfig(id="files1", type="files", paths=[f"{src}/**"], **extra))  # type: ignore[arg-type]


# -- the main scenario ----------------------------------------------------------------------------
def test_files_engine_full_incremental_differential_chain_restores_each_point_exactly(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    _build_tree(src)
    store = Store(_engine(src))
    snapshots: dict[str, dict[str, object]] = {}
    t1 = 1_710_000_000 * NS

    full = store.backup("F1", "full")
    snapshots["F1"] = _snapshot(src)
    assert full.result.warning_count == 0, full.result.warnings
    assert full.result.hardlinks == 1
    assert full.result.files >= 10
    assert full.result.others == 1  # the fifo
    assert full.result.entries_total == len(snapshots["F1"]["entries"])  # type: ignore[arg-type]

    # Changes: content, a new file, deletions (file and whole dir), chmod only, symlink retarget.
    _write(src / "docs" / "with space.txt", b"space, modified\n", mtime_ns=t1 + 1)
    _write(src / "docs" / "added.txt", b"added in I1\n", mtime_ns=t1 + 2)
    os.unlink(src / "secret.key")
    shutil.rmtree(src / "a" / "b")
    os.chmod(src / "run.sh", 0o700)
    os.unlink(src / "links" / "dangling")
    os.symlink("now-elsewhere", src / "links" / "dangling")
    inc1 = store.backup("I1", "incremental", base="F1")
    snapshots["I1"] = _snapshot(src)
    assert inc1.result.strategy == "incremental"
    assert inc1.result.base_backup_id == "F1"
    assert inc1.result.deleted == 4  # secret.key, a/b, a/b/c, a/b/c/deep.txt
    assert inc1.result.files == 3  # with space.txt, added.txt, run.sh (mode change)
    assert inc1.result.unchanged > 10
    assert b"big.bin" not in inc1.archive  # unchanged content is not archived again

    # More changes, then a differential against the full.
    _write(src / "big.bin", os.urandom(1024), mtime_ns=t1 + 3)
    _write(src / "docs" / "added.txt", b"added, then changed\n", mtime_ns=t1 + 4)
    os.link(src / "run.sh", src / "run-again.sh")
    (src / "new empty").mkdir()
    diff1 = store.backup("D1", "differential", base="F1")
    snapshots["D1"] = _snapshot(src)
    assert diff1.result.base_backup_id == "F1"
    assert diff1.result.files >= 4  # carries everything changed since F1

    # And an incremental on top of the differential: the chain is F1 -> D1 -> I2.
    os.unlink(src / "docs" / "ünïcödé €.txt")
    _write(os.fsencode(src / "docs") + b"/bad-\xff\xfe-utf8", b"changed again\n", mtime_ns=t1 + 5)
    os.unlink(src / "shared" / "data.txt")  # the hard link in docs/ becomes a plain file
    inc2 = store.backup("I2", "incremental", base="D1")
    snapshots["I2"] = _snapshot(src)
    assert inc2.result.deleted == 2

    chains = {"F1": ["F1"], "I1": ["F1", "I1"], "D1": ["F1", "D1"], "I2": ["F1", "D1", "I2"]}
    for point, chain in chains.items():
        target = tmp_path / f"restore-{point}"
        result = store.restore(chain, target)
        assert _diff(snapshots[point], _snapshot(_restored(target, src))) == [], point
        assert result.entries == len(snapshots[point]["entries"])  # type: ignore[attr-defined, arg-type]


def test_files_engine_manifest_tracks_backup_of_unchanged_content(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "stable.txt", b"stable\n", mtime_ns=5 * NS)
    _write(src / "moving.txt", b"v1\n", mtime_ns=5 * NS)
    store = Store(_engine(src))
    store.backup("F1", "full")
    _write(src / "moving.txt", b"v2\n", mtime_ns=6 * NS)
    store.backup("I1", "incremental", base="F1")
    entries = {e.path: e for e in read_manifest(io.BytesIO(store.backups["I1"].manifest))}
    stable = entries[os.fsencode(src / "stable.txt")]
    moving = entries[os.fsencode(src / "moving.txt")]
    assert stable.backup == "F1"
    assert moving.backup == "I1"
    assert moving.sha256 == hashlib.sha256(b"v2\n").hexdigest()


def test_files_engine_compare_content_detects_same_size_and_mtime_change(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path = src / "sneaky.txt"
    _write(path, b"AAAA", mtime_ns=7 * NS)
    plain = Store(_engine(src))
    hashed = Store(_engine(src, compare_content=True))
    plain.backup("F1", "full")
    hashed.backup("F1", "full")
    # Same size, same mtime, same inode: only a content hash can see the change.
    with open(path, "r+b") as handle:
        handle.write(b"BBBB")
    os.utime(path, ns=(7 * NS, 7 * NS))
    assert plain.backup("I1", "incremental", base="F1").result.files == 0
    assert hashed.backup("I1", "incremental", base="F1").result.files == 1


# -- warnings -------------------------------------------------------------------------------------
def test_files_engine_file_growing_during_backup_warns_not_fatal(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    growing = src / "growing.log"
    _write(growing, os.urandom(32 * 1024 * 1024))
    _write(src / "calm.txt", b"calm\n")
    stop = threading.Event()

    def append() -> None:
        with open(growing, "ab", buffering=0) as handle:
            while not stop.is_set():
                handle.write(b"x" * 512)

    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    try:
        store = Store(_engine(src))
        stored = store.backup("F1", "full")
    finally:
        stop.set()
        writer.join()
    assert stored.result.warning_count == 1
    assert "growing.log: changed while it was read" in stored.result.warnings[0]
    entries = {e.path: e for e in read_manifest(io.BytesIO(stored.manifest))}
    assert entries[os.fsencode(growing)].warning == "changed during read"
    # The archive stays a valid tar and restores; the next incremental archives the file again.
    target = tmp_path / "restore"
    store.restore(["F1"], target)
    assert (_restored(target, src) / "calm.txt").read_bytes() == b"calm\n"
    assert store.backup("I1", "incremental", base="F1").result.files == 1


@contextlib.contextmanager
def _as_nobody() -> Iterator[None]:
    """Run the block with effective uid nobody (root's DAC override gone), if we are root."""
    if not IS_ROOT:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_files_engine_unreadable_file_and_directory_warn_not_fatal() -> None:
    # Not under pytest's tmp_path: that is 0700 root, and the backup must run as another user.
    base = Path(tempfile.mkdtemp(prefix="vya-files-perm-"))
    try:
        os.chmod(base, 0o755)
        src = base / "src"
        src.mkdir(mode=0o755)
        os.chmod(src, 0o755)
        _write(src / "ok.txt", b"fine\n")
        _write(src / "secret.txt", b"no\n", mode=0o000)
        locked = src / "locked"
        locked.mkdir()
        _write(locked / "inside.txt", b"hidden\n")
        os.chmod(locked, 0o000)
        store = Store(_engine(src))
        with _as_nobody():
            stored = store.backup("F1", "full")
        joined = "\n".join(stored.result.warnings)
        assert stored.result.warning_count == 2, joined
        assert "secret.txt: unreadable" in joined
        assert "locked: cannot list directory" in joined
        entries = {e.path: e for e in read_manifest(io.BytesIO(stored.manifest))}
        secret = entries[os.fsencode(src / "secret.txt")]
        assert secret.warning == "unreadable"
        assert secret.backup is None
        assert entries[os.fsencode(src / "ok.txt")].backup == "F1"
        if IS_ROOT:
            # Readable again (root): the next incremental picks the file up.
            again = store.backup("I1", "incremental", base="F1")
            assert again.result.files >= 1
            again_entries = {e.path: e for e in read_manifest(io.BytesIO(again.manifest))}
            assert again_entries[os.fsencode(src / "secret.txt")].backup == "I1"
    finally:
        os.chmod(base / "src" / "locked", 0o755)
        shutil.rmtree(base)


# -- restore options ------------------------------------------------------------------------------
@pytest.fixture
def small_backup(tmp_path: Path) -> tuple[Path, Store]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf").mkdir()
    _write(src / "conf" / "a.conf", b"a\n", mtime_ns=3 * NS)
    _write(src / "conf" / "b.yaml", b"b\n", mtime_ns=3 * NS)
    (src / "data").mkdir()
    _write(src / "data" / "d.bin", b"d\n", mtime_ns=3 * NS)
    store = Store(_engine(src))
    store.backup("F1", "full")
    return src, store


def test_restore_chain_include_restores_only_matching_subtree(
    tmp_path: Path, small_backup: tuple[Path, Store]
) -> None:
    src, store = small_backup
    target = tmp_path / "t"
    store.restore(["F1"], target, include=[f"{src}/conf"])
    root = _restored(target, src)
    assert sorted(p.name for p in (root / "conf").iterdir()) == ["a.conf", "b.yaml"]
    assert not (root / "data").exists()
    target2 = tmp_path / "t2"
    store.restore(["F1"], target2, include=["*.yaml"])
    assert [p.name for p in (_restored(target2, src) / "conf").iterdir()] == ["b.yaml"]


def test_restore_chain_existing_error_writes_nothing(
    tmp_path: Path, small_backup: tuple[Path, Store]
) -> None:
    src, store = small_backup
    target = tmp_path / "t"
    existing = _restored(target, src) / "data" / "d.bin"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"local edit\n")
    with pytest.raises(RestoreFailed, match="already exist") as info:
        store.restore(["F1"], target)
    assert "--overwrite" in info.value.hint
    assert not (_restored(target, src) / "conf").exists()
    assert existing.read_bytes() == b"local edit\n"


def test_restore_chain_skip_and_overwrite_existing(
    tmp_path: Path, small_backup: tuple[Path, Store]
) -> None:
    src, store = small_backup
    target = tmp_path / "t"
    existing = _restored(target, src) / "data" / "d.bin"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"local edit\n")
    skipped = store.restore(["F1"], target, existing="skip")
    assert skipped.skipped == 1  # type: ignore[attr-defined]
    assert existing.read_bytes() == b"local edit\n"
    assert (_restored(target, src) / "conf" / "a.conf").read_bytes() == b"a\n"
    store.restore(["F1"], target, existing="overwrite")
    assert existing.read_bytes() == b"d\n"


def test_restore_chain_dry_run_lists_and_writes_nothing(
    tmp_path: Path, small_backup: tuple[Path, Store]
) -> None:
    src, store = small_backup
    target = tmp_path / "t"
    result = store.restore(["F1"], target, dry_run=True)
    assert not target.exists()
    listing = result.dry_run_listing  # type: ignore[attr-defined]
    assert f"file {src}/conf/a.conf" in listing
    assert f"dir {src}/data" in listing


def test_restore_archive_lone_tar_matches_chain_restore(
    tmp_path: Path, small_backup: tuple[Path, Store]
) -> None:
    src, store = small_backup
    target = tmp_path / "t"
    result = restore_archive(io.BytesIO(store.backups["F1"].archive), target)
    assert result.written == result.entries
    assert _diff(_snapshot(src), _snapshot(_restored(target, src))) == []


def test_files_archive_gnu_tar_extracts_identical_tree(tmp_path: Path) -> None:
    # Standard tools alone must restore a full backup.
    src = tmp_path / "src"
    _build_tree(src)
    stored = Store(_engine(src)).backup("F1", "full")
    archive = tmp_path / "full.tar"
    archive.write_bytes(stored.archive)
    target = tmp_path / "gnu"
    target.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(archive), "-C", str(target)], check=True)
    assert _diff(_snapshot(src), _snapshot(_restored(target, src))) == []


# -- bounded memory -------------------------------------------------------------------------------
@pytest.mark.slow
def test_files_engine_50k_files_archive_memory_stays_bounded(tmp_path: Path) -> None:
    import tracemalloc

    src = tmp_path / "many"
    src.mkdir()
    for d in range(50):
        sub = src / f"d{d:03d}"
        sub.mkdir()
        for f in range(1000):
            fd = os.open(sub / f"f{f:04d}", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x")
            os.close(fd)

    class Sink:
        size = 0

        def write(self, data: bytes) -> int:
            self.size += len(data)
            return len(data)

    engine = _engine(src)
    with tempfile.TemporaryFile() as manifest:
        tracemalloc.start()
        try:
            result = engine.archive(Sink(), manifest, backup_id="F1", strategy="full")
            _current, peak_full = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            manifest.seek(0)
            inc = engine.archive(
                Sink(), Sink(), backup_id="I1", strategy="incremental", base_manifest=manifest
            )
            _current, peak_inc = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.files == 50_000
    assert inc.unchanged == result.entries_total
    # A list of 50k paths alone would be several MB; per-directory listings are ~0.3 MB.
    assert peak_full < 8 * 1024 * 1024, peak_full
    assert peak_inc < 8 * 1024 * 1024, peak_inc
    print(f"peak traced memory: full {peak_full / 1e6:.1f} MB, incremental {peak_inc / 1e6:.1f} MB")


def test_files_engine_estimate_counts_entries_and_bytes_once_per_inode(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "a", b"x" * 1000)
    _write(src / "b", b"y" * 24)
    os.link(src / "a", src / "a-again")
    assert _engine(src).estimate() == (4, 1024)  # src, a, a-again, b


def test_files_engine_patterns_matching_nothing_raise_backup_failed(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "missing")
    with pytest.raises(BackupFailed, match="matched nothing"):
        engine.archive(io.BytesIO(), io.BytesIO(), backup_id="F1", strategy="full")
