"""Which paths a files instance covers: glob patterns, their fixed roots, and a sorted walk.

Patterns use wcmatch with ``**`` (any depth), ``{a,b}`` braces, ``?``, ``*``, character classes
and dot files matched. Rules (documented in docs/configuration.md):

- ``paths`` patterns must be absolute. A pattern without any magic that names a directory
  means that directory and everything below it (``/etc/nginx`` == ``/etc/nginx`` + ``/**``).
- A pattern starting with ``!`` excludes, like an ``exclude`` entry.
- An exclude pattern that does not start with ``/`` or ``**`` matches at any depth
  (``*.log`` == ``**/*.log``, like ``tar --exclude``). An excluded directory is pruned with
  everything below it.
- Directories that contain a matched entry are archived too (from the pattern's fixed root
  down), so their modes and mtimes come back on restore.
- Symbolic links met during the walk are never followed; the fixed root itself is resolved
  (``/var/www/**`` walks through ``/var/www`` even when it is a link to ``/srv/www``).

The walk never lists the whole tree: each directory is read and sorted on its own, so memory
is bounded by the directories on the current path. Output is sorted by
:func:`~vya_backupdb.engines.files_manifest.path_key`; several roots are heap-merged and
overlaps removed, so no path is produced twice.
"""

from __future__ import annotations

import heapq
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import bracex
from wcmatch import glob

from vya_backupdb.engines.files_manifest import path_key
from vya_backupdb.errors import ConfigError

#: Flags shared by every matcher: ``**``, braces, dot files; no symlink following, no splitting.
GLOB_FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB
_BRACE_LIMIT = 1000

WarningSink = Callable[[bytes, str], None]


@dataclass(frozen=True, slots=True)
class WalkEntry:
    """One path found by the walk, with its ``lstat`` result."""

    path: bytes
    st: os.stat_result

    @property
    def key(self) -> bytes:
        return path_key(self.path)


@dataclass(frozen=True)
class PatternRoot:
    """A directory to walk and how deep a match below it can be (None: any depth)."""

    root: bytes
    max_depth: int | None


def _split_root(pattern: str) -> tuple[str, str]:
    """Return (fixed root, rest) of an absolute pattern with no braces left."""
    parts = pattern.split("/")
    fixed: list[str] = []
    for index, part in enumerate(parts[1:], start=1):
        if glob.is_magic(part, flags=GLOB_FLAGS):
            return "/" + "/".join(fixed), "/".join(parts[index:])
        if part:
            fixed.append(part)
    return "/" + "/".join(fixed), ""


def _normalize_exclude(pattern: str) -> str:
    if pattern.startswith(("/", "**")):
        return pattern
    return "**/" + pattern


class PathSelection:
    """The compiled include/exclude patterns of a files instance and the roots to walk."""

    def __init__(
        self, includes: Sequence[str], excludes: Sequence[str], roots: Sequence[PatternRoot]
    ) -> None:
        self.includes = tuple(includes)
        self.excludes = tuple(excludes)
        self.roots = tuple(roots)
        self._include = glob.compile(list(self.includes), flags=GLOB_FLAGS)
        self._exclude = glob.compile(list(self.excludes), flags=GLOB_FLAGS) if excludes else None

    @classmethod
    def from_patterns(cls, paths: Sequence[str], exclude: Sequence[str] = ()) -> PathSelection:
        """Return the selection of ``paths`` minus ``exclude``; raise ConfigError when invalid."""
        includes: list[str] = []
        excludes = [_normalize_exclude(p) for p in exclude if p]
        roots: dict[str, int | None] = {}
        for raw in paths:
            if raw.startswith("!"):
                excludes.append(_normalize_exclude(raw[1:]))
                continue
            if not raw.startswith("/"):
                raise ConfigError(
                    f"files pattern {raw!r} is not an absolute path",
                    hint="Write patterns from the root, e.g. /srv/app/**/*.conf; "
                    "then run: vya-backupdb config validate",
                )
            try:
                expanded = bracex.expand(raw, limit=_BRACE_LIMIT)
            except Exception as exc:  # bracex raises its own error type for the limit
                raise ConfigError(
                    f"files pattern {raw!r} expands to too many alternatives",
                    hint="Split the braces into several patterns.",
                ) from exc
            for pattern in expanded:
                root, rest = _split_root(pattern)
                if not rest:
                    # A plain path: itself and, if it is a directory, all below it.
                    includes.extend([root, root.rstrip("/") + "/**"])
                    depth: int | None = None
                else:
                    includes.append(pattern)
                    depth = None if "**" in rest else rest.count("/") + 1
                if root in roots:
                    old = roots[root]
                    roots[root] = None if old is None or depth is None else max(old, depth)
                else:
                    roots[root] = depth
        return cls(tuple(includes), tuple(excludes), _prune_roots(roots))

    def included(self, path: str) -> bool:
        """Return True when ``path`` matches an include pattern (exclusions not considered)."""
        return bool(self._include.match(path))

    def excluded(self, path: str) -> bool:
        """Return True when ``path`` matches an exclude pattern."""
        return self._exclude is not None and bool(self._exclude.match(path))

    def walk(self, on_warning: WarningSink | None = None) -> Iterator[WalkEntry]:
        """Yield every selected path (and its ancestors up to its root) sorted by path_key."""
        sink: WarningSink = on_warning or (lambda _path, _reason: None)
        walkers = [_walk_root(os.fsencode(r.root), r.max_depth, self, sink) for r in self.roots]
        last: bytes | None = None
        for entry in heapq.merge(*walkers, key=lambda e: e.key):
            if entry.path != last:
                last = entry.path
                yield entry


def _prune_roots(roots: dict[str, int | None]) -> tuple[PatternRoot, ...]:
    """Drop roots already covered by an unbounded walk of an ancestor root."""
    kept: list[PatternRoot] = []
    for root in sorted(roots, key=lambda r: path_key(os.fsencode(r))):
        covered = any(
            k.max_depth is None
            and (
                root == os.fsdecode(k.root)
                or root.startswith(os.fsdecode(k.root).rstrip("/") + "/")
            )
            for k in kept
        )
        if not covered:
            kept.append(PatternRoot(os.fsencode(root), roots[root]))
    return tuple(kept)


class _Frame:
    """A directory on the current walk path, emitted lazily once something below matches."""

    __slots__ = ("children", "depth", "emitted", "entry", "index")

    def __init__(self, entry: WalkEntry, depth: int, children: list[os.DirEntry[bytes]]):
        self.entry = entry
        self.depth = depth
        self.children = children
        self.index = 0
        self.emitted = False


def _list_dir(path: bytes, sink: WarningSink) -> list[os.DirEntry[bytes]]:
    try:
        with os.scandir(path) as it:
            children = list(it)
    except FileNotFoundError:
        sink(path, "vanished during the backup")
        return []
    except OSError as exc:
        sink(path, f"cannot list directory ({exc.strerror or exc})")
        return []
    children.sort(key=lambda d: d.name)
    return children


def _walk_root(
    root: bytes, max_depth: int | None, selection: PathSelection, sink: WarningSink
) -> Iterator[WalkEntry]:
    try:
        st = os.lstat(root)
        if stat.S_ISLNK(st.st_mode):
            followed = os.stat(root)
            if stat.S_ISDIR(followed.st_mode):
                st = followed
    except FileNotFoundError:
        return
    except OSError as exc:
        sink(root, f"cannot read ({exc.strerror or exc})")
        return
    root_str = os.fsdecode(root)
    if selection.excluded(root_str):
        return
    matched_root = root != b"/" and selection.included(root_str)
    if not stat.S_ISDIR(st.st_mode):
        if matched_root:
            yield WalkEntry(root, st)
        return
    top = _Frame(WalkEntry(root, st), 0, _list_dir(root, sink))
    if matched_root:
        top.emitted = True
        yield top.entry
    stack = [top]
    # The root "/" is never an entry of its own: it has no member name.
    if root == b"/":
        top.emitted = True
    prefix_sep = b"" if root == b"/" else b"/"
    while stack:
        frame = stack[-1]
        if frame.index >= len(frame.children):
            stack.pop()
            continue
        child = frame.children[frame.index]
        frame.index += 1
        path = frame.entry.path + (prefix_sep if frame is top else b"/") + child.name
        path_str = os.fsdecode(path)
        if selection.excluded(path_str):
            continue
        try:
            child_st = child.stat(follow_symlinks=False)
        except FileNotFoundError:
            sink(path, "vanished during the backup")
            continue
        except OSError as exc:
            sink(path, f"cannot read ({exc.strerror or exc})")
            continue
        entry = WalkEntry(path, child_st)
        matched = selection.included(path_str)
        if matched:
            yield from _flush(stack)
            yield entry
        depth = frame.depth + 1
        if stat.S_ISDIR(child_st.st_mode) and (max_depth is None or depth < max_depth):
            sub = _Frame(entry, depth, _list_dir(path, sink))
            sub.emitted = matched
            stack.append(sub)


def _flush(stack: Iterable[_Frame]) -> Iterator[WalkEntry]:
    for frame in stack:
        if not frame.emitted:
            frame.emitted = True
            yield frame.entry
