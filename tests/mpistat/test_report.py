"""The group report end to end: real dumps, real slapd, a quota command, the shared db on
SQLite, PostgreSQL and MariaDB. The expected report is computed by a plain loop."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import threading

import pytest

from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.mpistat.errors import AlreadyDone, LdapError
from hpcsync.agents.mpistat.options import MpistatOptions, add_arguments
from services import free_port
from services.slapd import GROUP_BASE, PEOPLE_BASE, READER_DN

from .conftest import GROUPS, NOW
from .dumps import FORMATS, build_tree, expected_usage, walk, write_dump

VOLUME = "scratch999"
#: What the fake lfs prints per group: Lustre's ``lfs quota -gq`` line (limit in KiB, a
#: ``*`` when over quota); gamma's call fails, so its quota comes from the CSV.
LFS = {"alpha": "/lustre/scratch999 17 0 2048* - 5 0 0 -", "beta": "/lustre/scratch999\n 9 0 40960 - 4 0 0 -"}


def options(tmp_path, ldap, db_url, *extra: str) -> MpistatOptions:
    lfs = tmp_path / "lfs"
    cases = "\n".join(f'  {name}) printf "%s\\n" "{line}" ;;' for name, line in LFS.items())
    lfs.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/lfs.calls\ncase "$3" in\n{cases}\n  *) exit 1 ;;\nesac\n')
    lfs.chmod(0o755)
    (tmp_path / "quotas").mkdir(exist_ok=True)
    (tmp_path / "quotas" / f"{VOLUME}.csv").write_text("group,limit\ngamma,500\n")
    archive = tmp_path / "archive-teams"
    (archive / "beta").mkdir(parents=True, exist_ok=True)
    (archive / "beta" / ".imirrored").write_text("")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--dump-dir", str(tmp_path / "dumps"), "--output-dir", str(tmp_path / "out"), "--volumes", "999",
        "--db", db_url, "--ldap-url", ldap.url, "--ldap-group-base", GROUP_BASE, "--ldap-people-base", PEOPLE_BASE,
        "--quota-command", f"{lfs} quota -gq {{group}} {{mount}}", "--quota-csv-dir", str(tmp_path / "quotas"),
        "--archive-root", f"{VOLUME}={tmp_path}/none", "--archive-root", f"{VOLUME}={archive}", *extra,
    ])  # fmt: skip
    return MpistatOptions.from_args(args)


def engine_for(opts: MpistatOptions):
    return opts.build_engine(JobContext("test", threading.Event()), lambda: opts.open_database())


def expected_rows(entries, rule, reference, tmp_path) -> list[list[str]]:
    """The TSV rows lurge would write, from the walk and the test's own LDAP/quota facts."""
    quotas = {"alpha": 2048 * 1024, "beta": 40960 * 1024, "gamma": 500 * 1024}
    rows = []
    for gid, usage in expected_usage(entries, rule, reference).items():
        name, _, surname, humgen = GROUPS[gid]
        days = round((reference - usage["mtime"]) / 86400, 1)
        archived = str(tmp_path / "archive-teams" / "beta") if name == "beta" else "-"
        rows.append([VOLUME, surname or "-", name, str(usage["used"]), str(quotas[name]), str(days), archived,
                     str(humgen)])  # fmt: skip
    # lurge sorts by volume, PI, group with missing PIs first
    return sorted(rows, key=lambda r: (r[0], r[1] != "-", r[1] if r[1] != "-" else "", r[2]))


def read_tsv(path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


@pytest.mark.parametrize("producer", ["mpistat", "wrstat-6.4"])
def test_report_matches_a_plain_loop_and_is_stored_once(tree, tmp_path, ldap_settings, db_url, producer):
    _, entries = tree
    date = dt.date.fromtimestamp(NOW)
    name = f"{date:%Y%m%d}_999.dat.gz" if producer == "mpistat" else f"{date:%Y%m%d}_{VOLUME}.abc.def.stats.gz"
    write_dump(entries, producer, tmp_path / "dumps" / name, bad_lines={5: "garbage\n"}, mtime=NOW)
    opts = options(tmp_path, ldap_settings, db_url)
    engine = engine_for(opts)
    outcome = engine.report()
    assert outcome.ok and outcome.degraded  # one malformed line: done, but flagged
    data = outcome.summary()
    assert data["malformed"]["total"] == 1 and data["malformed"]["first"] == [f"{name}:5: wrong column count"]
    assert data["lines_read"] == len(entries) + 1 and data["groups"] == 3

    tsv = tmp_path / "out" / "report-output-files" / f"report-{date:%Y%m%d}.tsv"
    table = read_tsv(tsv)
    assert table[0] == ["Lustre Volume", "PI", "Unix Group", "Used (bytes)", "Quota (bytes)", "Last Modified (days)",
                        "Archived Directories", "Is Humgen?"]  # fmt: skip
    assert table[1:] == expected_rows(entries, FORMATS[producer][2], NOW, tmp_path)
    calls = (tmp_path / "lfs.calls").read_text().split("\n")
    assert "quota -gq alpha /lustre/scratch999" in calls

    stored = {r["group"]: r for r in engine.ledger.report_rows(date)}
    assert {g: (r["used"], r["quota"], r["pi"], r["is_humgen"]) for g, r in stored.items()} == {
        row[2]: (int(row[3]), int(row[4]), None if row[1] == "-" else row[1], row[7] == "True") for row in table[1:]
    }

    with pytest.raises(AlreadyDone, match=f"report for {date.isoformat()} is already stored for {VOLUME}"):
        engine_for(opts).report()
    before = tsv.read_bytes()
    again = engine_for(opts).report(replace=True)
    assert again.ok and tsv.read_bytes() == before
    assert len(engine.ledger.report_rows(date)) == 3
    engine.ledger.db.dispose()


def test_history_predicts_the_fill_date_warns_and_plots(tmp_path, ldap_settings):
    top = build_tree(tmp_path / "tree", NOW)
    db_url = f"sqlite:///{tmp_path / 'h.db'}"
    today = dt.date.fromtimestamp(NOW)
    opts = options(tmp_path, ldap_settings, db_url, "--max-days-ago", "40")
    # three reports 10 days apart, alpha's tree growing by a 600 KiB file each time
    grow = top / "teams" / "alpha" / "data"
    outcomes = []
    for step, days_ago in enumerate((20, 10, 0)):
        day = today - dt.timedelta(days=days_ago)
        extra = grow / f"grow{step}.bin"
        extra.write_bytes(b"g" * 600 * 1024)
        os.chown(extra, 0, 5001)
        write_dump(walk(top), "mpistat", tmp_path / "dumps" / f"{day:%Y%m%d}_999.dat.gz", mtime=NOW)
        outcomes.append(engine_for(opts).report(date=day))
        assert outcomes[-1].ok
    plot = tmp_path / "alpha.svg"
    outcome = engine_for(opts).history("alpha", VOLUME, str(plot))
    vol = outcome.summary()["volumes"][VOLUME]
    used = [p["used"] for p in vol["points"]]
    assert [p["date"] for p in vol["points"]] == [(today - dt.timedelta(days=d)).isoformat() for d in (20, 10, 0)]
    assert used[1] - used[0] == used[2] - used[1] == 600 * 1024
    # a straight line: 60 KiB/day towards a 2048 KiB quota
    quota = 2048 * 1024
    days_left = -(-(quota - used[2]) // (60 * 1024))
    assert vol["date_no_space"] == (today + dt.timedelta(days=days_left)).isoformat()
    # lurge's levels: 3 if in 3 days > 80 % or in 7 days > 95 %; 2 if in 7 days > 85 %
    in3, in7 = used[2] + 3 * 60 * 1024, used[2] + 7 * 60 * 1024
    level = 3 if in3 > 0.8 * quota or in7 > 0.95 * quota else 2 if in7 > 0.85 * quota else 1
    assert level == 3 and vol["warning"] == 3
    assert {r["group"]: r["warning"] for r in engine_for(opts).ledger.report_rows(today)}["alpha"] == 3
    svg = plot.read_text()
    assert svg.startswith("<svg") and 'class="usage"' in svg and 'class="quota"' in svg
    assert f"full on {vol['date_no_space']}" in svg
    # the report of the day wrote the same plot for the group at level 3
    assert outcomes[-1].summary()["plots"] >= 1
    assert (tmp_path / "out" / "plots" / f"{today:%Y%m%d}" / VOLUME / "alpha.svg").read_text() == svg


def test_ldap_bind_with_a_password_file_and_unreachable_ldap(tree, tmp_path, ldap_settings, slapd):
    _, entries = tree
    date = dt.date.fromtimestamp(NOW)
    write_dump(entries, "mpistat", tmp_path / "dumps" / f"{date:%Y%m%d}_999.dat.gz", mtime=NOW)
    db_url = f"sqlite:///{tmp_path / 'l.db'}"
    secret = tmp_path / "ldap.pw"
    secret.write_text(slapd.reader_password + "\n")
    secret.chmod(0o600)
    opts = options(tmp_path, ldap_settings, db_url, "--ldap-bind-dn", READER_DN, "--ldap-password-file",
                   f"file:{secret}")  # fmt: skip
    outcome = engine_for(opts).report()
    assert outcome.ok and outcome.summary()["groups"] == 3
    assert slapd.reader_password not in repr(outcome.summary()) and slapd.reader_password not in outcome.message()

    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password")
    bad = options(tmp_path, ldap_settings, db_url, "--ldap-bind-dn", READER_DN, "--ldap-password-file",
                  f"file:{wrong}")  # fmt: skip
    with pytest.raises(LdapError, match="bind as cn=reader") as info:
        engine_for(bad).report(replace=True)
    assert "not-the-password" not in str(info.value)

    port = free_port()
    down = options(tmp_path, ldap_settings, db_url, "--ldap-url", f"ldap://127.0.0.1:{port}", "--ldap-timeout", "3")
    with pytest.raises(LdapError) as info:
        engine_for(down).report(replace=True)
    assert f"127.0.0.1:{port}" in str(info.value) and "\n" not in str(info.value)


def test_cli_demo_report_then_refusal_in_one_line(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "hpcsync.agents.cli", "mpistat"]
    common = ["--demo", str(tmp_path / "demo"), "--db", f"sqlite:///{tmp_path / 'demo.db'}"]
    first = subprocess.run([*base, "report", *common], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    date = dt.date.today()
    tsv = tmp_path / "demo" / "out" / "report-output-files" / f"report-{date:%Y%m%d}.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    assert rows and all(row[0] == "scratch999" for row in rows)
    assert sum(int(row[3]) for row in rows) >= 200_000 + 80_000 + 12_000 + 150_000 + 1_200
    second = subprocess.run([*base, "report", *common], capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert second.stderr.strip().count("\n") == 0 and "already stored" in second.stderr
    bad = subprocess.run([*base, "report", "--dump-dir", str(tmp_path), "--archive-root", "nonsense"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1 and "--archive-root 'nonsense' must be VOL=PATH" in bad.stderr


def test_a_stop_mid_dump_stores_nothing(tmp_path, ldap_settings):
    """The reader looks at the stop request between blocks: the report ends early, says so,
    and neither the TSV nor any row exists."""
    from benchmarks.mpistat_gen import generate

    date = dt.date.fromtimestamp(NOW)
    generate(tmp_path / "dumps" / f"{date:%Y%m%d}_999.dat.gz", 400_000)
    opts = options(tmp_path, ldap_settings, f"sqlite:///{tmp_path / 's.db'}")
    cancel = threading.Event()
    seen = []

    def progress(**fields):
        if "lines_read" in fields:
            seen.append(fields["lines_read"])
            cancel.set()

    engine = opts.build_engine(JobContext("t", cancel, on_progress=lambda f: progress(**f)), opts.open_database)
    outcome = engine.report()
    assert outcome.stopped and "stopped on request; nothing was stored" in outcome.message()
    assert seen and seen[0] < 400_000
    assert not (tmp_path / "out" / "report-output-files").exists()
    assert engine.ledger.report_rows(date) == []
