"""Finding the newest complete set of dumps (lurge's manager.py), in every naming."""

from __future__ import annotations

import datetime as dt

import pytest

from hpcsync.agents.mpistat.errors import MpistatError
from hpcsync.agents.mpistat.quota import parse_lfs_quota, read_quota_csv
from hpcsync.agents.mpistat.sets import find_set

TODAY = dt.date(2026, 11, 30)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_newest_complete_set_in_mpistat_and_wrstat_names(tmp_path):
    d = tmp_path
    # 11-30: only 114 (incomplete); 11-29: 114 by mpistat, 115 by wrstat v5, 118 by wrstat v6
    touch(d / "20261130_114.dat.gz")
    touch(d / "20261129_114.dat.gz")
    touch(d / "20261129_scratch115.a1b2.c3d4.stats.gz")
    touch(d / "final" / "20261129-013000_\uff0flustre\uff0fscratch118" / "stats.gz")
    touch(d / "20261120_114.dat.gz")
    touch(d / "notes.txt")
    found = find_set(d, ["114", "scratch115", "118"], today=TODAY)
    assert found.date == dt.date(2026, 11, 29)
    assert [(x.volume, x.path) for x in found.dumps] == [
        ("scratch114", str(d / "20261129_114.dat.gz")),
        ("scratch115", str(d / "20261129_scratch115.a1b2.c3d4.stats.gz")),
        ("scratch118", str(d / "final" / "20261129-013000_\uff0flustre\uff0fscratch118" / "stats.gz")),
    ]
    # without configured volumes: whatever the newest date has
    assert [x.volume for x in find_set(d, None, today=TODAY).dumps] == ["scratch114"]
    # an explicit date, and the limit on how far back to look
    assert find_set(d, ["114"], today=TODAY, date=dt.date(2026, 11, 20)).date == dt.date(2026, 11, 20)
    with pytest.raises(MpistatError, match="no complete set of dumps for volumes scratch114, scratch116"):
        find_set(d, ["114", "116"], today=TODAY, max_days_ago=10)
    with pytest.raises(MpistatError, match="does not exist"):
        find_set(d / "missing", ["114"], today=TODAY)


def test_lfs_quota_output_and_quota_csv(tmp_path):
    assert parse_lfs_quota("/lustre/scratch114 1234 0 2048 - 10 0 0 -\n") == 2048 * 1024
    assert parse_lfs_quota("/lustre/a-very-long-filesystem-name\n  1234* 0 2048 - 10 0 0 -\n") == 2048 * 1024
    assert parse_lfs_quota("/lustre/scratch114 1234 0 4096* - 10 0 0 -") == 4096 * 1024
    assert parse_lfs_quota("lfs: permission denied") is None
    good = tmp_path / "scratch114.csv"
    good.write_text("group,limit\nalpha,100\nbeta,7\n")
    assert read_quota_csv(good) == {"alpha": 102400, "beta": 7168}
    bad = tmp_path / "bad.csv"
    bad.write_text("group,limit\nalpha,lots\n")
    with pytest.raises(MpistatError, match=r"bad.csv line 2: limit 'lots' is not a whole number of KiB"):
        read_quota_csv(bad)
