"""Timecode dirs: completion, sync tracking and finalization files, scoped per archive."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from hpcsync.agents.core.transfer import LocalRsyncBackend
from hpcsync.agents.suprsync.files import CopyResult
from hpcsync.agents.suprsync.timecodes import finalization_paths, is_complete, update_timecode_dirs

from .conftest import ARCHIVE, files_under, make_engine, status_of, tc_now, write


def test_completion_rule():
    now = 1_686_152_766.0  # tc 16861
    assert is_complete(16850, 16861, now)  # a newer dir exists
    assert not is_complete(16861, 16861, now)
    assert not is_complete(16860, None, now)  # the day before, nothing newer: not yet
    assert is_complete(16859, None, now)  # more than a day past


def test_finalization_paths_follow_the_socs_layout():
    local, remote = finalization_paths("/data/so/suprsync", "smurf", 16750, "smurf-sync-srv20", 1686152766.4)
    assert local == "/data/so/suprsync/16861/smurf-sync-srv20/1686152766_smurf_16750_finalized.yaml"
    assert remote == "16861/suprsync/smurf-sync-srv20/1686152766_smurf_16750_finalized.yaml"


def test_a_complete_synced_dir_is_finalized_and_its_file_is_sent(ledger, src, dst, tmp_path):
    old, new = tc_now(-3), tc_now()
    for i in range(3):
        ledger.add_file(str(write(src / f"o{i}", str(i))), f"{old}/obs{i % 2}/sub/o{i}", ARCHIVE)
    ledger.add_file(str(write(src / "top", "t")), f"{old}/top", ARCHIVE)
    ledger.add_file(str(write(src / "n0", "n")), f"{new}/obs/n0", ARCHIVE)
    engine = make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path)
    engine.iterate()  # copies, then finalizes the old dir
    assert engine.counters["finalized_dirs"] == 1
    engine.iterate()  # sends the finalization file
    remote = [p for p in files_under(dst) if p.endswith("_finalized.yaml")]
    assert len(remote) == 1
    name = Path(remote[0])
    assert name.parts[0] == str(tc_now()) and name.parts[1:3] == ("suprsync", "sync-test")
    assert name.name.endswith(f"_{ARCHIVE}_{old}_finalized.yaml")
    summary = yaml.safe_load((dst / remote[0]).read_text())
    assert set(summary) == {"timecode", "num_files", "subdirs", "finalized_at", "finalized_until", "archive_name",
                            "instance_id"}  # fmt: skip
    assert summary["timecode"] == old and summary["num_files"] == 4
    assert summary["subdirs"] == ["obs0", "obs1"] and summary["archive_name"] == ARCHIVE
    assert summary["instance_id"] == "sync-test"
    local = tmp_path / "fileroot" / str(tc_now()) / "sync-test" / name.name
    assert local.exists()
    dirs = {d.timecode: d for d in ledger.open_timecode_dirs(ARCHIVE)}
    assert old not in dirs and new in dirs  # the current dir stays open
    engine.iterate()
    assert engine.counters["finalized_dirs"] == 1  # finalized once only


def test_unsynced_files_hold_a_dir_back_until_copied_or_ignored(ledger, src, tmp_path):
    old = tc_now(-3)
    ids = [ledger.add_file(str(write(src / f"f{i}", str(i))), f"{old}/f{i}", ARCHIVE).id for i in range(2)]
    ledger.record_results([CopyResult(ids[0], "verified", "a" * 32, 1, 1.0, "a" * 32)], 5)
    ledger.record_results([CopyResult(ids[1], "failed", error="x")], 1)  # failed: not synced
    root = str(tmp_path / "root")
    assert update_timecode_dirs(ledger, ARCHIVE, root, "i") == []
    assert ledger.ignore_files(ARCHIVE) == 1  # the operator gives up on it
    done = update_timecode_dirs(ledger, ARCHIVE, root, "i")
    assert [d["timecode"] for d in done] == [old]


def test_timecode_dirs_are_scoped_by_archive(ledger, src, tmp_path):
    """socs compared timecodes and files across archives sharing a DB; here a newer dir in
    another archive completes nothing, and another archive's pending file holds nothing."""
    tc = tc_now(-1)  # one day old: only complete if a newer dir exists in the same archive
    a = ledger.add_file(str(write(src / "a", "a")), f"{tc}/a", ARCHIVE).id
    ledger.add_file(str(write(src / "b", "b")), f"{tc_now()}/b", "smurf")
    ledger.add_file(str(write(src / "c", "c")), f"{tc}/c", "smurf")  # pending, other archive
    ledger.record_results([CopyResult(a, "verified", "a" * 32, 1, 1.0, "a" * 32)], 5)
    root = str(tmp_path / "root")
    assert update_timecode_dirs(ledger, ARCHIVE, root, "i", now=time.time()) == []
    ledger.add_file(str(write(src / "d", "d")), f"{tc_now()}/d", ARCHIVE)  # now this archive has a newer dir
    done = update_timecode_dirs(ledger, ARCHIVE, root, "i")
    assert [d["num_files"] for d in done] == [1]
    assert status_of(ledger, "smurf")["pending"] == 2
