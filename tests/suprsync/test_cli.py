"""``hpcsync suprsync``: the commands an operator runs next to the agent."""

from __future__ import annotations

import json
import os
import time

from hpcsync.agents.cli import main

from .conftest import HOSTILE_NAMES, files_under, md5, tc_now, write


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_list_check_retry_ignore(tmp_path, capsys):
    db = str(tmp_path / "l.db")
    f = write(tmp_path / "src" / "a.g3", "a")
    code, out, _ = run(capsys, "suprsync", "--db", db, "add", str(f), f"{tc_now()}/a.g3", "--archive", "ts", "--create")
    assert code == 0 and f"in archive ts of ledger {db} (id 1)" in out
    code, _, err = run(capsys, "suprsync", "--db", db, "add", str(f), "../a.g3", "--archive", "ts")
    assert code == 1 and "escape" in err
    code, out, _ = run(capsys, "suprsync", "--db", db, "check")
    assert code == 0 and "ts: 1 files (pending 1)" in out
    code, out, _ = run(capsys, "suprsync", "--db", db, "list", "--status", "pending", "--json")
    assert json.loads(out)[0]["remote_path"].endswith("/a.g3")
    code, out, _ = run(capsys, "suprsync", "--db", db, "ignore", "--archive", "ts", "--status", "pending")
    assert "1 files would be ignored" in out
    code, out, _ = run(capsys, "suprsync", "--db", db, "ignore", "--archive", "ts", "--status", "pending", "--apply")
    code, out, _ = run(capsys, "suprsync", "--db", db, "retry", "--archive", "ts")
    assert out.strip() == "0 failed or missing files of ts would be pending again (dry run; add --apply)"


def test_add_tree_then_run_once_copies_the_tree(tmp_path, capsys):
    db = str(tmp_path / "l.db")
    root = tmp_path / "data"
    for i, name in enumerate(HOSTILE_NAMES):
        write(root / "obs" / name, str(i))
    fresh = write(root / "being-written.dat", "x")
    old = time.time() - 3600
    for dirpath, _d, names in os.walk(root):
        for n in names:
            if n != "being-written.dat":
                os.utime(os.path.join(dirpath, n), (old, old))
    os.utime(fresh, None)
    prefix = str(tc_now())
    code, out, _ = run(capsys, "suprsync", "--db", db, "add-tree", str(root), "--archive", "ts",
                       "--remote-prefix", prefix, "--dry-run", "--create")  # fmt: skip
    assert f"{len(HOSTILE_NAMES)} files" in out and f"{len(HOSTILE_NAMES)} new" in out
    code, out, _ = run(
        capsys, "suprsync", "--db", db, "add-tree", str(root), "--archive", "ts", "--remote-prefix", prefix
    )
    assert f"{len(HOSTILE_NAMES)} files registered" in out
    code, out, _ = run(
        capsys, "suprsync", "--db", db, "add-tree", str(root), "--archive", "ts", "--remote-prefix", prefix
    )
    assert f"{len(HOSTILE_NAMES)} already registered" in out
    dst = tmp_path / "dst"
    code, out, _ = run(capsys, "suprsync", "--db", db, "run", "--archive-name", "ts", "--remote-basedir", str(dst),
                       "--db-path", db, "--suprsync-file-root", str(tmp_path / "root"), "--once")  # fmt: skip
    assert code == 0, out
    copied = files_under(dst)
    assert copied == {f"{prefix}/obs/{n}": md5(root / "obs" / n) for n in HOSTILE_NAMES}
    code, out, _ = run(capsys, "suprsync", "--db", db, "check")
    assert code == 0 and f"copied {len(HOSTILE_NAMES)}" in out


def test_add_tree_registers_every_file_it_can_and_names_the_others(tmp_path, capsys):
    """One file with an undecodable (non-UTF-8) name used to abort the whole add-tree with
    a traceback; now the rest of the tree is registered and the odd file is named."""
    db = str(tmp_path / "l.db")
    root = tmp_path / "data"
    write(root / "a.g3", "a")
    write(root / "sub" / "b.g3", "b")
    with open(os.fsencode(str(root)) + b"/sub/caf\xe9.g3", "wb") as f:
        f.write(b"latin-1")
    argv = ("suprsync", "--db", db, "add-tree", str(root), "--archive", "ts", "--last-edit", "0", "--create")
    code, out, err = run(capsys, *argv, "--dry-run")
    assert "2 files" in out and "not valid UTF-8" in err
    code, out, err = run(capsys, *argv)
    assert code == 1 and "2 files registered" in out
    assert "caf" in err and "not valid UTF-8" in err and "1 files could not be registered" in err
    code, out, _ = run(capsys, "suprsync", "--db", db, "check")
    assert "ts: 2 files (pending 2)" in out
