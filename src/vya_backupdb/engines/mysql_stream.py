"""The structure of a mariadb-dump script, found while it streams by (backup side).

A mariadb-dump/mysqldump script is a header (session settings), then one *section* per table
or view stand-in (DROP/CREATE TABLE, the table's data, its triggers), then a *tail* (events,
routines, the final views, the settings restored). :class:`SqlDumpScanner` finds, in one pass
over the stream and without copying it:

- where each section and the tail start, so the stored object is cut into independent
  compressed frames there (pipeline/frames.py): a restore with ``--jobs N`` then feeds each
  of N clients the header plus its own tables' frames, and the tail once they are all done
  (engines/mysql.py ``_restore_sections``);
- the exact row count of every table *in the dump* — the rows of the snapshot the dump read,
  counted without a ``COUNT(*)`` on a second connection (which InnoDB answers by scanning the
  table, and which sees a later state than the dump's snapshot on a busy server).

How the rows are counted. MariaDB's dump tool (10.x) writes each row of an extended INSERT on
its own line::

    /*!40000 ALTER TABLE `t` DISABLE KEYS */;
    INSERT INTO `t` VALUES
    (1,'a',0x00FF),
    (2,'b\\n',NULL);
    /*!40000 ALTER TABLE `t` ENABLE KEYS */;

and a value never holds a raw newline (strings are escaped, binary values are hex with
``--hex-blob``). So between the DISABLE and ENABLE lines, rows = newlines − INSERT lines − 1,
counted with ``bytes.count`` (C speed, ~3 GB/s here). The shape is checked as it goes (each
INSERT line ends in ``VALUES`` with its first row on the next line, each statement ends with
``);``); a dump in another shape (MySQL's mysqldump writes all rows of a statement on one
line; ``--skip-extended-insert``, ``--complete-insert``…) is reported ``counts_valid`` False
and the caller counts with ``COUNT(*)`` as before.

Every marker is a whole line (values never hold a raw newline), searched with ``bytes.find``
from its leading newline. Trigger bodies are written raw between ``DELIMITER ;;`` and
``DELIMITER ;`` and are skipped; routines and views come in the tail, which is not scanned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_SECTION_TABLE = b"\n-- Table structure for table `"
_SECTION_VIEW = b"\n-- Temporary table structure for view `"
_SECTION_SEQUENCE = b"\n-- Sequence structure for `"
_SECTIONS = {_SECTION_TABLE: "table", _SECTION_VIEW: "view", _SECTION_SEQUENCE: "sequence"}
_TAIL = (
    b"\n-- Dumping events for database '",
    b"\n-- Dumping routines for database '",
    b"\n-- Final view structure for view `",
)
_DATA = b"\n-- Dumping data for table `"
_KEYS = b"\n/*!40000 ALTER TABLE `"
_INSERT = b"\nINSERT INTO `"
_BODY_START = b"\nDELIMITER ;;\n"
_BODY_END = b"\nDELIMITER ;\n"
#: The longest marker: a match can start this many bytes before a chunk's end at the most.
_SPAN = max(len(n) for n in (*_SECTIONS, *_TAIL, _DATA, _KEYS, _INSERT))
_SPAN = max(_SPAN, len(_BODY_START))

# Scanner states.
_HEAD, _SECTION, _DATA_WAIT, _ROWS, _BODY, _TAIL_STATE = range(6)
_LOOKING: dict[int, tuple[bytes, ...]] = {
    _HEAD: (*_SECTIONS, *_TAIL),
    _SECTION: (*_SECTIONS, *_TAIL, _DATA, _BODY_START),
    _DATA_WAIT: (*_SECTIONS, *_TAIL, _KEYS, _BODY_START),
    _ROWS: (_INSERT, _KEYS),
    _BODY: (_BODY_END,),
    _TAIL_STATE: (),
}


@dataclass
class Unit:
    """A section (``table``, ``view`` stand-in, ``sequence``) or the ``tail``, starting at
    ``offset``."""

    id: int
    kind: str
    name: str | None
    offset: int


def parse_comment_name(line: bytes) -> str | None:
    """Return the identifier of a marker comment's rest of line (``name`+"`"``, backticks
    doubled), or None when it is not one (a name holding a newline is written over several
    comment lines: its sections are then simply not named)."""
    if not line.endswith(b"`"):
        return None
    try:
        text = line[:-1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "`" in text.replace("``", ""):
        return None
    return text.replace("``", "`")


class SqlDumpScanner:
    """Sections, tail and per-table row counts of a mariadb-dump script (see the module).

    Feed it the stream chunk by chunk with :meth:`scan`; :meth:`feed` (the pipeline/frames.py
    ``Scanner`` protocol) returns the unit starts found since it was last called — the stream
    wrapper scans each chunk as it is read, the framing pump asks right after.
    """

    def __init__(self) -> None:
        self.units: list[Unit] = []
        #: Exact rows per table name, for the tables whose data was counted.
        self.counts: dict[str, int] = {}
        self._base = 0  # absolute offset of the current chunk
        self._prev = b""  # the last _SPAN - 1 bytes before the current chunk
        self._cursor = 0  # absolute offset: matches before it are consumed
        self._state = _HEAD
        self._pending: list[tuple[int, int]] = []
        self._found: dict[bytes, int] = {}  # per needle: its next match in this chunk, or -1
        self._capture: tuple[str, bytearray] | None = None  # a line being read across chunks
        # Row counting of the table in _ROWS / _DATA_WAIT.
        self._table: str | None = None
        self._newlines = 0
        self._inserts = 0
        self._checked_inserts = 0
        self._shape_ok = True
        self._await_row = False
        self._failed: str | None = None

    # -- results --------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Whether the tail was found (so every section before it is known)."""
        return self._state == _TAIL_STATE and self._failed is None

    @property
    def tail_unit(self) -> int | None:
        return self.units[-1].id if self.complete and self.units[-1].kind == "tail" else None

    @property
    def counts_valid(self) -> bool:
        """Whether the rows were counted in a dump of the expected shape."""
        if not (self.complete and self._shape_ok):
            return False
        # At least one INSERT line was seen whole and had the one-row-per-line shape.
        return self._checked_inserts > 0 or not any(self.counts.values())

    def must_cut(self, unit: int) -> bool:
        """The tail must start a frame of its own (it runs after every section)."""
        return bool(self.units) and self.units[-1].id == unit and self.units[-1].kind == "tail"

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """Return (offset, unit id) of the units that started since the last call."""
        pending, self._pending = self._pending, []
        return pending

    # -- scanning -------------------------------------------------------------------------
    def scan(self, data: bytes) -> None:
        """Take the next chunk of the stream."""
        if self._state == _TAIL_STATE or self._failed is not None or not data:
            self._base += len(data)
            return
        base = self._base
        self._found = {}
        if self._await_row:  # the byte after an INSERT line, which ended the last chunk
            self._await_row = False
            self._line("insert", b"` VALUES", data[:1])
        if self._capture is not None:
            self._continue_capture(data)
        while True:
            found = self._next_match(data, _LOOKING[self._state])
            if found is None:
                break
            position, needle = found
            self._count_rows_to(data, position + 1)
            self._cursor = position + len(needle)
            self._on_match(needle, position, data)
            if self._state == _TAIL_STATE or self._failed is not None:
                break
        if self._state == _ROWS:
            self._count_rows_to(data, base + len(data))
        keep = _SPAN - 1
        self._prev = (self._prev + data[-keep:])[-keep:] if len(data) < keep else data[-keep:]
        self._base = base + len(data)

    def _next_match(self, data: bytes, needles: tuple[bytes, ...]) -> tuple[int, bytes] | None:
        """Return the earliest match at or after the cursor: (absolute offset, needle)."""
        base = self._base
        best: tuple[int, bytes] | None = None
        if self._cursor < base and self._prev:
            # Matches that start in the previous chunk and end in this one.
            join = self._prev + data[: _SPAN - 1]
            origin = base - len(self._prev)
            for needle in needles:
                at = join.find(needle, max(0, self._cursor - origin))
                while at != -1 and at + len(needle) <= len(self._prev):
                    at = join.find(needle, at + 1)  # wholly in the previous chunk: seen
                if at != -1 and at < len(self._prev) and (best is None or origin + at < best[0]):
                    best = (origin + at, needle)
            if best is not None:
                return best
        start = max(0, self._cursor - base)
        cache = self._found
        for needle in needles:
            known = cache.get(needle)
            if known is not None and (known == -1 or known >= start):
                # Searched to this chunk's end from before the cursor: the same answer.
                if known != -1 and (best is None or base + known < best[0]):
                    best = (base + known, needle)
                continue
            # A match starting before the best one so far ends before best + len(needle).
            end = len(data) if best is None else best[0] - base + len(needle) - 1
            at = data.find(needle, start, end)
            if best is None:
                cache[needle] = at  # searched to the chunk's end
            if at != -1 and (best is None or base + at < best[0]):
                best = (base + at, needle)
        return best

    def _count_rows_to(self, data: bytes, end: int) -> None:
        """Count the newlines of a row region from the cursor up to ``end`` (absolute)."""
        if self._state != _ROWS:
            return
        start = max(self._cursor, self._base)
        stop = min(end, self._base + len(data))
        if stop > start:
            self._newlines += data.count(b"\n", start - self._base, stop - self._base)

    def _byte_at(self, data: bytes, absolute: int, count: int) -> bytes:
        """Return ``count`` bytes at ``absolute`` from this chunk or the previous one's end."""
        start = absolute - self._base
        if start >= 0:
            return data[start : start + count]
        return (self._prev[start:] + data[:count])[:count]

    def _on_match(self, needle: bytes, position: int, data: bytes) -> None:
        if needle in _SECTIONS or needle in _TAIL:
            self._end_table_without_rows()
            kind = _SECTIONS.get(needle, "tail")
            unit = Unit(len(self.units) + 1, kind, None, position + 1)
            self.units.append(unit)
            self._pending.append((unit.offset, unit.id))
            if kind == "tail":
                self._state = _TAIL_STATE
                return
            self._capture_line("unit", data)
            self._state = _SECTION
        elif needle == _DATA:
            self._table = None
            self._capture_line("data", data)
            self._state = _DATA_WAIT
        elif needle == _BODY_START:
            self._end_table_without_rows()
            self._state = _BODY
        elif needle == _BODY_END:
            self._state = _SECTION
        elif needle == _KEYS and self._state == _DATA_WAIT:
            # The DISABLE KEYS line: its newline, then one per INSERT line and per row.
            self._newlines = 0
            self._inserts = 0
            self._state = _ROWS
        elif needle == _INSERT:
            self._inserts += 1
            self._capture_line("insert", data)
        elif needle == _KEYS:  # ENABLE KEYS: the region ends with the newline before it
            if self._inserts and self._byte_at(data, position - 2, 2) != b");":
                self._shape_ok = False
            rows = self._newlines - 1 - self._inserts
            if self._table is not None and rows >= 0:
                self.counts[self._table] = rows
            elif rows < 0:
                self._shape_ok = False
            self._table = None
            self._state = _SECTION

    def _end_table_without_rows(self) -> None:
        if self._state == _ROWS:
            self._shape_ok = False  # a section began inside a table's rows: not our shape
        self._table = None

    # -- lines read across chunk ends ------------------------------------------------------
    def _capture_line(self, kind: str, data: bytes) -> None:
        start = self._cursor - self._base  # a match ends in the chunk it is found in
        end = data.find(b"\n", start)
        if end == -1:
            self._capture = (kind, bytearray(data[start:]))
            return
        self._line(kind, data[start:end], data[end + 1 : end + 2] if end + 1 < len(data) else None)

    def _continue_capture(self, data: bytes) -> None:
        assert self._capture is not None
        kind, buffer = self._capture
        end = data.find(b"\n")
        if end == -1:
            buffer += data
            if len(buffer) > 4096:  # no marker line is that long
                self._capture = None
                self._shape_ok = False
            return
        self._capture = None
        buffer += data[:end]
        self._line(kind, bytes(buffer), data[end + 1 : end + 2] if end + 1 < len(data) else None)

    def _line(self, kind: str, rest: bytes, following: bytes | None) -> None:
        """Handle the rest of a marker's line (after the needle) and the next byte if known."""
        if kind == "unit":
            self.units[-1].name = parse_comment_name(rest)
        elif kind == "data":
            self._table = parse_comment_name(rest)
        elif kind == "insert":
            # "INSERT INTO `t` VALUES" then one row per line: "(…),".
            if not rest.endswith(b"` VALUES") or following not in (b"(", None):
                self._shape_ok = False
            elif following is None:
                self._await_row = True
            else:
                self._checked_inserts += 1


def sections_record(scanner: SqlDumpScanner, links: list[list[str]] | None) -> dict[str, object]:
    """Return what a backup's record keeps of a scanned script: its units, its tail and the
    tables that must be loaded by the same client (``links``: (child, parent) foreign keys;
    None when no parallel load is safe)."""
    return {
        "version": 1,
        "tail": scanner.tail_unit,
        "units": [[unit.id, unit.kind, unit.name] for unit in scanner.units],
        "links": links,
    }


# -- restore side ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SectionPlan:
    """How a sectioned script is restored by several clients at once."""

    #: Per worker: the units whose frames it runs (after the header), in script order.
    workers: list[set[int]]
    #: Per worker: the tables those frames create and load (for the row check).
    tables: list[list[str]]
    #: The tail's unit: run by one client once every worker is done.
    tail: int


def plan_sections(
    frames: list[tuple[int, int, tuple[int, ...]]],
    sections: Mapping[str, Any],
    jobs: int,
) -> SectionPlan | None:
    """Share the table frames of a sectioned backup among up to ``jobs`` clients, by raw size;
    None when there is nothing to share (one frame of tables, ``jobs`` 1) or the record does
    not describe such a backup exactly: the header alone in the first frame, the tail alone in
    the last, every other frame holding sections only."""
    from vya_backupdb.engines.mysql_parallel import plan_groups  # ~10 ms: only when needed

    if jobs < 2 or sections.get("version") != 1 or len(frames) < 3:
        return None
    try:
        tail = int(sections["tail"])
        units = {int(u[0]): (str(u[1]), u[2]) for u in sections["units"]}
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if frames[0][2] or frames[-1][2] != (tail,) or units.get(tail, ("",))[0] != "tail":
        return None
    if any(kind == "sequence" for kind, _ in units.values()):
        return None  # a table's DEFAULT NEXTVAL(s) would need s locked with it: one client
    body = frames[1:-1]
    found = [unit for _, _, ids in body for unit in ids]
    if not all(ids for _, _, ids in body) or sorted(found) != sorted(set(units) - {tail}):
        return None
    bundles = _bundle_frames(frames, units, sections.get("links"))
    if bundles is None:
        return None
    ends = [raw for _, raw, _ in frames[2:]]  # a frame ends where the next one starts
    sizes = [end - raw for (_, raw, _), end in zip(body, ends, strict=True)]
    weights = [(str(key), sum(sizes[n - 1] for n in ns)) for key, ns in bundles.items()]
    groups = plan_groups(weights, jobs)
    if len(groups) < 2:
        return None
    workers: list[set[int]] = []
    tables: list[list[str]] = []
    for group in groups:
        numbers = sorted(n for key in group for n in bundles[int(key)])
        ids = [unit for n in numbers for unit in frames[n][2]]
        workers.append(set(ids))
        tables.append(
            [str(units[u][1]) for u in ids if units[u][0] == "table" and units[u][1] is not None]
        )
    return SectionPlan(workers, tables, tail)


def _bundle_frames(
    frames: list[tuple[int, int, tuple[int, ...]]],
    units: dict[int, tuple[str, Any]],
    links: object,
) -> dict[int, list[int]] | None:
    """Group the table frames (numbers 1..len-2) that must go to the same client: those
    holding tables linked by a foreign key. None when ``links`` is unknown or names a table
    no section is known by."""
    if not isinstance(links, list):
        return None
    frame_of = {
        units[u][1]: n
        for n, (_, _, ids) in enumerate(frames[1:-1], 1)
        for u in ids
        if units[u][0] == "table" and units[u][1] is not None
    }
    root = list(range(len(frames)))

    def find(n: int) -> int:
        while root[n] != n:
            root[n] = root[root[n]]
            n = root[n]
        return n

    for link in links:
        if not (isinstance(link, list) and len(link) == 2 and all(t in frame_of for t in link)):
            return None
        root[find(frame_of[link[0]])] = find(frame_of[link[1]])
    bundles: dict[int, list[int]] = {}
    for n in range(1, len(frames) - 1):
        bundles.setdefault(find(n), []).append(n)
    return bundles
