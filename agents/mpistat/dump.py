"""Reading mpistat and wrstat dumps: streaming, columnar, in bounded memory.

A dump is one line per filesystem entry, tab-separated, no header (see the docs page):

====  ==========================================================================
 1    the path: standard base64 (mpistat, wrstat < 5.1), wrstat's lexically ordered
      base64 alphabet ``+/0-9A-Za-z`` (wrstat 5.1), or Go ``%q`` quoted (wrstat >= 5.2)
 2    size in bytes (mpistat caps it at ``st_blocks*512``)
 3-4  uid, gid
 5-7  atime, mtime, ctime (epoch seconds)
 8    type: ``f d l s b c F X``
 9-11 inode, nlink, st_dev
 12   apparent size (wrstat >= 6.4 only)
====  ==========================================================================

The path encoding and the column count are detected per file from its first lines. The
file (gzip, possibly several concatenated members, or plain text) is decompressed in a
background thread (python-isal when installed, else zlib) straight into a few reused
buffers of whole lines (:func:`iter_blocks`), and each block is parsed and checked by
polars in one of :data:`PARSE_WORKERS` threads (see :class:`BlockParser`); the group
report checks blocks with its compiled scan instead (:mod:`.compiled`), by the same rules.
A malformed line (wrong column count, undecodable path, non-integer numeric field,
unknown type) is counted by kind, its line number kept (the first
:data:`KEEP_BAD_LINES`), and skipped.

Memory is bounded by the block size times the blocks in flight (:data:`BUFFERS`), and a
line longer than :data:`MAX_LINE` is skipped unread, whatever the file.
"""

from __future__ import annotations

import binascii
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import polars as pl

try:  # python-isal: the same API as gzip, 2-3x faster inflate
    from isal.igzip import IGzipFile as GzipFile
    from isal.igzip_lib import IsalError as GzipError

    INFLATE = "isal"
except ImportError:  # pragma: no cover - isal is optional
    from gzip import GzipFile
    from zlib import error as GzipError

    INFLATE = "zlib"

#: Bytes of decompressed text per parsed block (whole lines).
BLOCK_SIZE = 4 << 20
#: Blocks decompressed ahead of the parser.
QUEUE_DEPTH = 2
#: Blocks parsed at once (each by its own thread).
PARSE_WORKERS = 2
#: Bytes read per call by format detection.
READ_SIZE = 256 << 10
#: Block buffers reused by the reader: enough for every block in flight (the queues and
#: the parse workers) and one being filled; fewer only makes the reader wait.
BUFFERS = 2 * QUEUE_DEPTH + PARSE_WORKERS + 3
#: A longer line is malformed (a wrong column count) and skipped unread: no dump line
#: comes near it (a 4,096-byte path is 16 KiB Go-quoted).
MAX_LINE = 1 << 20
#: Malformed lines whose number and kind are kept (all are counted).
KEEP_BAD_LINES = 20

BASE64 = "base64"
BASE64_LEXICAL = "base64-lexical"
QUOTED = "quoted"
ENCODINGS = (BASE64, BASE64_LEXICAL, QUOTED)

STD_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
LEXICAL_ALPHABET = b"+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_LEX_TO_STD = bytes.maketrans(LEXICAL_ALPHABET, STD_ALPHABET)
_STD_TO_LEX = bytes.maketrans(STD_ALPHABET, LEXICAL_ALPHABET)

#: Entry types the crawlers write.
TYPES = ("f", "d", "l", "s", "b", "c", "F", "X")

BASE_COLUMNS = ("path", "size", "uid", "gid", "atime", "mtime", "ctime", "type", "inode", "nlink", "dev")
APPARENT = "apparent_size"
_SIGNED = ("size", "uid", "gid", "atime", "mtime", "ctime", APPARENT)
_UNSIGNED = ("inode", "nlink", "dev")

# Kinds of malformed line.
WRONG_COLUMNS = "wrong column count"
BAD_PATH = "undecodable path"
NOT_INTEGER = "non-integer numeric field"
BAD_TYPE = "unknown entry type"
KINDS = (WRONG_COLUMNS, BAD_PATH, NOT_INTEGER, BAD_TYPE)

# One valid encoded path, whole field. Base64 (either alphabet: same characters) with its
# padding, at least one group; Go %q: a double-quoted string with Go's escapes.
_B64_RE = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$"
_QUOTED_RE = (
    r'^"(?:[^"\\\x00-\x1f\x7f]|\\[abfnrtv\\"]|\\x[0-9a-fA-F]{2}|\\[0-7]{3}|\\u[0-9a-fA-F]{4}'
    r'|\\U[0-9a-fA-F]{8})*"$'
)
_B64_BYTES = re.compile(_B64_RE.encode())
_QUOTED_BYTES = re.compile(_QUOTED_RE.encode())


@dataclass(frozen=True)
class DumpFormat:
    """How one file's lines are written."""

    encoding: str
    columns: int

    @property
    def names(self) -> tuple[str, ...]:
        return BASE_COLUMNS + ((APPARENT,) if self.columns == 12 else ())

    @property
    def schema(self) -> dict[str, type[pl.DataType]]:
        out: dict[str, type[pl.DataType]] = {}
        for name in self.names:
            out[name] = pl.String if name in ("path", "type") else pl.UInt64 if name in _UNSIGNED else pl.Int64
        return out

    def describe(self) -> str:
        return f"{self.columns} columns, paths {self.encoding}"


@dataclass
class BadLines:
    """The malformed-line accounting of one file (or several, merged)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    #: ``(file, line number, kind)`` of the first :data:`KEEP_BAD_LINES`
    first: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, file: str, line: int, kind: str) -> None:
        self.counts[kind] += 1
        if len(self.first) < KEEP_BAD_LINES:
            self.first.append((file, line, kind))

    def merge(self, other: BadLines) -> None:
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        room = KEEP_BAD_LINES - len(self.first)
        self.first.extend(other.first[:room])

    def summary(self) -> dict:
        return {
            "total": self.total,
            **{kind.replace(" ", "_").replace("-", "_"): n for kind, n in self.counts.items()},
            "first": [f"{Path(f).name}:{n}: {kind}" for f, n, kind in self.first],
        }


class DumpError(OSError):
    """A dump cannot be read at all: missing, not gzip, truncated, or no line in a known
    format (an OSError, like gzip's ``BadGzipFile``; the message names the file)."""


# -- paths ------------------------------------------------------------------------------


_INTEGER_BYTES = re.compile(rb" *([+-]?)([0-9]+)\Z")
#: A stand-in for a field a job does not read, in a line that is not UTF-8 (so that it
#: parses when only such a field is not UTF-8).
_PLACEHOLDER = {"path": b"AAAA", "type": b"f"}


def _as_read(value: bytes) -> bytes:
    """A field as polars reads it: one ``\\r`` at its end dropped (a CRLF dump)."""
    return value[:-1] if value.endswith(b"\r") else value


def integer_ok(value: bytes, signed: bool) -> bool:
    """Whether a numeric field reads as an integer, by the rule polars applies: spaces,
    one ``+`` (``-`` only if ``signed``), digits, in 64 bits (signed or unsigned)."""
    match = _INTEGER_BYTES.match(_as_read(value))
    if match is None:
        return False
    number = int(match[2])
    if match[1] == b"-":
        return signed and number <= 2**63
    return number <= (2**63 - 1 if signed else 2**64 - 1)


def path_ok(value: bytes, encoding: str) -> bool:
    """Whether a path field is valid in ``encoding``, as the reader checks it (standard
    base64 as polars decodes it: no stray low bits in the last character)."""
    value = _as_read(value)
    if encoding == QUOTED:
        try:
            return bool(re.match(_QUOTED_RE, value.decode("utf-8")))
        except UnicodeDecodeError:
            return False
    if not _B64_BYTES.match(value):
        return False
    if encoding == BASE64 and value.endswith(b"="):
        last = STD_ALPHABET.index(value.rstrip(b"=")[-1:])
        return not last & (15 if value.endswith(b"==") else 3)
    return True


def classify(fields: list[bytes], fmt: DumpFormat, columns: tuple[str, ...]) -> str | None:
    """The kind of a line's fault (its ``columns`` checked, in the reader's order: path,
    numbers, type), or None; the line has the format's column count."""
    values = dict(zip(fmt.names, fields, strict=True))
    if "path" in columns and not path_ok(values["path"], fmt.encoding):
        return BAD_PATH
    for name in columns:
        if name not in ("path", "type") and not integer_ok(values[name], name not in _UNSIGNED):
            return NOT_INTEGER
    if "type" in columns and _as_read(values["type"]).decode("latin-1") not in TYPES:
        return BAD_TYPE
    return None


def decode_path(field_value: bytes | str, encoding: str) -> bytes:
    """The raw path bytes of one encoded path field; ValueError if it is not decodable."""
    raw = field_value.encode("utf-8", "surrogateescape") if isinstance(field_value, str) else field_value
    if encoding == QUOTED:
        if not _QUOTED_BYTES.match(raw):
            raise ValueError("not a Go-quoted string")
        return _unquote_go(raw[1:-1])
    if not _B64_BYTES.match(raw):
        raise ValueError("not base64")
    if encoding == BASE64_LEXICAL:
        raw = raw.translate(_LEX_TO_STD)
    return binascii.a2b_base64(raw)


def encode_path(path: bytes, encoding: str) -> str:
    """``path`` as a dump writes it (the inverse of :func:`decode_path`)."""
    if encoding == QUOTED:
        return quote_go(path)
    text = binascii.b2a_base64(path, newline=False)
    if encoding == BASE64_LEXICAL:
        text = text.translate(_STD_TO_LEX)
    return text.decode("ascii")


_GO_SIMPLE = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 92: "\\\\", 34: '\\"'}


def quote_go(path: bytes) -> str:
    """Go's ``strconv.Quote`` of a byte string: printable UTF-8 kept, the rest escaped."""
    out = ['"']
    i = 0
    while i < len(path):
        b = path[i]
        if b < 0x80:
            if b in _GO_SIMPLE:
                out.append(_GO_SIMPLE[b])
            elif b < 0x20 or b == 0x7F:
                out.append(f"\\x{b:02x}")
            else:
                out.append(chr(b))
            i += 1
            continue
        size = 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 0
        try:
            char = path[i : i + size].decode("utf-8") if size else None
        except UnicodeDecodeError:
            char = None
        if char is None or len(char) != 1:
            out.append(f"\\x{b:02x}")
            i += 1
            continue
        code = ord(char)
        if char.isprintable():
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
        i += size
    out.append('"')
    return "".join(out)


_UNESCAPE = {ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11,
             ord("\\"): 92, ord('"'): 34}  # fmt: skip


def _unquote_go(body: bytes) -> bytes:
    if b"\\" not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        b = body[i]
        if b != 0x5C:
            out.append(b)
            i += 1
            continue
        kind = body[i + 1]
        if kind in _UNESCAPE:
            out.append(_UNESCAPE[kind])
            i += 2
        elif kind == ord("x"):
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif kind in b"01234567":
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:  # \u or \U: a code point, written as UTF-8
            width = 4 if kind == ord("u") else 8
            out += chr(int(body[i + 2 : i + 2 + width], 16)).encode("utf-8", "surrogatepass")
            i += 2 + width
    return bytes(out)


def decode_paths(series: pl.Series, encoding: str) -> list[bytes]:
    """Raw path bytes of a column of valid encoded paths."""
    if encoding == BASE64:
        return series.str.decode("base64").to_list()
    return [decode_path(v, encoding) for v in series.to_list()]


# -- detection --------------------------------------------------------------------------


def detect_format(lines: list[bytes], name: str = "dump") -> DumpFormat:
    """The format of a file from its first lines: the most common column count among 11
    and 12, and the path encoding whose decoding of those lines gives absolute paths."""
    candidates = [line.rstrip(b"\r") for line in lines if line.strip()]
    if not candidates:
        raise DumpError(f"{name} holds no line to read")
    widths = [line.count(b"\t") + 1 for line in candidates]
    columns = max((11, 12), key=widths.count)
    if widths.count(columns) == 0:
        raise DumpError(
            f"{name}: no line in its first {len(candidates)} has 11 or 12 tab-separated columns "
            f"(the first has {widths[0]}); is it an mpistat/wrstat dump?"
        )
    paths = [line.split(b"\t", 1)[0] for line, w in zip(candidates, widths, strict=True) if w == columns]
    scores = {}
    for encoding in (QUOTED, BASE64, BASE64_LEXICAL):
        good = 0
        for value in paths:
            try:
                good += decode_path(value, encoding).startswith(b"/")
            except ValueError:
                pass
        scores[encoding] = good
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        raise DumpError(f"{name}: the path column is neither base64 nor Go-quoted in any of its first lines")
    return DumpFormat(best, columns)


# -- decompression ----------------------------------------------------------------------


def open_compressed(path: str | Path) -> tuple[object, int, bool]:
    """``(file, size, gzipped)``; DumpError naming the file if it cannot be read."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - handed to the reader thread, closed there
        size = os.fstat(handle.fileno()).st_size
        gzipped = handle.read(2) == b"\x1f\x8b"
        handle.seek(0)
    except FileNotFoundError:
        raise DumpError(f"dump {path} does not exist") from None
    except IsADirectoryError:
        raise DumpError(f"dump {path} is a directory, not a file") from None
    except OSError as exc:
        raise DumpError(f"dump {path} cannot be read: {exc.strerror or exc}") from None
    return handle, size, gzipped


@dataclass
class Block:
    """Whole lines of one file (the reader numbers them as it goes). ``data`` may be a
    view of a reused buffer: whoever is done with it calls :meth:`done` (once the bytes
    are copied or scanned), and must not read it after."""

    data: bytes | memoryview
    compressed_done: int
    first_line: int = 0
    release: Callable[[], None] | None = None

    def done(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()

    def as_bytes(self) -> bytes:
        """``data`` as bytes of its own (copied once); the buffer is then released."""
        if not isinstance(self.data, bytes):
            self.data = bytes(self.data)
            self.done()
        return self.data


def threaded(produce: Callable[[threading.Event], Iterator], cancel: threading.Event | None = None,
             depth: int = QUEUE_DEPTH, name: str = "mpistat-reader") -> Iterator:  # fmt: skip
    """The items of ``produce(stop)``, made by a background thread at most ``depth`` ahead.

    Its exceptions are raised here; closing the iterator (or ``cancel``) stops it."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        items = None
        try:
            items = produce(stop)  # (in the try: its own error must reach the consumer too)
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            if cancel is not None and cancel.is_set():
                return
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def open_text(path: str | Path) -> tuple[object, object]:
    """``(reader, file)``: ``reader.readinto`` gives the decompressed text of ``path`` (of
    every concatenated gzip member; plain text as is), ``file.tell()`` how far into the
    compressed file it has read."""
    handle, _size, gzipped = open_compressed(path)
    if not gzipped:
        return handle, handle
    return GzipFile(fileobj=handle, mode="rb"), handle


def _read_into(reader, view: memoryview, path: str | Path, handle) -> int:
    """``reader.readinto(view)``, with gzip's errors as :class:`DumpError`."""
    try:
        return reader.readinto(view)
    except EOFError:
        raise DumpError(f"dump {path} ends in the middle of a gzip stream (truncated?)") from None
    except (OSError, GzipError) as exc:  # BadGzipFile is an OSError
        raise DumpError(f"dump {path} is not valid gzip near byte {handle.tell()}: {exc}") from None


def _take(free: queue.Queue, stop: threading.Event) -> bytearray | None:
    while not stop.is_set():
        try:
            return free.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def _fill_blocks(path: str | Path, block_size: int, stop: threading.Event) -> Iterator[Block]:
    """Blocks of whole lines, each read straight into one of :data:`BUFFERS` reused
    buffers (no copy, no fresh memory per block); a block's :meth:`Block.done` hands its
    buffer back. Only the partial last line is copied, to the next buffer's start. A line
    longer than a buffer gets a bigger buffer of its own, up to :data:`MAX_LINE`; a
    longer one is skipped unread and stands as one blank line (a wrong column count)."""
    free: queue.Queue = queue.Queue()
    for _ in range(BUFFERS):
        free.put(bytearray(block_size + 1))  # + 1: room for a missing last newline
    reader, handle = open_text(path)
    with reader, handle:
        rest = b""
        eof = False
        while not eof:
            buf = pooled = _take(free, stop)
            if buf is None:
                return
            if len(rest) + 1 >= len(buf):
                buf = bytearray(2 * len(rest) + 1)
            filled = len(rest)
            buf[:filled] = rest
            while True:
                limit = len(buf) - 1
                while filled < limit and not eof:
                    n = _read_into(reader, memoryview(buf)[filled:limit], path, handle)
                    eof = n == 0
                    filled += n
                cut = buf.rfind(b"\n", 0, filled) + 1
                if cut or eof or filled >= MAX_LINE:
                    break
                buf = buf + bytes(len(buf))  # one line fills the buffer: a bigger one
            if cut == 0 and not eof:  # a line past MAX_LINE: skipped to its end
                rest, eof = _skip_line(reader, buf, path, handle)
                free.put(pooled)
                yield Block(memoryview(bytearray(b"\n")), handle.tell())
                continue
            if eof:
                if filled == 0:
                    free.put(pooled)
                    return
                if buf[filled - 1] != 10:
                    buf[filled] = 10
                    filled += 1
                cut = filled
            rest = bytes(buf[cut:filled])
            if buf is not pooled:  # a bigger buffer of its own: the pooled one is free again
                free.put(pooled)
            release = partial(free.put, pooled) if buf is pooled else None
            yield Block(memoryview(buf)[:cut], handle.tell(), release=release)


def _skip_line(reader, buf: bytearray, path: str | Path, handle) -> tuple[bytes, bool]:
    """Read on past the next newline; ``(what follows it in the last read, at the end)``."""
    view = memoryview(buf)
    while True:
        n = _read_into(reader, view, path, handle)
        if n == 0:
            return b"", True
        at = buf.find(b"\n", 0, n)
        if at >= 0:
            return bytes(buf[at + 1 : n]), False


def iter_blocks(
    path: str | Path, *, block_size: int = BLOCK_SIZE, cancel: threading.Event | None = None
) -> Iterator[Block]:
    """Blocks of whole lines (see :func:`_fill_blocks`), decompressed by a background
    thread at most :data:`QUEUE_DEPTH` blocks ahead. The last line gets a newline if it
    had none. Call each block's :meth:`Block.done` when done with its data: the reader
    waits for a free buffer once :data:`BUFFERS` blocks are held."""
    return threaded(lambda stop: _fill_blocks(path, block_size, stop), cancel, name="mpistat-inflate")


def head_lines(path: str | Path, n: int = 200) -> list[bytes]:
    """The first ``n`` lines of a dump (for format detection; at most 4 MiB read)."""
    buf = bytearray(4 << 20)
    filled = 0
    reader, handle = open_text(path)
    with reader, handle:
        while filled < len(buf) and buf.count(b"\n", 0, filled) < n:
            got = _read_into(reader, memoryview(buf)[filled : filled + READ_SIZE], path, handle)
            if not got:
                break
            filled += got
    lines = bytes(buf[:filled]).split(b"\n")[:n]
    return [line for line in lines if line]


# -- parsing ----------------------------------------------------------------------------


def _read_columns(data: bytes, fmt: DumpFormat, extra: bool = False, fields: list[str] | None = None) -> pl.DataFrame:
    """Parse whole lines into columns (polars' CSV reader on the bytes); ``extra`` adds a
    column that is set only on lines with too many fields; ``fields`` projects (columns
    not asked for are not parsed)."""
    schema = {**fmt.schema, **({"_extra": pl.String} if extra else {})}
    frame = pl.scan_csv(
        data,
        separator="\t",
        has_header=False,
        schema=schema,
        quote_char=None,
        ignore_errors=True,
        truncate_ragged_lines=True,
        missing_columns="insert",
    )
    return (frame.select(fields) if fields else frame).collect()


def _path_ok(fmt: DumpFormat) -> pl.Expr:
    path = pl.col("path")
    if fmt.encoding == QUOTED:
        return path.str.contains(_QUOTED_RE)
    if fmt.encoding == BASE64:
        # polars' decoder (the cheapest exact check) also refuses a last character with
        # stray low bits, which no encoder writes: such a path counts as undecodable
        return path.str.decode("base64", strict=False).is_not_null() & (path.str.len_bytes() > 0)
    # valid padded base64 in the lexical alphabet (same characters): as _B64_RE, cheaper
    return path.str.contains(r"(?-u)^[A-Za-z0-9+/]+={0,2}$") & (path.str.len_bytes() % 4 == 0)


def _problems(fmt: DumpFormat, columns: tuple[str, ...] | None = None) -> list[tuple[str, pl.Expr]]:
    """The checks of each kind over ``columns`` (default: every column of the format)."""
    columns = columns or fmt.names
    numeric = [pl.col(c).is_null() for c in columns if c not in ("path", "type")]
    out = []
    if "path" in columns:
        out.append((BAD_PATH, pl.col("path").is_null() | ~_path_ok(fmt).fill_null(False)))
    out.append((NOT_INTEGER, pl.any_horizontal(numeric) if numeric else pl.lit(False)))
    if "type" in columns:
        out.append((BAD_TYPE, ~pl.col("type").is_in(TYPES).fill_null(False)))
    return out


#: ``validate`` values: check every field of every line, or only the fields a job reads
#: (plus the column count, always).
VALIDATE = ("all", "used")


class BlockParser:
    """Parses blocks of one file into columns, accounting for malformed lines.

    :meth:`read` runs in the reader's parse thread. It first tries the *clean* path, one
    polars query per block that parses and checks at once: the numeric fields strictly
    (a value that is not an integer fails the query), the type as an enum of
    :data:`TYPES` (an unknown letter fails it), one column more than the format has (set
    only on a line with too many fields), and a ``_bad`` flag for a missing field, an
    empty or undecodable path or that extra field; it hands back only the ``keep``
    columns, so the others are dropped as they are parsed. A block that fails the query
    or has a flagged row takes the *tolerant* path: parsed again with every bad value
    read as null, then :meth:`finish` (in the consumer) flags the rows, splits the block
    into lines and classifies each flagged row exactly; a block that is not UTF-8 is
    checked line by line. Both paths check the same things, so a block has the same
    good rows and bad lines whichever path it takes; the tolerant one only costs more.

    With ``fields`` (``validate="used"``) only those columns, the last one (a short line
    leaves it empty) and the extra one are parsed and checked: a bad value in a field the
    job does not read is then not noticed, as in lurge, and the parse costs less.
    """

    def __init__(
        self,
        name: str,
        fmt: DumpFormat,
        bad: BadLines,
        fields: tuple[str, ...] | None = None,
        keep: tuple[str, ...] | None = None,
    ):
        self.name = name
        self.fmt = fmt
        self.bad = bad
        self._tabs = fmt.columns - 1
        if fields is None:
            self.columns = fmt.names
        else:
            wanted = set(fields) | {fmt.names[-1]}
            self.columns = tuple(c for c in fmt.names if c in wanted)
        #: the columns handed to the consumer (default: every column checked)
        self.keep = tuple(c for c in self.columns if c in keep) if keep else self.columns
        problems = _problems(fmt, self.columns)
        self._kind_names = [kind for kind, _ in problems]
        self._check = (pl.any_horizontal([expr for _, expr in problems]) | pl.col("_extra").is_not_null()).alias("_bad")
        self._kinds = [expr.alias(kind) for kind, expr in problems]
        self._fields = None if fields is None else [*self.columns, "_extra"]
        # the clean path: numbers parsed strictly, the type as an enum (both fail the
        # query on a bad value), so only missing fields, the path and the extra field
        # are left to flag
        self._clean_schema = {**fmt.schema, "type": pl.Enum(TYPES), "_extra": pl.String}
        flags = [pl.col(c).is_null() for c in self.columns] + [pl.col("_extra").is_not_null()]
        if "path" in self.columns:
            flags.append(~_path_ok(fmt))
        self._clean_select = [pl.col(c).cast(pl.String) if c == "type" else pl.col(c) for c in self.keep]
        self._clean_select.append(pl.any_horizontal(flags).fill_null(True).alias("_bad"))

    def _read_clean(self, data: bytes) -> pl.DataFrame | None:
        """The good rows of a block with no bad line in the checked columns, else None."""
        frame = pl.scan_csv(data, separator="\t", has_header=False, schema=self._clean_schema, quote_char=None,
                            truncate_ragged_lines=True, missing_columns="insert")  # fmt: skip
        try:
            df = frame.select(self._clean_select).collect()
        except pl.exceptions.PolarsError:  # a bad value or not UTF-8: the tolerant path says which
            return None
        if df.height == 0 or df["_bad"].any():
            return None
        return df.drop("_bad")

    def read(self, block: Block) -> tuple[bool, pl.DataFrame | None]:
        """``(True, good rows)`` for a clean block, else ``(False, columns read
        tolerantly)`` (``None`` if the block is not UTF-8) for :meth:`finish`."""
        clean = self._read_clean(block.as_bytes())
        if clean is not None:
            return True, clean
        try:
            return False, _read_columns(block.data, self.fmt, extra=True, fields=self._fields)
        except pl.exceptions.ComputeError:  # not UTF-8 somewhere: line by line in finish()
            return False, None

    def finish(
        self, block: Block, parsed: tuple[bool, pl.DataFrame | None], want_lines: bool
    ) -> tuple[pl.DataFrame, list[bytes], int]:
        """``(good rows, their raw lines if wanted, lines in the block)``; bad lines are
        recorded with their numbers (``block.first_line`` is the block's first)."""
        clean, df = parsed
        if clean:
            return df, (block.data.split(b"\n")[:-1] if want_lines else []), df.height
        good, kept, count = self._finish_tolerant(block, df, want_lines)
        return (good if good.columns == list(self.keep) else good.select(self.keep)), kept, count

    def _finish_tolerant(
        self, block: Block, df: pl.DataFrame | None, want_lines: bool
    ) -> tuple[pl.DataFrame, list[bytes], int]:
        if df is not None:
            flags = df.select(self._check).to_series()
            if not flags.any():
                good = df.drop("_extra")
                return good, (block.data.split(b"\n")[:-1] if want_lines else []), good.height
            lines = block.data.split(b"\n")[:-1]
            if len(lines) == df.height:
                numbers = range(block.first_line, block.first_line + len(lines))
                good, kept = self._drop_flagged(df.drop("_extra"), flags, lines, numbers, want_lines, [])
                return good, kept, len(lines)
        return self._line_by_line(block, want_lines)

    def _line_by_line(self, block: Block, want_lines: bool) -> tuple[pl.DataFrame, list[bytes], int]:
        lines = block.data.split(b"\n")[:-1]
        keep: list[bytes] = []  # the good-looking lines, as parsed
        raw: list[bytes] = []  # and as written
        numbers: list[int] = []
        found: list[tuple[int, str]] = []
        for offset, line in enumerate(lines):
            number = block.first_line + offset
            if line.count(b"\t") != self._tabs:
                found.append((number, WRONG_COLUMNS))
                continue
            parsed = line
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                # polars cannot read it: a field the job does not check gets a stand-in;
                # if the line is still not UTF-8, it is bad, and its kind is found here
                fields = line.split(b"\t")
                parsed = b"\t".join(value if name in self.columns else _PLACEHOLDER.get(name, b"0")
                                     for name, value in zip(self.fmt.names, fields, strict=True))  # fmt: skip
                try:
                    parsed.decode("utf-8")
                except UnicodeDecodeError:
                    found.append((number, classify(fields, self.fmt, self.columns) or BAD_PATH))
                    continue
            keep.append(parsed)
            raw.append(line)
            numbers.append(number)
        if not keep:
            self._record(found)
            return pl.DataFrame(schema={c: self.fmt.schema[c] for c in self.columns}), [], len(lines)
        df = _read_columns(b"\n".join(keep) + b"\n", self.fmt, fields=list(self.columns))
        flags = df.select(pl.any_horizontal([expr for _, expr in _problems(self.fmt, self.columns)])).to_series()
        if not flags.any():
            self._record(found)
            return df, raw if want_lines else [], len(lines)
        good, kept = self._drop_flagged(df, flags, raw, numbers, want_lines, found)
        return good, kept, len(lines)

    def _record(self, found: list[tuple[int, str]]) -> None:
        for number, kind in sorted(found):
            self.bad.add(self.name, number, kind)

    def _drop_flagged(self, df, flags, lines, numbers, want_lines, found):
        kinds = df.filter(flags).select(self._kinds)
        positions = flags.arg_true().to_list()
        for position, row in zip(positions, kinds.iter_rows(), strict=True):
            if lines[position].count(b"\t") != self._tabs:
                kind = WRONG_COLUMNS
            else:
                kind = next(k for k, hit in zip(self._kind_names, row, strict=True) if hit)
            found.append((numbers[position], kind))
        self._record(found)
        good = df.filter(~flags)
        if not want_lines:
            return good, []
        flagged = set(positions)
        return good, [line for i, line in enumerate(lines) if i not in flagged]


@dataclass
class FileProgress:
    """What a reader reports while it works (for session.data)."""

    file: str
    lines: int = 0
    compressed_done: int = 0
    compressed_size: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.lines / elapsed if elapsed > 0 else 0.0


def parsed_blocks(
    path: str | Path,
    work: Callable[[Block], object],
    *,
    cancel: threading.Event | None = None,
    block_size: int = BLOCK_SIZE,
) -> Iterator[tuple[Block, object]]:
    """``(block, work(block))`` for every block of ``path``, in order: one thread inflates,
    :data:`PARSE_WORKERS` threads run ``work`` (which must release the GIL to gain, and
    should call ``block.done()`` once it has read the data), and the caller gets the
    results here, at most a few blocks behind the inflater; each block is released
    here at the latest."""

    def parsed(stop: threading.Event):
        with ThreadPoolExecutor(PARSE_WORKERS, thread_name_prefix="mpistat-parse") as pool:
            pending: deque = deque()
            for block in iter_blocks(path, block_size=block_size, cancel=stop):
                pending.append((block, pool.submit(work, block)))
                if len(pending) > PARSE_WORKERS:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()

    with closing(threaded(parsed, cancel, name="mpistat-parse")) as results:
        for block, result in results:
            yield block, result
            block.done()


def scan(
    path: str | Path,
    bad: BadLines,
    *,
    cancel: threading.Event | None = None,
    with_lines: bool = False,
    on_block: Callable[[FileProgress], None] | None = None,
    block_size: int = BLOCK_SIZE,
    fmt: DumpFormat | None = None,
    fields: tuple[str, ...] | None = None,
    keep: tuple[str, ...] | None = None,
) -> Iterator[tuple[DumpFormat, pl.DataFrame, list[bytes]]]:
    """Every good row of ``path``, block by block: ``(format, columns, raw lines)`` (raw
    lines only ``with_lines``). Malformed lines go to ``bad``. ``fields``: parse and check
    only these (see :class:`BlockParser`); default every field. ``keep``: the columns
    handed back (default: every column checked); the others are checked and dropped.

    One thread inflates, :data:`PARSE_WORKERS` threads parse and check blocks (polars
    releases the GIL; the blocks are handed on in order), and the caller's grouping runs
    here."""
    name = str(path)
    fmt = fmt or detect_format(head_lines(path), name)
    parser = BlockParser(name, fmt, bad, fields, keep)
    progress = FileProgress(name, compressed_size=os.path.getsize(path))
    line = 1
    for block, df in parsed_blocks(path, parser.read, cancel=cancel, block_size=block_size):
        block.first_line = line
        good, lines, count = parser.finish(block, df, with_lines)
        line += count
        progress.lines = line - 1
        progress.compressed_done = block.compressed_done
        yield fmt, good, lines
        if on_block is not None:
            on_block(progress)
