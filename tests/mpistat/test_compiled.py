"""The report's compiled one-pass scan against the general (polars) reader and against
the expected kind of each hand-written edge line: the same good lines, the same bad
lines with the same kinds, the same totals, on every base64 format and both
``validate`` modes."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcsync.agents.mpistat import compiled, dump
from hpcsync.agents.mpistat.report import REPORT_FIELDS, _block_totals, _merge, aggregate_volume

from .conftest import NOW
from .dumps import expected_usage, write_dump
from .test_reader import EDGE_LINES, GOOD_LINE, KNOWN_BAD

REFERENCE = 100

#: Lines that are good, however odd: (line, its size, gid, mtime, nlink)
ODD_GOOD_LINES = [
    (b"L2E=\t 12\t0\t5001\t4\t5\t6\tf\t7\t1\t9", (12, 5001, 5, 1)),  # leading spaces
    (b"L2E=\t+12\t0\t+5001\t4\t5\t6\tf\t7\t+1\t9", (12, 5001, 5, 1)),  # a plus sign
    (b"L2E=\t-12\t0\t5001\t4\t-5\t6\tf\t7\t2\t9", (-12, 5001, -5, 2)),  # negative size and mtime
    (b"L2E=\r\t1\r\t0\t5001\t4\t5\t6\tf\r\t7\t1\t9\r", (1, 5001, 5, 1)),  # CRLF, and a \r ending each field
    (b"L2E=\t0009223372036854775807\t0\t5001\t4\t5\t6\tf\t7\t1\t9", (2**63 - 1, 5001, 5, 1)),  # leading zeros
    (b"L2E=\t-9223372036854775808\t0\t5001\t4\t5\t6\tf\t7\t1\t9", (-(2**63), 5001, 5, 1)),
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t18446744073709551615\t1\t18446744073709551615", (1, 5001, 5, 1)),
    (b"L2E=\t1\t0\t5001\t4\t200\t6\tf\t7\t1\t9", (1, 5001, 200, 1)),  # a future mtime: not the newest
    (b"L2E=\t7\t0\t5001\t4\t5\t6\tf\t7\t0\t9", (7, 5001, 5, 0)),  # nlink 0: counted, no bytes
    (b"Lw==\t1\t0\t-3\t4\t5\t6\td\t7\t1\t9", (1, -3, 5, 1)),  # a negative gid
]

#: Lines that are bad in ways the edge table does not try: (line, kind, seen under
#: ``used``, or the kind it has there)
MORE_BAD_LINES = [
    (b"L2E=\t9223372036854775808\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, True),  # past int64
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t7\t18446744073709551616\t9", dump.NOT_INTEGER, True),  # past uint64
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t7\t-0\t9", dump.NOT_INTEGER, True),  # a sign on an unsigned
    (b"L2E=\t1 \t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, True),  # a trailing space
    (b"L2E=\t1\r\r\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, True),  # two \r
    (b"L2E=\t+-1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, True),
    (b"L2E=\t-\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.NOT_INTEGER, True),
    (b"L2E=\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9\xff", dump.NOT_INTEGER, True),  # not UTF-8, in the last field
    (b"L2E=\t1\t0\t5001\t4\t5\t6\t\xff\t7\t1\t9", dump.BAD_TYPE, False),  # not UTF-8, in the type
    (b"L2E=\t1x\t0\t5001\t4\t5\t6\t\xff\t7\t1\t9", dump.NOT_INTEGER, True),  # numbers come before the type
    (b"\xff\t1x\t0\t5001\t4\t5\t6\tQ\t7\t1\t9", dump.BAD_PATH, dump.NOT_INTEGER),  # the path before both
    (b"L2E==\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),
    (b"L===\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),
    (b"L2=E\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),
    (b"====\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9", dump.BAD_PATH, False),
    (b"\t\t\t\t\t\t\t\t\t\t", dump.BAD_PATH, dump.NOT_INTEGER),  # every field empty
    (b"\r", dump.WRONG_COLUMNS, True),
]


def compiled_scan(lines: list[bytes], fmt: dump.DumpFormat, validate: str):
    """``(kinds of bad lines by index, totals)`` from the compiled scan of one block."""
    scanner = compiled.ReportScanner(fmt, REFERENCE, validate == "all", keep_bad=len(lines))
    found = scanner.scan(b"".join(line + b"\n" for line in lines), 0)
    assert found.lines == len(lines)
    assert int(found.counts.sum()) == len(found.first_bad)
    return dict(found.first_bad), scanner.totals()


def polars_scan(lines: list[bytes], fmt: dump.DumpFormat, validate: str, monkeypatch):
    """The same from the general reader (its tolerant path, line by line where needed)."""
    monkeypatch.setattr(dump, "KEEP_BAD_LINES", len(lines) + 1)
    bad = dump.BadLines()
    parser = dump.BlockParser("d", fmt, bad, REPORT_FIELDS if validate == "used" else None, keep=REPORT_FIELDS)
    block = dump.Block(b"".join(line + b"\n" for line in lines), 0, first_line=0)
    good, _, count = parser.finish(block, parser.read(block), False)
    assert count == len(lines) and bad.total == len(bad.first)
    totals = {}
    if good.height:
        merged = _merge([_block_totals(good.select("gid", "size", "nlink", "mtime"), REFERENCE)])
        totals = {gid: (used, mtime, entries) for gid, used, mtime, entries in merged.iter_rows()}
    return {n: kind for _, n, kind in bad.first}, totals


@pytest.mark.parametrize("validate", ["all", "used"])
def test_each_edge_line_gets_its_kind_and_odd_good_lines_count(validate, monkeypatch):
    fmt = dump.DumpFormat(dump.BASE64, 11)
    for line, kind, seen_by_used in EDGE_LINES + MORE_BAD_LINES:
        if validate == "used" and isinstance(seen_by_used, str):
            kind = seen_by_used
        lines = [GOOD_LINE, line, GOOD_LINE]
        want = {1: kind} if validate == "all" or seen_by_used else {}
        for read in (compiled_scan, polars_scan):
            args = (monkeypatch,) if read is polars_scan else ()
            kinds, totals = read(lines, fmt, validate, *args)
            assert kinds == want, (read.__name__, line)
            assert totals[5001][2] == 3 - len(want), (read.__name__, line)
    for line, (size, gid, mtime, nlink) in ODD_GOOD_LINES:
        want_used = 0 if nlink == 0 else size // nlink
        want_mtime = mtime if mtime <= REFERENCE else None
        for read in (compiled_scan, polars_scan):
            args = (monkeypatch,) if read is polars_scan else ()
            kinds, totals = read([line], fmt, validate, *args)
            assert kinds == {} and totals == {gid: (want_used, want_mtime, 1)}, (read.__name__, line)


def _mutate(line: bytes, rng: random.Random) -> bytes:
    hostile = [b"\t", b"", b" ", b"+", b"-", b"\r", b"=", b"\xff", b"\xc3\xa9", b"x", b"0", b"9" * 20, b".", b"/",
               b'"', b"\\", b"\\x", b"\\u00", b"\\U0001f60", b"\\7", b"\x7f", b"\xed\xa0\x80",
               b"\xf0\x9f\x98"]  # fmt: skip
    data = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        op = rng.random()
        if op < 0.4 and data:  # replace one byte
            data[min(at, len(data) - 1) : min(at, len(data) - 1) + 1] = rng.choice(hostile)
        elif op < 0.8:  # insert
            data[at:at] = rng.choice(hostile)
        elif data:  # delete
            del data[min(at, len(data) - 1)]
    return bytes(data)


@pytest.mark.parametrize("validate", ["all", "used"])
@pytest.mark.parametrize(
    "encoding,columns", [(dump.BASE64, 11), (dump.BASE64_LEXICAL, 12), (dump.BASE64, 12), (dump.QUOTED, 11)]
)
def test_mutated_lines_are_judged_alike_by_both_readers(encoding, columns, validate, monkeypatch):
    """3,000 lines, most of them good lines with one to three hostile edits (a tab more
    or less, a sign, a space, a \\r, padding, quotes and broken escapes, bytes that are
    not UTF-8 or a surrogate, a 20-digit number): both readers name the same lines with
    the same kinds, and total the rest the same."""
    rng = random.Random(f"{encoding}{columns}{validate}")
    fmt = dump.DumpFormat(encoding, columns)
    lines = []
    for i in range(3000):
        name = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        path = dump.encode_path(b"/lustre/p/" + name, encoding)
        fields = [path, str(rng.randrange(10**6)), "0", str(5000 + i % 7), "4", str(rng.randrange(150)), "6",
                  rng.choice("fdl"), str(i), str(rng.randrange(4)), "9", "11"][:columns]  # fmt: skip
        line = "\t".join(fields).encode()
        lines.append(_mutate(line, rng) if rng.random() < 0.6 else line)
    kinds, totals = compiled_scan(lines, fmt, validate)
    want_kinds, want_totals = polars_scan(lines, fmt, validate, monkeypatch)
    made = set(dump.KINDS) if validate == "all" else {dump.WRONG_COLUMNS, dump.NOT_INTEGER}
    assert len(kinds) > 500 and set(kinds.values()) == made  # every kind of fault checked was made
    assert kinds == want_kinds
    assert totals == want_totals


def test_a_huge_gid_count_grows_the_table_and_keeps_every_total():
    """More gids than the first table holds (it grows from 1,024 slots, mid-block)."""
    fmt = dump.DumpFormat(dump.BASE64, 11)
    lines = [b"L2E=\t%d\t0\t%d\t4\t%d\t6\tf\t7\t%d\t9" % (g * 10, g * 7919, g % 90, 1 + g % 3) for g in range(5000)]
    lines += lines[:100]
    kinds, totals = compiled_scan(lines, fmt, "all")
    want = {g * 7919: (g * 10 // (1 + g % 3), g % 90, 1) for g in range(5000)}
    for g in range(100):
        used, mtime, _ = want[g * 7919]
        want[g * 7919] = (used * 2, mtime, 2)
    assert kinds == {} and totals == want


@pytest.mark.parametrize("block_size", [300, 4096, dump.BLOCK_SIZE])
def test_the_compiled_report_equals_the_general_one_on_a_real_tree(tree, tmp_path, block_size):
    """A dump of a real walk with the known bad lines: the same totals (and the plain
    loop's), the same bad lines with their line numbers, whichever reader."""
    _, entries = tree
    path = write_dump(entries, "mpistat", tmp_path / "bad.dat.gz", bad_lines=KNOWN_BAD, mtime=NOW)
    results = []
    for reader in ("compiled", "polars"):
        bad = dump.BadLines()
        usage = aggregate_volume(path, "v", bad, reference_time=NOW, block_size=block_size, reader=reader)
        got = {g: {"used": u.used, "mtime": u.mtime, "entries": u.entries} for g, u in usage.gids.items()}
        assert got == expected_usage(entries, "capped", NOW)
        results.append((bad.counts, bad.first, usage.lines))
    assert results[0] == results[1]
    assert results[0][2] == len(entries)


def test_a_line_longer_than_a_megabyte_is_one_bad_line_and_the_rest_is_read(tmp_path):
    """A dump with no newline for 3 MiB (a corrupt or foreign file inside): that stretch
    is one line with a wrong column count, memory stays bounded, and the lines after it
    are read with their numbers."""
    good = GOOD_LINE + b"\n"
    path = tmp_path / "long.dat.gz"
    path.write_bytes(gzip.compress(good * 3 + b"A" * (3 << 20) + b"\n" + good * 2))
    for reader in ("compiled", "polars"):
        for block_size in (4096, dump.BLOCK_SIZE):
            bad = dump.BadLines()
            usage = aggregate_volume(path, "v", bad, reference_time=NOW, block_size=block_size, reader=reader)
            assert [(n, k) for _, n, k in bad.first] == [(4, dump.WRONG_COLUMNS)], (reader, block_size)
            assert usage.lines == 5 and usage.gids[5001].entries == 5


QUOTED_GOOD_PATHS = [b'"/a"', b'"/a\\tb"', b'"/\xc3\xa9"', b'"/\\x7f"', b'"/\\377"', b'"/\\u00e9"', b'"/\\U0001f600"',
                     b'"/a\\"b"', b'"/a\\\\b"', b'"/a"\r', b'""', b'"/\xf0\x9f\x98\x80"']  # fmt: skip
QUOTED_BAD_PATHS = [b'"/a', b'/a"', b'"/a"b', b'"/a\\z"', b'"/a\\x7"', b'"/a\\xZZ"', b'"/a\\8"', b'"/a\\u00e"',
                    b'"/\xff"', b'"/\xed\xa0\x80"', b'"/\xc0\xaf"', b'"/\xf4\x90\x80\x80"', b'"/a\x01"', b'"/a\x7f"',
                    b'"/a\\"', b'"/a\\', b'"/a\r"', b"", b'"/\xe2\x82"']  # fmt: skip


@pytest.mark.parametrize("validate", ["all", "used"])
def test_go_quoted_paths_are_judged_as_go_writes_them(validate, monkeypatch):
    """Go's ``%q``: UTF-8 text without control characters, ``\\"`` and ``\\\\``, its
    one-letter, ``\\x``, octal, ``\\u`` and ``\\U`` escapes, in double quotes; anything
    else (an unknown escape, a short one, a byte that is not UTF-8, a surrogate, an
    overlong form, past U+10FFFF, a raw control character, no closing quote) is an
    undecodable path (under ``used``: not read, so the line counts)."""
    fmt = dump.DumpFormat(dump.QUOTED, 11)
    rest = b"\t1\t0\t5001\t4\t5\t6\tf\t7\t1\t9"
    for path in QUOTED_GOOD_PATHS + QUOTED_BAD_PATHS:
        lines = [b'"/x"' + rest, path + rest, b'"/y"' + rest]
        want = {1: dump.BAD_PATH} if path in QUOTED_BAD_PATHS and validate == "all" else {}
        for read in (compiled_scan, polars_scan):
            args = (monkeypatch,) if read is polars_scan else ()
            kinds, totals = read(lines, fmt, validate, *args)
            assert kinds == want, (read.__name__, path)
            assert totals[5001][2] == 3 - len(want), (read.__name__, path)


@pytest.fixture
def read_only_install(tmp_path):
    """hpcsync's sources on a read-only filesystem (a tmpfs remounted read-only): an
    image's install, run by a user who can write neither it nor a home."""
    root = Path(__file__).resolve().parents[2]
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)  # fmt: skip
    assert mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr}"
    try:
        for part in ("agents", "db"):
            shutil.copytree(root / part, mountpoint / "hpcsync" / part, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_the_scan_runs_from_a_read_only_install_with_no_writable_home(read_only_install, tmp_path, monkeypatch):
    """numba refuses to import a cached function with nowhere to write its cache: the
    scan then caches in the temp dir, or, with nothing writable at all, compiles uncached."""
    probe = (
        "from hpcsync.agents.mpistat import compiled as c; "
        f"assert c.__file__.startswith({str(read_only_install)!r}), c.__file__; "
        "c.warm_up(); print(c.CACHE_DIR)"
    )
    writable_tmp = tmp_path / "tmp"
    writable_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_"))}
    env.update(HOME=str(read_only_install), TMPDIR=str(writable_tmp), PYTHONPATH=str(read_only_install))
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-1500:]
    cached = writable_tmp / f"hpcsync-numba-{os.getuid()}"
    assert run.stdout.strip() == str(cached)
    assert any(name.endswith(".nbi") for _, _, names in os.walk(cached) for name in names), "nothing cached"
    # nothing writable (Python's own temp dir choice falls back to /tmp, so it is faked)
    monkeypatch.setattr(compiled.tempfile, "gettempdir", lambda: str(read_only_install))
    environ = {"HOME": str(read_only_install), "NUMBA_CACHE_DIR": str(read_only_install / "numba")}
    assert compiled.choose_cache_dir(read_only_install / "hpcsync" / "agents" / "mpistat", environ) is None
