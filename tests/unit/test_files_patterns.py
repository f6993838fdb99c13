"""The files pattern matcher and walker: globstar, braces, classes, excludes, dot files, roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vya_backupdb.engines.files_manifest import path_key
from vya_backupdb.engines.files_walk import PathSelection, PatternRoot
from vya_backupdb.errors import ConfigError

pytestmark = pytest.mark.unit


def _walk(selection: PathSelection, base: Path) -> list[str]:
    prefix = os.fsencode(base)
    return [os.fsdecode(e.path[len(prefix) :]) or "." for e in selection.walk()]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in [
        "app/config/a.yaml",
        "app/config/b.json",
        "app/config/c.txt",
        "app/config/sub/d.yaml",
        "app/.env",
        "app/logs/x.log",
        "app/logs/keep.txt",
        "app/node_modules/m/index.js",
        "app-other/z.yaml",
        "uploads/2024/p1.jpg",
        "uploads/2024/p2.PNG",
        "uploads/2024/doc.pdf",
        "uploads/2024/.hidden/h.jpg",
        "uploads/file1.jpg",
        "uploads/file2.jpg",
        "uploads/filea.jpg",
    ]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    (tmp_path / "uploads" / "empty").mkdir()
    return tmp_path


def test_roots_literal_prefix_derived_per_brace_alternative() -> None:
    selection = PathSelection.from_patterns(["/opt/{app,web}/config/*.{yaml,json}"])
    assert selection.roots == (
        PatternRoot(b"/opt/app/config", 1),
        PatternRoot(b"/opt/web/config", 1),
    )


def test_roots_globstar_unbounded_depth_and_nested_root_pruned() -> None:
    selection = PathSelection.from_patterns(["/srv/**/*.jpg", "/srv/www/*.png", "/etc/hosts"])
    assert selection.roots == (
        PatternRoot(b"/etc/hosts", None),
        PatternRoot(b"/srv", None),
    )


def test_roots_magic_in_middle_bounds_depth() -> None:
    selection = PathSelection.from_patterns(["/data/*/cfg/?.ini"])
    assert selection.roots == (PatternRoot(b"/data", 3),)


def test_patterns_relative_path_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="not an absolute path"):
        PathSelection.from_patterns(["srv/app/*"])


def test_walk_globstar_matches_any_depth_with_dotfiles(tree: Path) -> None:
    selection = PathSelection.from_patterns([f"{tree}/uploads/**/*.jpg"])
    assert _walk(selection, tree) == [
        "/uploads",
        "/uploads/2024",
        "/uploads/2024/.hidden",
        "/uploads/2024/.hidden/h.jpg",
        "/uploads/2024/p1.jpg",
        "/uploads/file1.jpg",
        "/uploads/file2.jpg",
        "/uploads/filea.jpg",
    ]


def test_walk_braces_select_extensions(tree: Path) -> None:
    selection = PathSelection.from_patterns([f"{tree}/app/config/*.{{yaml,json}}"])
    assert _walk(selection, tree) == [
        "/app/config",
        "/app/config/a.yaml",
        "/app/config/b.json",
    ]


def test_walk_character_class_and_question_mark(tree: Path) -> None:
    selection = PathSelection.from_patterns([f"{tree}/uploads/file[0-9].jpg"])
    assert _walk(selection, tree) == ["/uploads", "/uploads/file1.jpg", "/uploads/file2.jpg"]
    selection = PathSelection.from_patterns([f"{tree}/uploads/file?.jpg"])
    assert _walk(selection, tree)[-1] == "/uploads/filea.jpg"


def test_walk_exclude_basename_pattern_and_pruned_directory(tree: Path) -> None:
    selection = PathSelection.from_patterns(
        [f"{tree}/app/**"], exclude=["*.log", "node_modules", f"{tree}/app/config/sub"]
    )
    walked = _walk(selection, tree)
    assert "/app/logs/x.log" not in walked
    assert "/app/logs/keep.txt" in walked
    assert not any("node_modules" in p for p in walked)
    assert not any(p.startswith("/app/config/sub") for p in walked)
    assert "/app/.env" in walked


def test_walk_negated_pattern_in_paths_excludes(tree: Path) -> None:
    selection = PathSelection.from_patterns([f"{tree}/uploads/**/*", "!**/*.pdf"])
    walked = _walk(selection, tree)
    assert "/uploads/2024/doc.pdf" not in walked
    assert "/uploads/2024/p1.jpg" in walked


def test_walk_literal_directory_means_whole_subtree(tree: Path) -> None:
    selection = PathSelection.from_patterns([f"{tree}/uploads"])
    walked = _walk(selection, tree)
    assert walked[0] == "/uploads"
    assert "/uploads/empty" in walked
    assert "/uploads/2024/.hidden/h.jpg" in walked


def test_walk_prefix_sibling_not_matched_by_literal_root(tree: Path) -> None:
    selection = PathSelection.from_patterns([f"{tree}/app"])
    assert not any(p.startswith("/app-other") for p in _walk(selection, tree))


def test_walk_overlapping_patterns_yield_each_path_once_sorted(tree: Path) -> None:
    selection = PathSelection.from_patterns(
        [f"{tree}/app/**/*.yaml", f"{tree}/app/config/*", f"{tree}/app*/*.yaml"]
    )
    paths = [e.path for e in selection.walk()]
    assert len(paths) == len(set(paths))
    assert paths == sorted(paths, key=path_key)
    rel = _walk(selection, tree)
    assert "/app-other/z.yaml" in rel
    assert "/app/config/sub/d.yaml" in rel
    assert rel.count("/app/config/a.yaml") == 1


def test_walk_symlinked_directory_not_followed(tree: Path) -> None:
    (tree / "app" / "link").symlink_to(tree / "uploads")
    selection = PathSelection.from_patterns([f"{tree}/app/**"])
    walked = _walk(selection, tree)
    assert "/app/link" in walked
    assert not any(p.startswith("/app/link/") for p in walked)


def test_walk_empty_directory_matched_is_listed(tree: Path) -> None:
    selection = PathSelection.from_patterns([f"{tree}/uploads/*"])
    assert "/uploads/empty" in _walk(selection, tree)


def test_walk_missing_root_yields_nothing(tmp_path: Path) -> None:
    selection = PathSelection.from_patterns([f"{tmp_path}/nope/**"])
    assert list(selection.walk()) == []


def test_path_key_orders_components_before_siblings() -> None:
    paths = [b"/a-c", b"/a/b", b"/a", b"/a.d/x", b"/a/b/c"]
    assert sorted(paths, key=path_key) == [b"/a", b"/a/b", b"/a/b/c", b"/a-c", b"/a.d/x"]
