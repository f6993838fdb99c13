"""Hostile archives and manifests: restore refuses them and never writes outside its target."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from vya_backupdb.engines.files import ChainLink, restore_archive, restore_chain
from vya_backupdb.errors import IntegrityError

pytestmark = pytest.mark.integration


def _tar(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    """Build a tar by hand: (kind, name, data-or-linkname) with kind file|dir|sym|hard."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = str(data)
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = str(data)
            tar.addfile(info)
    out.seek(0)
    return out


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    """Return (target, sentinel): the target sits two levels below tmp_path, beside a sentinel."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "victim").write_bytes(b"original\n")
    target = tmp_path / "restore" / "inner"
    target.mkdir(parents=True)
    return target, sentinel


def _untouched(sentinel: Path) -> bool:
    return (
        sorted(p.name for p in sentinel.iterdir()) == ["victim"]
        and (sentinel / "victim").read_bytes() == b"original\n"
    )


def test_restore_archive_dotdot_traversal_refused(places: tuple[Path, Path]) -> None:
    target, sentinel = places
    archive = _tar(("file", "ok.txt", b"ok"), ("file", "../../sentinel/victim", b"pwned"))
    with pytest.raises(IntegrityError, match=r"contains '\.\.'"):
        restore_archive(archive, target, existing="overwrite")
    assert _untouched(sentinel)
    assert (target / "ok.txt").read_bytes() == b"ok"  # members before it were fine


def test_restore_archive_absolute_member_refused(places: tuple[Path, Path]) -> None:
    target, sentinel = places
    archive = _tar(("file", f"{sentinel}/pwned", b"pwned"))
    with pytest.raises(IntegrityError, match="absolute path"):
        restore_archive(archive, target)
    assert _untouched(sentinel)
    assert list(target.iterdir()) == []


def test_restore_archive_write_through_absolute_symlink_refused(
    places: tuple[Path, Path],
) -> None:
    target, sentinel = places
    archive = _tar(("sym", "escape", str(sentinel)), ("file", "escape/pwned", b"pwned"))
    with pytest.raises(IntegrityError, match="leads outside the restore target"):
        restore_archive(archive, target)
    assert _untouched(sentinel)


def test_restore_archive_relative_symlink_climbing_out_refused(
    places: tuple[Path, Path],
) -> None:
    target, sentinel = places
    archive = _tar(("sym", "sub/escape", "../../../sentinel"), ("file", "sub/escape/x", b"x"))
    with pytest.raises(IntegrityError, match="points outside the restore target"):
        restore_archive(archive, target)
    assert _untouched(sentinel)
    assert not (target / "sub" / "escape").exists()


def test_restore_archive_hardlink_outside_refused(places: tuple[Path, Path]) -> None:
    target, sentinel = places
    for linkname in ["../../sentinel/victim", f"{sentinel}/victim"]:
        with pytest.raises(IntegrityError, match="hard link target"):
            restore_archive(_tar(("hard", "stolen", linkname)), target)
    assert not (target / "stolen").exists()
    assert _untouched(sentinel)


def test_restore_archive_hardlink_through_escaping_symlink_refused(
    places: tuple[Path, Path],
) -> None:
    target, sentinel = places
    archive = _tar(("sym", "door", str(sentinel)), ("hard", "stolen", "door/victim"))
    with pytest.raises(IntegrityError, match="leading outside"):
        restore_archive(archive, target)
    assert not (target / "stolen").exists()
    assert os.stat(sentinel / "victim").st_nlink == 1
    assert _untouched(sentinel)


def test_restore_archive_existing_symlink_dir_in_target_not_followed_outside(
    places: tuple[Path, Path],
) -> None:
    target, sentinel = places
    (target / "conf").symlink_to(sentinel)  # planted before the restore
    with pytest.raises(IntegrityError, match="leads outside"):
        restore_archive(_tar(("file", "conf/victim", b"pwned")), target, existing="overwrite")
    assert _untouched(sentinel)


def test_restore_archive_overwrite_replaces_symlink_instead_of_following_it(
    places: tuple[Path, Path],
) -> None:
    target, sentinel = places
    (target / "file").symlink_to(sentinel / "victim")
    restore_archive(_tar(("file", "file", b"restored")), target, existing="overwrite")
    assert not (target / "file").is_symlink()
    assert (target / "file").read_bytes() == b"restored"
    assert _untouched(sentinel)


def _manifest(*entries: dict[str, object]) -> io.BytesIO:
    lines = [{"format": "vya-files-manifest", "version": 1, "backup_id": "B", "strategy": "full"}]
    lines += list(entries)
    lines.append({"end": True, "entries": len(entries)})
    return io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def _entry(path: str, etype: str = "file", **extra: object) -> dict[str, object]:
    return {
        "path": path,
        "type": etype,
        "size": 0,
        "mtime_ns": 0,
        "mode": 420,
        "backup": "B",
        **extra,
    }


def _chain(archive: io.BytesIO) -> list[ChainLink]:
    return [ChainLink("B", lambda: contextlib.nullcontext(archive))]


def test_restore_chain_manifest_with_dotdot_refused(places: tuple[Path, Path]) -> None:
    target, sentinel = places
    manifest = _manifest(_entry("/../../sentinel/victim"))
    with pytest.raises(IntegrityError, match=r"contains '\.\.'"):
        restore_chain(_chain(_tar()), manifest, target, existing="overwrite")
    assert _untouched(sentinel)
    assert list(target.iterdir()) == []


def test_restore_chain_manifest_escaping_symlink_refused_before_writing(
    places: tuple[Path, Path],
) -> None:
    target, sentinel = places
    manifest = _manifest(
        _entry("/a", "dir"), _entry("/a/link", "symlink", link="../../../sentinel")
    )
    with pytest.raises(IntegrityError, match="points outside"):
        restore_chain(_chain(_tar()), manifest, target)
    assert list(target.iterdir()) == []  # validated while spooling, before any write
    assert _untouched(sentinel)


def test_restore_chain_archive_member_traversal_refused(places: tuple[Path, Path]) -> None:
    target, sentinel = places
    manifest = _manifest(_entry("/z", size=2))
    archive = _tar(("file", "../../sentinel/victim", b"pwned"), ("file", "z", b"ok"))
    with pytest.raises(IntegrityError, match=r"contains '\.\.'"):
        restore_chain(_chain(archive), manifest, target)
    assert _untouched(sentinel)


def test_restore_chain_content_not_matching_manifest_checksum_refused(
    places: tuple[Path, Path],
) -> None:
    target, _sentinel = places
    manifest = _manifest(_entry("/z", size=2, sha256="0" * 64))
    with pytest.raises(IntegrityError, match="does not match its manifest checksum"):
        restore_chain(_chain(_tar(("file", "z", b"ok"))), manifest, target)
    assert not (target / "z").exists()
    assert not any(p.name.startswith(".vya-restore-") for p in target.iterdir())
