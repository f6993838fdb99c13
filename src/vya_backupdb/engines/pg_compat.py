"""Make a plain-format pg_dump from a newer server load into an older one, without touching data.

The filter is line-aware and knows SQL lexing well enough to be safe:

* ``COPY ... FROM stdin;`` switches to data mode until the ``\\.`` line: data lines are passed
  through byte for byte, never inspected, whatever they contain.
* Rules only look at lines that *start* outside any string literal, quoted identifier, dollar
  quote (function bodies) or comment, so a function body or a multi-line comment that happens to
  contain ``SET transaction_timeout = 0;`` is never changed.
* A line longer than :data:`MAX_RULE_LINE` is passed through (no rule matches such a line) and
  lexed piecewise, so memory stays bounded even for a dump made with ``--inserts``.

Rules (each applies only when the target server is older than the version that introduced the
construct; see :data:`RULES`):

=============================================  =========  ==========================================
statement                                      since      rewrite on an older target
=============================================  =========  ==========================================
``SET transaction_timeout = …;``               17         dropped
``SET default_table_access_method = …;``       12         dropped
``SET default_toast_compression = …;``         14         dropped
``SET idle_in_transaction_session_timeout``    9.6        dropped
``SET row_security = …;``                      9.5        dropped
``ALTER SCHEMA public OWNER TO                 14         dropped (the role does not exist there)
pg_database_owner;``
``CREATE DATABASE … LOCALE_PROVIDER = …``      15         LOCALE_PROVIDER / ICU_LOCALE removed
``CREATE DATABASE … ICU_RULES = …``            16         ICU_RULES removed
``CREATE DATABASE … BUILTIN_LOCALE = …``       17         BUILTIN_LOCALE removed
``\\restrict KEY`` / ``\\unrestrict KEY``        psql 17.6  dropped when the psql that runs the
                                               16.10 …    restore does not know these meta-commands
=============================================  =========  ==========================================

Independently of versions, ``drop_owner`` drops the one-line ``ALTER … OWNER TO …;`` statements
(used when ownership is reassigned to another role on restore).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from vya_backupdb.engines.process import Readable

#: Lines longer than this are never matched by a rule (all rules target short statements).
MAX_RULE_LINE = 64 * 1024

_IDENT_BYTE = re.compile(rb"[A-Za-z0-9_$\x80-\xff]")
_NORMAL_SPECIAL = re.compile(rb"['\"$/\-]")
_DOLLAR_TAG = re.compile(rb"\$([A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_DOLLAR_PARTIAL = re.compile(rb"\$[A-Za-z0-9_\x80-\xff]*\Z")
_ESCAPE_STRING = re.compile(rb"\\.|'", re.DOTALL)
_BLOCK_COMMENT = re.compile(rb"/\*|\*/")


@dataclass
class SqlLexer:
    """Track whether the position after the bytes fed so far is inside a literal or comment.

    ``feed`` may be called with arbitrary pieces; it returns the unconsumed tail (an incomplete
    token such as a lone ``$`` or ``-``) which the caller passes again with the next piece.
    Feeding whole lines (ending with a newline) never leaves a tail.
    """

    mode: str = "normal"  # normal | squote | estring | dquote | dollar | line | block
    tag: bytes = b""
    depth: int = 0
    _prev: int = 0  # last byte consumed in normal mode, to recognise E'' and identifiers

    @property
    def in_code(self) -> bool:
        return self.mode == "normal"

    def feed(self, data: bytes, *, final: bool = False) -> bytes:
        """Consume ``data``; return the bytes that must be fed again with what follows."""
        pos, end = 0, len(data)
        while pos < end:
            if self.mode == "normal":
                match = _NORMAL_SPECIAL.search(data, pos)
                if match is None:
                    self._prev = data[end - 1]
                    return b""
                i = match.start()
                char = data[i : i + 1]
                before = data[i - 1] if i > 0 else self._prev
                if char in (b"-", b"/"):
                    if i + 1 >= end:
                        if final:
                            return b""
                        self._prev = before
                        return data[i:]
                    follow = data[i + 1 : i + 2]
                    if char == b"-" and follow == b"-":
                        self.mode = "line"
                        pos = i + 2
                    elif char == b"/" and follow == b"*":
                        self.mode, self.depth = "block", 1
                        pos = i + 2
                    else:
                        self._prev = data[i]
                        pos = i + 1
                elif char == b"'":
                    escape = before in b"Ee" and (
                        i < 2 or not _IDENT_BYTE.match(data[i - 2 : i - 1])
                    )
                    self.mode = "estring" if escape else "squote"
                    pos = i + 1
                elif char == b'"':
                    self.mode = "dquote"
                    pos = i + 1
                else:  # "$"
                    if before and _IDENT_BYTE.match(bytes([before])):
                        self._prev = data[i]
                        pos = i + 1
                        continue
                    tag = _DOLLAR_TAG.match(data, i)
                    if tag is not None:
                        self.mode, self.tag = "dollar", tag.group(0)
                        pos = tag.end()
                    elif not final and _DOLLAR_PARTIAL.match(data, i):
                        self._prev = before
                        return data[i:]
                    else:
                        self._prev = data[i]
                        pos = i + 1
            elif self.mode in ("squote", "dquote"):
                quote = b"'" if self.mode == "squote" else b'"'
                i = data.find(quote, pos)
                if i < 0:
                    return b""
                # A doubled quote ends and restarts the literal: same state either way.
                self.mode, self._prev = "normal", data[i]
                pos = i + 1
            elif self.mode == "estring":
                match = _ESCAPE_STRING.search(data, pos)
                if match is None:
                    if not final and data.endswith(b"\\"):
                        return b"\\"
                    return b""
                if match.group(0) == b"'":
                    self.mode, self._prev = "normal", ord("'")
                pos = match.end()
            elif self.mode == "dollar":
                i = data.find(self.tag, pos)
                if i < 0:
                    if final:
                        return b""
                    # Keep only a tail that could be the start of the closing tag.
                    for keep in range(min(len(self.tag) - 1, end - pos), 0, -1):
                        if self.tag.startswith(data[end - keep :]):
                            return data[end - keep :]
                    return b""
                self.mode, self._prev = "normal", ord("$")
                pos = i + len(self.tag)
            elif self.mode == "line":
                i = data.find(b"\n", pos)
                if i < 0:
                    return b""
                self.mode, self._prev = "normal", ord("\n")
                pos = i + 1
            else:  # block comment, nested
                match = _BLOCK_COMMENT.search(data, pos)
                if match is None:
                    if not final and data[-1:] in (b"/", b"*"):
                        return data[-1:]
                    return b""
                self.depth += 1 if match.group(0) == b"/*" else -1
                if self.depth == 0:
                    self.mode, self._prev = "normal", ord("/")
                pos = match.end()
        return b""


def psql_knows_restrict(psql_version_num: int) -> bool:
    """Return True when this psql understands ``\\restrict`` (added in the August 2025 minors)."""
    major, minor = divmod(psql_version_num, 10000)
    firsts = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
    if major >= 18:
        return True
    return major in firsts and minor >= firsts[major]


Rewrite = Callable[[bytes], bytes | None]


@dataclass(frozen=True)
class Rule:
    """Drop or rewrite a top-level line matching ``pattern`` when the target is older than
    ``since`` (a server version number)."""

    name: str
    since: int
    pattern: re.Pattern[bytes]
    rewrite: Rewrite = field(default=lambda _line: None)


def _strip_db_options(*options: bytes) -> Rewrite:
    regex = re.compile(
        rb"\s+(?:" + b"|".join(options) + rb")\s*=?\s*(?:'(?:[^']|'')*'|[A-Za-z0-9_]+)",
        re.IGNORECASE,
    )

    def rewrite(line: bytes) -> bytes:
        return regex.sub(b"", line)

    return rewrite


def _set(param: str) -> re.Pattern[bytes]:
    return re.compile(rb"^SET\s+" + param.encode() + rb"\s*(=|TO)\s*[^;]*;\s*$", re.IGNORECASE)


RULES: tuple[Rule, ...] = (
    Rule("SET transaction_timeout", 170000, _set("transaction_timeout")),
    Rule("SET default_table_access_method", 120000, _set("default_table_access_method")),
    Rule("SET default_toast_compression", 140000, _set("default_toast_compression")),
    Rule(
        "SET idle_in_transaction_session_timeout",
        90600,
        _set("idle_in_transaction_session_timeout"),
    ),
    Rule("SET row_security", 90500, _set("row_security")),
    Rule(
        "ALTER SCHEMA public OWNER TO pg_database_owner",
        140000,
        re.compile(rb"^ALTER SCHEMA public OWNER TO pg_database_owner;\s*$"),
    ),
    Rule(
        "CREATE DATABASE LOCALE_PROVIDER",
        150000,
        re.compile(rb"^CREATE DATABASE .*\b(LOCALE_PROVIDER|ICU_LOCALE)\b", re.IGNORECASE),
        _strip_db_options(rb"LOCALE_PROVIDER", rb"ICU_LOCALE"),
    ),
    Rule(
        "CREATE DATABASE ICU_RULES",
        160000,
        re.compile(rb"^CREATE DATABASE .*\bICU_RULES\b", re.IGNORECASE),
        _strip_db_options(rb"ICU_RULES"),
    ),
    Rule(
        "CREATE DATABASE BUILTIN_LOCALE",
        170000,
        re.compile(rb"^CREATE DATABASE .*\bBUILTIN_LOCALE\b", re.IGNORECASE),
        _strip_db_options(rb"BUILTIN_LOCALE"),
    ),
)

_RESTRICT = re.compile(rb"^\\(un)?restrict(\s+\S+)?\s*$")
_OWNER_TO = re.compile(rb"^ALTER [A-Z ]+ .* OWNER TO .*;\s*$")
_COPY_START = re.compile(rb"^COPY .* FROM stdin;\s*$")
_COPY_END = (b"\\.\n", b"\\.\r\n", b"\\.")


@dataclass
class PlainDumpFilter:
    """Filter the lines of a plain SQL dump for an older target (see the module docstring).

    ``source_version_num`` None means unknown: the version rules then apply whenever the target
    lacks the construct (they only remove what the target could not execute anyway).
    """

    target_version_num: int
    source_version_num: int | None = None
    psql_version_num: int | None = None
    drop_owner: bool = False
    lexer: SqlLexer = field(default_factory=SqlLexer)
    in_copy: bool = False
    #: Name of each rule that fired, with how many lines it changed (for the restore log).
    applied: dict[str, int] = field(default_factory=dict)
    _carry: bytes = field(default=b"", init=False, repr=False)
    _rules: list[Rule] = field(default_factory=list, init=False, repr=False)
    _drop_restrict: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        newer = self.source_version_num is None or self.source_version_num > self.target_version_num
        self._rules = [r for r in RULES if newer and self.target_version_num < r.since]
        self._drop_restrict = self.psql_version_num is not None and not psql_knows_restrict(
            self.psql_version_num
        )

    def _count(self, name: str) -> None:
        self.applied[name] = self.applied.get(name, 0) + 1

    def filter_line(self, line: bytes) -> bytes | None:
        """Return ``line`` (possibly rewritten) or None to drop it. ``line`` keeps its newline."""
        if self.in_copy:
            if line in _COPY_END:
                self.in_copy = False
            return line
        if not self.lexer.in_code:
            self.lexer.feed(line)
            return line
        if self._drop_restrict and _RESTRICT.match(line):
            self._count("\\restrict")
            return None
        if self.drop_owner and _OWNER_TO.match(line):
            self._count("OWNER TO")
            return None
        for rule in self._rules:
            if rule.pattern.match(line):
                self._count(rule.name)
                rewritten = rule.rewrite(line)
                if rewritten is None:
                    return None
                line = rewritten
        self.lexer.feed(line)
        if self.lexer.in_code and _COPY_START.match(line):
            self.in_copy = True
        return line

    def filter_long_piece(self, piece: bytes, *, first: bool) -> bytes:
        """Pass a piece of an over-long line through, keeping the lexer state right."""
        if not self.in_copy:
            self._carry = self.lexer.feed((b"" if first else self._carry) + piece)
        return piece

    def filter_lines(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        """Yield the filtered ``lines`` (each ending with its newline)."""
        for line in lines:
            out = self.filter_line(line)
            if out is not None:
                yield out


class FilteredReader:
    """A Readable that passes ``source`` through ``PlainDumpFilter`` with bounded memory."""

    def __init__(self, source: Readable, dump_filter: PlainDumpFilter, chunk: int = 1 << 20):
        self._source = source
        self._filter = dump_filter
        self._chunk = chunk
        self._line = bytearray()  # start of the current line (at most MAX_RULE_LINE bytes)
        self._long = False  # the current line exceeded MAX_RULE_LINE: streaming it through
        self._out = bytearray()
        self._eof = False

    def _process(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start : newline + 1]
            start += len(piece)
            if self._long:
                self._out += self._filter.filter_long_piece(piece, first=False)
            else:
                self._line += piece
                if newline < 0 and len(self._line) > MAX_RULE_LINE:
                    self._long = True
                    self._out += self._filter.filter_long_piece(bytes(self._line), first=True)
                    self._line.clear()
                    continue
            if newline >= 0:
                if self._long:
                    self._long = False
                else:
                    out = self._filter.filter_line(bytes(self._line))
                    if out is not None:
                        self._out += out
                    self._line.clear()

    def read(self, size: int = -1, /) -> bytes:
        want = size if size and size > 0 else self._chunk
        while len(self._out) < want and not self._eof:
            data = self._source.read(self._chunk)
            if not data:
                self._eof = True
                if self._line:
                    out = self._filter.filter_line(bytes(self._line))
                    if out is not None:
                        self._out += out
                    self._line.clear()
                break
            self._process(data)
        result = bytes(self._out[:want])
        del self._out[:want]
        return result
