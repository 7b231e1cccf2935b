"""The group report's one-pass scan of a block of dump lines, compiled by numba.

The general reader (:mod:`.dump`) parses every column of a block with polars and then
checks them; for the report, which reads four numbers per line, that parse and the
checks cost more CPU than inflating the dump. This scan reads each byte once: it checks
every field of a line (with ``check_all``; else the four the report reads and the last),
and adds a good line to a per-gid table in the same pass. Its checks are the reader's,
field for field, so a dump has the same good lines and the same bad-line accounting
whichever runs:

- a line with other than ``columns`` tab-separated fields: wrong column count;
- the path, standard base64 (polars' decoder: padded, no stray low bits in the last
  character), the lexical alphabet (same characters, padded), or Go-quoted (``"``, UTF-8
  text without control characters, Go's escapes, ``"``): else undecodable path;
- integers as polars reads them: leading spaces, one ``+`` (or ``-`` in a signed column),
  digits, in 64 bits (signed; unsigned for inode, nlink, dev): else non-integer;
- the type, one of :data:`.dump.TYPES`: else unknown entry type;
- the path is checked first, then the numbers, then the type, and every field may end
  with one ``\\r`` (a CRLF dump).

The functions here are plain numba code on numpy arrays; :func:`scan_report` is what
the report calls.
"""

# ruff: noqa: SIM109 - `c == a or c == b` is what numba compiles to two compares

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import dump
from .dump import BASE64, BASE64_LEXICAL, KINDS, QUOTED, STD_ALPHABET, TYPES, BadLines, Block, DumpFormat, FileProgress


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def choose_cache_dir(module_dir: Path, environ: dict) -> str | None:
    """Where numba can cache the compiled scan: the first writable of ``NUMBA_CACHE_DIR``,
    the module's ``__pycache__`` and the user's cache; else a directory of this user's
    in the temp dir, set as ``NUMBA_CACHE_DIR``; None if nothing is writable (the scan
    then compiles in each process). numba itself refuses to import a cached function
    when it finds no writable place (a read-only install run by a user without a home)."""
    given = environ.get("NUMBA_CACHE_DIR")
    user_cache = Path(environ.get("XDG_CACHE_HOME") or Path(environ.get("HOME") or "/nonexistent") / ".cache")
    for candidate in ([Path(given)] if given else []) + [module_dir / "__pycache__", user_cache / "numba"]:
        if _writable(candidate):
            return str(candidate)
    fallback = Path(tempfile.gettempdir()) / f"hpcsync-numba-{os.getuid()}"
    if _writable(fallback):
        environ["NUMBA_CACHE_DIR"] = str(fallback)
        return str(fallback)
    return None


#: Where the compiled scan is cached (None: not cached). Chosen before numba is imported,
#: as numba reads NUMBA_CACHE_DIR when it is.
CACHE_DIR = choose_cache_dir(Path(__file__).parent, os.environ)
_CACHE = CACHE_DIR is not None

from numba import njit  # noqa: E402 - after CACHE_DIR

#: The encodings this scan reads, and their codes in it.
ENCODINGS = (BASE64, BASE64_LEXICAL, QUOTED)
_STANDARD, _LEXICAL, _QUOTED = range(3)

_TAB, _NL, _CR, _SPACE, _PLUS, _MINUS, _PAD, _QUOTE, _BACKSLASH = 9, 10, 13, 32, 43, 45, 61, 34, 92
_KIND_COLUMNS, _KIND_PATH, _KIND_INTEGER, _KIND_TYPE = range(4)
assert KINDS[_KIND_COLUMNS] == "wrong column count" and KINDS[_KIND_TYPE] == "unknown entry type"

# 2**64 - 1 divided by 10, and its last digit: the overflow check of an unsigned parse
_U64_TENTH = np.uint64(1844674407370955161)
_U64_LAST = np.uint64(5)
_I64_MAX = np.uint64(2**63 - 1)
_I64_MIN_MAGNITUDE = np.uint64(2**63)
_NO_MTIME = np.int64(-(2**63))
_NINE = np.uint64(9)

#: Each byte's value in the standard base64 alphabet, -1 if not in it (the lexical
#: alphabet has the same characters, so the same table tells membership).
B64_VALUES = np.full(256, -1, dtype=np.int8)
B64_VALUES[np.frombuffer(STD_ALPHABET, dtype=np.uint8)] = np.arange(64, dtype=np.int8)
#: 1 for each byte that stands for itself in a Go-quoted path (printable ASCII but ``"``
#: and ``\``).
PLAIN_BYTES = np.zeros(256, dtype=np.uint8)
PLAIN_BYTES[0x20:0x7F] = 1
PLAIN_BYTES[[_QUOTE, _BACKSLASH]] = 0
#: Go's one-letter escapes: ``\a \b \f \n \r \t \v \\ \"``.
SIMPLE_ESCAPES = np.zeros(256, dtype=np.uint8)
SIMPLE_ESCAPES[list(b'abfnrtv\\"')] = 1
#: 1 for each byte that is an entry type.
TYPE_BYTES = np.zeros(256, dtype=np.uint8)
TYPE_BYTES[[ord(t) for t in TYPES]] = 1
assert all(len(t) == 1 for t in TYPES)


@njit(nogil=True, cache=_CACHE)
def _field_end(buf, pos):
    """The position of the tab or newline that ends the field at ``pos``."""
    while True:
        c = buf[pos]
        if c == _TAB or c == _NL:
            return pos
        pos += 1


@njit(nogil=True, cache=_CACHE)
def _ends_field(buf, pos):
    """``(end, ok)``: ``pos`` is at the field's tab or newline, or at one ``\\r`` before
    it (then ``end`` is past the ``\\r``); else the field has more in it (not ok)."""
    c = buf[pos]
    if c == _TAB or c == _NL:
        return pos, True
    if c == _CR and (buf[pos + 1] == _TAB or buf[pos + 1] == _NL):
        return pos + 1, True
    return _field_end(buf, pos), False


@njit(nogil=True, cache=_CACHE)
def _fits_u64(buf, start, stop):
    """Whether the digits ``buf[start:stop]`` are at most 2**64 - 1 (the rare long case)."""
    while start < stop and buf[start] == 48:
        start += 1
    if stop - start < 20:
        return True
    if stop - start > 20:
        return False
    value = np.uint64(0)
    for i in range(start, stop):
        d = np.uint64(np.int64(buf[i]) - 48)
        if value > _U64_TENTH or (value == _U64_TENTH and d > _U64_LAST):
            return False
        value = value * np.uint64(10) + d
    return True


# Each field has a fast check, inlined, for what dumps hold (plain digits; a path of
# alphabet characters and padding; one type letter), which says whether it could decide,
# and a slow one, called only when it could not. (A call inside the inlined check keeps
# numba from compiling the scan tight: the slow calls are in the scan itself.)


@njit(nogil=True, cache=_CACHE, inline="always")
def _digits(buf, pos):
    """``(end, decided, value)``: a field of 1 to 18 plain digits is decided (ok)."""
    start = pos
    value = np.uint64(0)
    while True:
        d = np.uint64(np.int64(buf[pos]) - 48)  # a byte below '0' wraps past 9
        if d > _NINE:  # (uint64 against uint64: numba compares mixed signs as floats)
            break
        value = value * np.uint64(10) + d
        pos += 1
    c = buf[pos]
    return pos, (c == _TAB or c == _NL) and pos > start and pos - start < 19, np.int64(value)


@njit(nogil=True, cache=_CACHE)
def _integer(buf, pos, signed):
    """``(end, ok, value)`` of any integer field (an unsigned value past 2**63 - 1 comes
    back wrapped, as its bits): spaces, a sign, a ``\\r``, 19 digits or more, no digit."""
    while buf[pos] == _SPACE:
        pos += 1
    negative = False
    c = buf[pos]
    if c == _PLUS:
        pos += 1
    elif c == _MINUS:
        negative = True
        pos += 1
    start = pos
    value = np.uint64(0)
    while True:
        d = np.uint64(np.int64(buf[pos]) - 48)
        if d > _NINE:
            break
        value = value * np.uint64(10) + d
        pos += 1
    ok = pos > start and _fits_u64(buf, start, pos)
    pos, ended = _ends_field(buf, pos)
    ok = ok and ended
    if signed:
        ok = ok and value <= (_I64_MIN_MAGNITUDE if negative else _I64_MAX)
        out = -np.int64(value) if negative else np.int64(value)
    else:
        ok = ok and not negative
        out = np.int64(value)
    return pos, ok, out


@njit(nogil=True, cache=_CACHE, inline="always")
def _base64(buf, pos, b64, trailing_bits):
    """``(end, decided, ok)`` of a path field: decided unless it has a byte outside the
    alphabet and its padding (a ``\\r``, say)."""
    start = pos
    last = np.int8(0)
    while True:
        v = b64[buf[pos]]
        if v < 0:
            break
        last = v
        pos += 1
    n = pos - start
    while buf[pos] == _PAD:
        pos += 1
    pad = pos - start - n
    c = buf[pos]
    ok = n > 0 and (n + pad) % 4 == 0 and pad <= 2
    if ok and trailing_bits and pad:
        ok = (last & (3 if pad == 1 else 15)) == 0
    return pos, c == _TAB or c == _NL, ok


@njit(nogil=True, cache=_CACHE)
def _path(buf, pos, b64, trailing_bits):
    """``(end, ok)`` of any path field."""
    pos, decided, ok = _base64(buf, pos, b64, trailing_bits)
    if decided:
        return pos, ok
    pos, ended = _ends_field(buf, pos)
    return pos, ok and ended


@njit(nogil=True, cache=_CACHE, inline="always")
def _quoted_plain(buf, pos, plain):
    """``(end, decided)`` of a Go-quoted path with no escape and nothing but printable
    ASCII (then it is ok); any other is left to :func:`_quoted`."""
    if buf[pos] != _QUOTE:
        return pos, False
    end = pos + 1
    while plain[buf[end]]:
        end += 1
    if buf[end] == _QUOTE and (buf[end + 1] == _TAB or buf[end + 1] == _NL):
        return end + 1, True
    return pos, False


@njit(nogil=True, cache=_CACHE)
def _hex_digits(buf, pos, count, base):
    """Whether ``count`` digits of ``base`` (8 or 16) start at ``pos`` (it stops at the
    first that is not one: never past a newline)."""
    for i in range(count):
        c = np.int64(buf[pos + i])
        if 48 <= c <= 55 or (base == 16 and (56 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102)):
            continue
        return False
    return True


@njit(nogil=True, cache=_CACHE)
def _utf8_length(buf, pos):
    """The length of the well-formed UTF-8 character at ``pos`` (as Python and Rust
    decode it: no overlong form, no surrogate, nothing past U+10FFFF), or 0."""
    c = np.int64(buf[pos])
    if 0xC2 <= c <= 0xDF:
        n, low, high = 2, 0x80, 0xBF
    elif c == 0xE0:
        n, low, high = 3, 0xA0, 0xBF
    elif c == 0xED:
        n, low, high = 3, 0x80, 0x9F
    elif 0xE1 <= c <= 0xEF:
        n, low, high = 3, 0x80, 0xBF
    elif c == 0xF0:
        n, low, high = 4, 0x90, 0xBF
    elif 0xF1 <= c <= 0xF3:
        n, low, high = 4, 0x80, 0xBF
    elif c == 0xF4:
        n, low, high = 4, 0x80, 0x8F
    else:
        return 0
    second = np.int64(buf[pos + 1])
    if second < low or second > high:
        return 0
    for i in range(2, n):
        following = np.int64(buf[pos + i])
        if following < 0x80 or following > 0xBF:
            return 0
    return n


@njit(nogil=True, cache=_CACHE)
def _quoted(buf, pos, simple):
    r"""``(end, ok)`` of any Go-quoted path field: ``"``, then characters that are UTF-8
    and not control characters, ``"`` or ``\``, or Go's escapes (``\n``, ``\x7f``,
    ``\377``, ``\u00e9``, ``\U0001f600``), then ``"`` (and one ``\r``) at the field's end."""
    ok = buf[pos] == _QUOTE
    closed = False
    if ok:
        pos += 1
    while ok:
        c = buf[pos]
        if c == _QUOTE:
            closed = True
            pos += 1
            break
        if c == _BACKSLASH:  # (a bad escape leaves pos at it: the field end is found from there)
            e = buf[pos + 1]
            if simple[e]:
                width = 2
            elif e == 120:  # \xHH
                width = 4 if _hex_digits(buf, pos + 2, 2, 16) else 0
            elif 48 <= e <= 55:  # \ooo
                width = 4 if _hex_digits(buf, pos + 1, 3, 8) else 0
            elif e == 117:  # \uHHHH
                width = 6 if _hex_digits(buf, pos + 2, 4, 16) else 0
            elif e == 85:  # \UHHHHHHHH
                width = 10 if _hex_digits(buf, pos + 2, 8, 16) else 0
            else:
                width = 0
            ok = width > 0
            pos += width
        elif c < 0x20 or c == 0x7F:  # (a tab or newline too: the field ends unclosed)
            ok = False
        elif c < 0x80:
            pos += 1
        else:
            n = _utf8_length(buf, pos)
            ok = n > 0
            pos += n
    if ok and closed:
        return _ends_field(buf, pos)
    return _field_end(buf, pos), False


@njit(nogil=True, cache=_CACHE)
def _entry_type(buf, pos, types):
    """``(end, ok)`` of any type field."""
    if types[buf[pos]]:
        return _ends_field(buf, pos + 1)
    return _field_end(buf, pos), False


@njit(nogil=True, cache=_CACHE)
def _slot(keys, used_by, gid):
    """The slot of ``gid`` in an open-addressing table, or the free slot it would take."""
    mask = keys.shape[0] - 1
    h = (gid ^ (gid >> 29)) * np.int64(-7046029254386353131)
    i = (h ^ (h >> 32)) & mask
    while used_by[i] and keys[i] != gid:
        i = (i + 1) & mask
    return i


@njit(nogil=True, cache=_CACHE)
def _next(buf, pos, line_ok):
    """After a field ending at ``pos``: ``(start of the next field, the line still has
    its columns)``; at a newline the line has too few."""
    if buf[pos] == _TAB:
        return pos + 1, line_ok
    return pos, False


@njit(nogil=True, cache=_CACHE)
def scan_block(buf, pos, twelve, check_all, encoding, reference_time, b64, plain, simple, types,
               keys, used_by, used, mtime, entries, filled, progress, bad_at, bad_kind, counts):  # fmt: skip
    """Scan whole lines of ``buf`` from ``pos``; return where it stopped.

    ``twelve``: lines have 12 columns, else 11; ``encoding``: the path's (a code: standard
    or lexical base64, or Go-quoted). ``filled[0]``: the table's slots in use;
    ``progress``: [lines scanned, bad lines kept] since the first call. A good line adds
    to its gid's slot (``used += size // nlink`` unless nlink is 0, ``mtime = max`` of
    those not after ``reference_time``, ``entries += 1``). A bad line adds to
    ``counts[kind]``, and its line index (from 0 at the first call) and kind go to
    ``bad_at``/``bad_kind`` while they have room. The scan stops
    early, at the start of a line, when a new gid would fill the table past half: the
    caller grows it and calls again from there.
    """
    end = buf.shape[0]
    last_gid = np.int64(0)
    last_slot = -1
    while pos < end:
        line_start = pos
        # the columns in order; `columns` goes False at a line that ends too soon, and
        # the rest of the line is then only walked to its newline
        columns = True
        path_ok = True
        numbers_ok = True
        type_ok = True
        size = gid = when = nlink = np.int64(0)
        # fmt: off
        if check_all and encoding == _QUOTED:
            pos, decided = _quoted_plain(buf, pos, plain)
            if not decided:
                pos, path_ok = _quoted(buf, line_start, simple)
        elif check_all:
            pos, decided, path_ok = _base64(buf, pos, b64, encoding == _STANDARD)
            if not decided:
                pos, path_ok = _path(buf, line_start, b64, encoding == _STANDARD)
        else:
            pos = _field_end(buf, pos)
        # the six signed numbers: size, uid, gid, atime, mtime, ctime (the report reads
        # size, gid and mtime)
        for column in range(1, 7):
            pos, columns = _next(buf, pos, columns)
            if check_all or column == 1 or column == 3 or column == 5:
                at = pos; pos, ok, value = _digits(buf, pos)  # noqa: E702
                if not ok: pos, ok, value = _integer(buf, at, True)  # noqa: E701
                numbers_ok &= ok
                if column == 1:
                    size = value
                elif column == 3:
                    gid = value
                elif column == 5:
                    when = value
            else:
                pos = _field_end(buf, pos)
        pos, columns = _next(buf, pos, columns)
        if check_all:  # type: one letter
            if types[buf[pos]] and (buf[pos + 1] == _TAB or buf[pos + 1] == _NL):
                pos += 1  # (a type letter is never the block's last byte: pos + 1 is in it)
            else:
                pos, type_ok = _entry_type(buf, pos, types)
        else:
            pos = _field_end(buf, pos)
        # the unsigned inode, nlink, dev, and wrstat's signed apparent size (the report
        # reads nlink; the last column is always checked: a short line leaves it empty)
        for column in range(8, 12 if twelve else 11):
            pos, columns = _next(buf, pos, columns)
            if check_all or column == 9 or column == (11 if twelve else 10):
                at = pos; pos, ok, value = _digits(buf, pos)  # noqa: E702
                if not ok: pos, ok, value = _integer(buf, at, column == 11)  # noqa: E701
                numbers_ok &= ok
                if column == 9:
                    nlink = value
            else:
                pos = _field_end(buf, pos)
        # fmt: on
        if buf[pos] == _TAB:  # more columns than the format's
            columns = False
            while buf[pos] != _NL:
                pos += 1
        pos += 1
        # a short line's fields were read from its own remainder; only its count matters
        kind = -1
        if not columns:
            kind = _KIND_COLUMNS
        elif not path_ok:
            kind = _KIND_PATH
        elif not numbers_ok:
            kind = _KIND_INTEGER
        elif not type_ok:
            kind = _KIND_TYPE
        if kind >= 0:
            counts[kind] += 1
            if progress[1] < bad_at.shape[0]:
                bad_at[progress[1]] = progress[0]
                bad_kind[progress[1]] = kind
                progress[1] += 1
            progress[0] += 1
            continue
        if last_slot >= 0 and gid == last_gid:
            slot = last_slot
        else:
            slot = _slot(keys, used_by, gid)
            if not used_by[slot]:
                if 2 * (filled[0] + 1) > keys.shape[0]:
                    return line_start  # grow first
                used_by[slot] = True
                keys[slot] = gid
                mtime[slot] = _NO_MTIME
                filled[0] += 1
            last_gid = gid
            last_slot = slot
        entries[slot] += 1
        if nlink != 0:
            if nlink > 0:
                used[slot] += size // nlink
            elif size < 0:  # a link count past 2**63 (wrapped): the floor of size/nlink
                used[slot] -= 1
        if when <= reference_time and when > mtime[slot]:
            mtime[slot] = when
        progress[0] += 1
    return pos


@njit(nogil=True, cache=_CACHE)
def _merge_into(keys, used_by, used, mtime, entries, filled, o_keys, o_used_by, o_used, o_mtime, o_entries):
    """Add the slots of the second table into the first (which has room for them all)."""
    for j in range(o_keys.shape[0]):
        if not o_used_by[j]:
            continue
        i = _slot(keys, used_by, o_keys[j])
        if not used_by[i]:
            used_by[i] = True
            keys[i] = o_keys[j]
            mtime[i] = _NO_MTIME
            filled[0] += 1
        used[i] += o_used[j]
        entries[i] += o_entries[j]
        if o_mtime[j] > mtime[i]:
            mtime[i] = o_mtime[j]


class GidTable:
    """Totals per gid (used bytes, newest mtime, entries) in numpy arrays, for the scan."""

    def __init__(self, capacity: int = 1024):
        self.keys = np.zeros(capacity, dtype=np.int64)
        self.used_by = np.zeros(capacity, dtype=np.bool_)
        self.used = np.zeros(capacity, dtype=np.int64)
        self.mtime = np.zeros(capacity, dtype=np.int64)
        self.entries = np.zeros(capacity, dtype=np.int64)
        self.filled = np.zeros(1, dtype=np.int64)  # slots in use (an array: the scan adds to it)

    @property
    def _arrays(self) -> tuple:
        return self.keys, self.used_by, self.used, self.mtime, self.entries

    def grow(self, needed: int = 0) -> None:
        """Double the table (at least to hold ``needed`` more gids), keeping its totals."""
        capacity = self.keys.shape[0] * 2
        while 2 * (int(self.filled[0]) + needed) > capacity:
            capacity *= 2
        old = self._arrays
        bigger = GidTable(capacity)
        _merge_into(*bigger._arrays, bigger.filled, *old)
        self.keys, self.used_by, self.used, self.mtime, self.entries = bigger._arrays  # the same gids

    def merge(self, other: GidTable) -> None:
        if 2 * (int(self.filled[0]) + int(other.filled[0])) > self.keys.shape[0]:
            self.grow(int(other.filled[0]))
        _merge_into(*self._arrays, self.filled, *other._arrays)

    def totals(self) -> dict[int, tuple[int, int | None, int]]:
        """``{gid: (used, newest mtime or None, entries)}``."""
        out = {}
        for i in np.flatnonzero(self.used_by):
            when = int(self.mtime[i])
            out[int(self.keys[i])] = (int(self.used[i]), None if when == _NO_MTIME else when, int(self.entries[i]))
        return out


@dataclass
class BlockScan:
    """What one block's scan found: its lines, bad-line counts, and the first bad lines
    (index in the block, kind)."""

    lines: int
    counts: np.ndarray
    first_bad: list[tuple[int, str]]


class ReportScanner:
    """Scans the blocks of one file into a :class:`GidTable` per calling thread (blocks
    are scanned in parallel); :meth:`totals` merges them at the end."""

    def __init__(self, fmt: DumpFormat, reference_time: int, check_all: bool, keep_bad: int):
        if fmt.encoding not in ENCODINGS:
            raise ValueError(f"the compiled scan does not read {fmt.encoding} paths")  # pragma: no cover
        self.twelve = fmt.columns == 12
        self.check_all = check_all
        self.encoding = ENCODINGS.index(fmt.encoding)
        self.reference_time = np.int64(reference_time)
        self.keep_bad = keep_bad
        self._tables: dict[int, GidTable] = {}

    def scan(self, data: bytes | memoryview, table_key: int) -> BlockScan:
        """Scan one block of whole lines into the table of ``table_key`` (one per thread)."""
        table = self._tables.get(table_key)
        if table is None:
            table = self._tables[table_key] = GidTable()
        buf = np.frombuffer(data, dtype=np.uint8)
        if len(buf) == 0 or buf[-1] != 10:  # every loop of the scan stops at a newline
            raise ValueError("a block to scan must end with a newline")
        if not buf.flags.writeable:  # (bytes, not a reader's buffer: one compiled variant)
            buf = buf.copy()
        counts = np.zeros(len(KINDS), dtype=np.int64)
        bad_at = np.zeros(self.keep_bad, dtype=np.int64)
        bad_kind = np.zeros(self.keep_bad, dtype=np.int8)
        progress = np.zeros(2, dtype=np.int64)  # lines, bad lines kept
        pos = 0
        while pos < len(buf):
            pos = scan_block(buf, pos, self.twelve, self.check_all, self.encoding, self.reference_time, B64_VALUES,
                             PLAIN_BYTES, SIMPLE_ESCAPES, TYPE_BYTES, *table._arrays, table.filled, progress, bad_at,
                             bad_kind, counts)  # fmt: skip
            if pos < len(buf):
                table.grow()
        first = [(int(bad_at[i]), KINDS[bad_kind[i]]) for i in range(int(progress[1]))]
        return BlockScan(int(progress[0]), counts, first)

    def totals(self) -> dict[int, tuple[int, int | None, int]]:
        merged = GidTable()
        for table in self._tables.values():
            merged.merge(table)
        return merged.totals()


def scan_report(
    path: str | Path,
    fmt: DumpFormat,
    bad: BadLines,
    reference_time: int,
    *,
    check_all: bool = True,
    cancel: threading.Event | None = None,
    on_block: Callable[[FileProgress], None] | None = None,
    block_size: int = dump.BLOCK_SIZE,
) -> tuple[dict[int, tuple[int, int | None, int]], int]:
    """``({gid: (used, newest mtime, entries)}, good lines)`` of one dump in a base64
    format; its bad lines go to ``bad`` with their line numbers, as the general reader's."""
    name = str(path)
    scanner = ReportScanner(fmt, reference_time, check_all, dump.KEEP_BAD_LINES)
    progress = FileProgress(name, compressed_size=os.path.getsize(path))

    def work(block: Block) -> BlockScan:
        try:
            return scanner.scan(block.data, threading.get_ident())
        finally:
            block.done()

    line = 1
    good = 0
    for block, found in dump.parsed_blocks(path, work, cancel=cancel, block_size=block_size):
        counts = dict(zip(KINDS, found.counts.tolist(), strict=True))
        bad.merge(BadLines(counts, [(name, line + index, kind) for index, kind in found.first_bad]))
        good += found.lines - int(found.counts.sum())
        line += found.lines
        progress.lines = line - 1
        progress.compressed_done = block.compressed_done
        if on_block is not None:
            on_block(progress)
    return scanner.totals(), good


def warm_up() -> None:
    """Compile the scan now (or load it from numba's cache), not at the first report:
    an image build runs this so that its agents start with the scan compiled."""
    fmt = DumpFormat(BASE64, 11)
    ReportScanner(fmt, 0, True, 1).scan(b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9\n", 0)
    GidTable().merge(GidTable())
