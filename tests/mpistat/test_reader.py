"""The streaming reader on dumps of a real tree, in every format, with known bad lines."""

from __future__ import annotations

import gzip

import pytest

from hpcsync.agents.mpistat import dump
from hpcsync.agents.mpistat.errors import DumpError
from hpcsync.agents.mpistat.report import aggregate_volume

from .conftest import NOW
from .dumps import FORMATS, expected_usage, write_dump

ENCODING = {"base64": dump.BASE64, "lexical": dump.BASE64_LEXICAL, "quoted": dump.QUOTED}


def read_all(path, bad, block_size=dump.BLOCK_SIZE):
    rows, paths, fmt = [], [], None
    for fmt, df, _ in dump.scan(path, bad, block_size=block_size):
        paths += dump.decode_paths(df["path"], fmt.encoding)
        rows += df.select("size", "gid", "mtime", "type", "nlink").iter_rows()
    return fmt, paths, rows


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("producer", sorted(FORMATS))
def test_every_format_reads_back_the_walk(tree, tmp_path, producer, gz):
    _, entries = tree
    encoding, columns, rule = FORMATS[producer]
    path = write_dump(entries, producer, tmp_path / "dump", gz=gz, mtime=NOW)
    bad = dump.BadLines()
    fmt, paths, rows = read_all(path, bad, block_size=512)  # many blocks: boundaries crossed
    assert fmt == dump.DumpFormat(ENCODING[encoding], columns)
    assert bad.total == 0
    # every hostile name comes back byte for byte: newline, tab, invalid UTF-8, quote, 255 bytes
    assert paths == [e.path for e in entries]
    assert any(b"\n" in p for p in paths) and any(b"\xff\xfe" in p for p in paths)
    assert any(len(p.rsplit(b"/", 1)[1]) == 255 for p in paths)
    sizes = {e.path: (min(e.st.st_size, e.st.st_blocks * 512) if rule == "capped" else e.st.st_size) for e in entries}
    assert [r[0] for r in rows] == [sizes[p] for p in paths]
    assert sorted({r[3] for r in rows}) == ["F", "d", "f", "l"]


KNOWN_BAD = {
    2: "only\tthree\tfields\n",  # wrong column count (short)
    4: "\n",  # a blank line: wrong column count
    7: "L2E=\t1\t2\t3\t4\t5\t6\tf\t7\t1\t9\t10\t11\t12\n",  # wrong column count (long)
    9: "!!notbase64\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9\n",  # undecodable path
    12: "L2E=\t1x\t0\t5001\t4\t5\t6\tf\t7\t1\t9\n",  # non-integer size
    15: "L2E=\t1\t0\t5001\t4\t5\t6\tQ\t7\t1\t9\n",  # unknown type
    20: "L2E=\t1\t0\t50\udcff01\t4\t5\t6\tf\t7\t1\t9\n",  # a non-UTF-8 byte in the gid
}


def test_malformed_lines_are_counted_by_kind_with_line_numbers_and_skipped(tree, tmp_path):
    _, entries = tree
    path = write_dump(entries, "mpistat", tmp_path / "bad.dat.gz", bad_lines=KNOWN_BAD, mtime=NOW)
    raw = gzip.decompress(path.read_bytes()).split(b"\n")
    assert raw[1] == b"only\tthree\tfields" and raw[19].startswith(b"L2E=\t1\t0\t50\xff")
    for block_size in (300, dump.BLOCK_SIZE):
        bad = dump.BadLines()
        usage = aggregate_volume(path, "scratch999", bad, reference_time=NOW, block_size=block_size)
        assert bad.counts == {dump.WRONG_COLUMNS: 3, dump.BAD_PATH: 1, dump.NOT_INTEGER: 2, dump.BAD_TYPE: 1}
        assert [(n, k) for _, n, k in bad.first] == [
            (2, dump.WRONG_COLUMNS), (4, dump.WRONG_COLUMNS), (7, dump.WRONG_COLUMNS), (9, dump.BAD_PATH),
            (12, dump.NOT_INTEGER), (15, dump.BAD_TYPE), (20, dump.NOT_INTEGER),
        ]  # fmt: skip
        got = {g: {"used": u.used, "mtime": u.mtime, "entries": u.entries} for g, u in usage.gids.items()}
        assert got == expected_usage(entries, "capped", NOW)
        assert usage.lines == len(entries)


def test_small_blocks_give_the_same_accounting(tree, tmp_path):
    _, entries = tree
    path = write_dump(entries * 5, "wrstat-5.2", tmp_path / "bad.gz", bad_lines={3: "x\n", 60: "\n", 100: "y\ty\n"})
    bad = dump.BadLines()
    _, paths, _ = read_all(path, bad, block_size=200)
    assert [(n, k) for _, n, k in bad.first] == [(3, dump.WRONG_COLUMNS), (60, dump.WRONG_COLUMNS),
                                                 (100, dump.WRONG_COLUMNS)]  # fmt: skip
    assert len(paths) == len(entries) * 5


def test_concatenated_gzip_members_are_one_dump(tree, tmp_path):
    _, entries = tree
    one = write_dump(entries[:10], "mpistat", tmp_path / "a.gz").read_bytes()
    two = write_dump(entries[10:], "mpistat", tmp_path / "b.gz").read_bytes()
    joined = tmp_path / "joined.gz"
    joined.write_bytes(one + two)
    bad = dump.BadLines()
    _, paths, _ = read_all(joined, bad)
    assert paths == [e.path for e in entries] and bad.total == 0


def test_unreadable_dumps_fail_with_one_line_naming_the_file(tree, tmp_path):
    _, entries = tree
    good = write_dump(entries, "mpistat", tmp_path / "good.gz").read_bytes()
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(good[: len(good) // 2])
    not_a_dump = tmp_path / "notes.gz"
    not_a_dump.write_bytes(gzip.compress(b"hello world\nsecond line\n"))
    cases = {tmp_path / "missing.gz": "does not exist", truncated: "truncated", not_a_dump: "11 or 12"}
    for path, words in cases.items():
        with pytest.raises(DumpError) as info:
            for _ in dump.scan(path, dump.BadLines()):
                pass
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message


def test_path_codecs_round_trip_go_quoting():
    for raw in (b"/a\nb\tc", b"/\xff\xfe", "/café/日本".encode(), b'/q"b\\s', b"/\x7f\x01"):
        for encoding in dump.ENCODINGS:
            assert dump.decode_path(dump.encode_path(raw, encoding), encoding) == raw
    assert dump.quote_go("/café".encode()) == '"/café"'  # printable UTF-8 kept, as Go does
    with pytest.raises(ValueError):
        dump.decode_path('"unterminated', dump.QUOTED)


def test_validate_used_checks_only_what_the_report_reads(tree, tmp_path):
    """lurge's way, opt-in: a bad path or type letter does not stop the report from
    counting a line whose size, gid, mtime and nlink are good; the column count and those
    four fields are still checked."""
    _, entries = tree
    path = write_dump(entries, "mpistat", tmp_path / "bad.dat.gz", bad_lines=KNOWN_BAD, mtime=NOW)
    for block_size in (300, dump.BLOCK_SIZE):
        bad = dump.BadLines()
        usage = aggregate_volume(path, "scratch999", bad, reference_time=NOW, block_size=block_size, validate="used")
        assert [(n, k) for _, n, k in bad.first] == [(2, dump.WRONG_COLUMNS), (4, dump.WRONG_COLUMNS),
                                                     (7, dump.WRONG_COLUMNS), (12, dump.NOT_INTEGER),
                                                     (20, dump.NOT_INTEGER)]  # fmt: skip
        expected = expected_usage(entries, "capped", NOW)
        expected[5001]["used"] += 2  # lines 9 and 15: size 1, nlink 1, gid 5001, mtime 5
        expected[5001]["entries"] += 2
        got = {g: {"used": u.used, "mtime": u.mtime, "entries": u.entries} for g, u in usage.gids.items()}
        assert got == expected


GOOD_LINE = b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9"
#: one bad line each: the kind the tolerant path gives it, and whether the report's
#: ``validate="used"`` sees it (a field it reads, the column count, or not UTF-8 at all)
EDGE_LINES = [
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t7\t1", dump.WRONG_COLUMNS, True),  # short: the last field missing
    (GOOD_LINE + b"\t12", dump.WRONG_COLUMNS, True),  # long
    (b"", dump.WRONG_COLUMNS, True),  # blank
    (b"!!!!\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),
    (b"L2F=\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),  # stray low bits in the last character
    (b"L2E\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),  # not a multiple of 4
    (b"\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),  # empty
    (b"L2\xffE=\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),  # not UTF-8 (not read: no matter)
    (b"L2E=\t1\tx\t5001\t4\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, False),  # uid
    (b"L2E=\t1\t0\t5001\t4.0\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, False),  # atime
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t-7\t1\t9", dump.NOT_INTEGER, False),  # a negative inode
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t99999999999999999999\t1\t9", dump.NOT_INTEGER, False),  # > 64 bits
    (b"L2E=\t1\t0\t5001\t\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, False),  # empty atime
    (b"L2E=\t1x\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, True),  # size
    (b"L2E=\t1\t0\t5001\t4\t\t6\tf\t7\t1\t9", dump.NOT_INTEGER, True),  # empty mtime
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t7\t-1\t9", dump.NOT_INTEGER, True),  # a negative nlink
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tQ\t7\t1\t9", dump.BAD_TYPE, False),
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tff\t7\t1\t9", dump.BAD_TYPE, False),
    (b"L2E=\t1\t0\t5001\t4\t5\t6\t\t7\t1\t9", dump.BAD_TYPE, False),  # empty
]


@pytest.mark.parametrize("validate", ["all", "used"])
def test_the_one_query_path_takes_only_blocks_without_a_bad_line(validate):
    """A block is taken by the one-query clean path (strict numbers, the type as an enum,
    the checks and projection in the same query) only when none of its lines is bad: each
    bad line sends its block to the tolerant path, which names it as before. Under
    ``used`` a bad value in a field the report does not read is not bad."""
    from hpcsync.agents.mpistat.report import REPORT_FIELDS

    fmt = dump.DumpFormat(dump.BASE64, 11)
    fields = REPORT_FIELDS if validate == "used" else None
    clean = dump.BlockParser("d", fmt, dump.BadLines(), fields, keep=REPORT_FIELDS)
    df = clean._read_clean(GOOD_LINE + b"\n" + GOOD_LINE + b"\n")
    assert df is not None and df.columns == list(REPORT_FIELDS) and df.rows() == [(1, 5001, 5, 1)] * 2
    for line, kind, seen_by_used in EDGE_LINES:
        data = b"\n".join([GOOD_LINE, GOOD_LINE, line, GOOD_LINE]) + b"\n"
        bad = dump.BadLines()
        parser = dump.BlockParser("d", fmt, bad, fields, keep=REPORT_FIELDS)
        block = dump.Block(data, 0, first_line=10)
        good, _, count = parser.finish(block, parser.read(block), False)
        assert count == 4, line
        assert good.columns == list(REPORT_FIELDS)
        if validate == "all" or seen_by_used:
            assert parser._read_clean(data) is None, line
            assert [(n, k) for _, n, k in bad.first] == [(12, kind)], line
            assert good.height == 3
        else:
            assert bad.total == 0 and good.height == 4, line


def test_a_producer_that_fails_to_start_raises_in_the_consumer_not_hangs():
    """The background reader's own error reaches the caller, even when it fails before
    producing anything (an iterator that cannot be made)."""
    import threading

    def produce(stop):
        raise OSError("cannot start")

    outcome = []

    def consume():
        try:
            list(dump.threaded(produce))
        except OSError as exc:
            outcome.append(str(exc))

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout=20)
    assert outcome == ["cannot start"]
