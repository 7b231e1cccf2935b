"""The inspector and the splitter on a real tree's dumps, against plain loops; the split's
upload to a local directory and to a real S3 server that checks signatures."""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import re
import shutil
import threading

import pytest

from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.mpistat.errors import AlreadyDone, MpistatError
from hpcsync.agents.mpistat.ledger import MpistatLedger
from hpcsync.agents.mpistat.options import MpistatOptions, add_arguments
from services.slapd import GROUP_BASE, PEOPLE_BASE

from .conftest import GROUPS, NOW
from .dumps import FORMATS, write_dump

VOLUME = "scratch999"
CATEGORY = [("BAM", r"\.bam(\.gz)?$"), ("CRAM", r"\.cram(\.gz)?$"), ("VCF", r"\.(vcf|bcf|gvcf)(\.gz)?$"),
            ("PEDBED", r"\.(ped|bed)(\.gz)?$"), ("SAM", r"\.sam(\.gz)?$"),
            ("FASTQ", r"\.(fastq|fq)(\.gz)?$")]  # fmt: skip


def make_engine(tmp_path, ldap, *extra, db_url=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--dump-dir", str(tmp_path / "dumps"), "--output-dir", str(tmp_path / "out"), "--volumes", VOLUME,
        "--db", db_url or f"sqlite:///{tmp_path / 'm.db'}", "--ldap-url", ldap.url, "--ldap-group-base", GROUP_BASE,
        "--ldap-people-base", PEOPLE_BASE, "--passwd-command", "getent passwd root",
        "--group-command", "getent group root", *extra,
    ])  # fmt: skip
    opts = MpistatOptions.from_args(args)
    return opts.build_engine(JobContext("t", threading.Event()), lambda: opts.open_database())


def expected_inspection(entries, top, depth):
    """Directory reports by a plain loop (the inspector's rules, written out again)."""
    reports = {}
    parent = str(top).encode().strip(b"/").split(b"/")
    for e in entries:
        parts = e.path.strip(b"/").split(b"/")
        if (
            parts[: len(parent)] != parent
            or len(parts) <= len(parent)
            or parts[len(parent)] not in (b"teams", b"projects")
        ):
            continue  # fmt: skip
        rel = parts[len(parent) :]
        kind = e.type
        if kind not in ("f", "d"):
            continue
        holder = rel if kind == "d" else rel[:-1]
        keep = depth + 2 if len(rel) > 2 and rel[2] == b"users" else depth + 1
        names = [p.decode("utf-8", "replace") for p in holder[:keep]]
        keys = ["/".join(names[:i]) for i in range(1, len(names) + 1)]
        for key in keys:
            reports.setdefault(
                key, {"size": 0, "files": 0, "mtime": None, "group": None, **{c: 0 for c, _ in CATEGORY}}
            )
        if kind == "d":
            reports[keys[-1]]["group"] = GROUPS[e.st.st_gid][0]
            continue
        share = min(e.st.st_size, e.st.st_blocks * 512) // e.st.st_nlink
        category = next((c for c, rx in CATEGORY if re.search(rx.encode(), rel[-1])), None)
        for key in keys:
            r = reports[key]
            r["size"] += share
            r["files"] += 1
            r["mtime"] = max(r["mtime"] or 0, int(e.st.st_mtime))
            if category:
                r[category] += share
    return reports


def test_inspection_matches_a_plain_loop_and_replaces_the_db_set_atomically(tree, tmp_path, ldap_groups, db_url,
                                                                             monkeypatch):  # fmt: skip
    top, entries = tree
    date = dt.date.fromtimestamp(NOW)
    write_dump(entries, "wrstat-5.1", tmp_path / "dumps" / f"{date:%Y%m%d}_999.dat.gz", mtime=NOW)
    roots = ["--inspect-root", f"{VOLUME}={top}/teams", "--inspect-root", f"{VOLUME}={str(top)[:-1]}[0-9]/projects"]
    engine = make_engine(tmp_path, ldap_groups, *roots, db_url=db_url)
    outcome = engine.inspect(generic=True)
    assert outcome.ok, outcome.message()
    expected = expected_inspection(entries, top, 2)
    table = (tmp_path / "out" / "inspections" / f"inspect-{date:%Y%m%d}.tsv").read_text().splitlines()
    assert table[0].split("\t")[:8] == ["Directory", "Total", "BAM", "CRAM", "VCF", "PED/BED", "Files",
                                        "Last Modified (days)"]  # fmt: skip
    assert [line.split("\t")[0] for line in table[1:]] == sorted(expected)
    assert "projects/proj1/users/bob" in expected  # the users rule: one level deeper
    ledger: MpistatLedger = engine.ledger
    stored = {d["path"]: d for d in ledger.current_directories(VOLUME)}
    assert set(stored) == set(expected)
    for key, want in expected.items():
        got = stored[key]
        assert (got["size"], got["files"], got["group"]) == (want["size"], want["files"], want["group"]), key
        assert {c: got["categories"][c] for c, _ in CATEGORY} == {c: want[c] for c, _ in CATEGORY}, key
        assert got["last_modified"] == round((NOW - want["mtime"]) / 86400, 1)
    assert stored["teams/alpha"]["categories"]["BAM"] > 0 and stored["projects/proj1"]["categories"]["FASTQ"] > 0
    first_sets = ledger.sets(VOLUME)
    assert [status for _, status in first_sets] == ["current"]

    # a run that dies while writing its directories leaves the current set as it was
    real = MpistatLedger.add_directories

    def dies(self, set_id, volume, rows):
        real(self, set_id, volume, rows[: len(rows) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(MpistatLedger, "add_directories", dies)
    with pytest.raises(OSError, match="disk full"):
        make_engine(tmp_path, ldap_groups, *roots, db_url=db_url).inspect()
    assert ledger.sets(VOLUME) == first_sets
    assert {d["path"] for d in ledger.current_directories(VOLUME)} == set(expected)
    monkeypatch.setattr(MpistatLedger, "add_directories", real)

    again = make_engine(tmp_path, ldap_groups, *roots, "--inspect-depth", "1", db_url=db_url).inspect()
    assert again.ok
    sets = ledger.sets(VOLUME)
    assert len(sets) == 1 and sets[0][1] == "current" and sets[0][0] != first_sets[0][0]
    assert {d["path"] for d in ledger.current_directories(VOLUME)} == set(expected_inspection(entries, top, 1))
    ledger.db.dispose()


def raw_lines(path) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).split(b"\n")[:-1]


def check_split(directory, dump_path, entries, top):
    """Each group's file holds exactly its lines; index.txt has lurge's estimates."""
    lines = raw_lines(dump_path)
    by_gid: dict[int, list[bytes]] = {}
    prefix = str(top / "projects").encode()
    for line, entry in zip(lines, entries, strict=True):
        gid = int(line.split(b"\t")[3])
        name, _, _, selected = GROUPS[gid]
        if selected or entry.path.startswith(prefix):
            by_gid.setdefault(gid, []).append(line)
    index = {}
    for gid, mine in by_gid.items():
        name = GROUPS[gid][0]
        assert raw_lines(directory / f"{name}.dat.gz") == mine, name
        dirs = sum(line.split(b"\t")[7] == b"d" for line in mine)
        share = dirs / len(mine) * 100
        per_node = (
            12000 if share < 0.8 else 10000 if share < 1.5 else 9000 if share < 2 else 8500 if share < 4 else 8000
        )
        index[name] = (f"{len(mine) / 11000 + 100}", f"{(dirs * 2 + 50) * per_node}")
    got = [line.split("\t") for line in (directory / "index.txt").read_text().splitlines()]
    assert got[0] == ["Group", "Build time (sec)", "Memory use (bytes)"]
    assert {row[0]: (row[1], row[2]) for row in got[1:]} == index
    assert (directory / "passwdfile").read_text().startswith("root:")
    return sorted(p.name for p in directory.iterdir())


def test_split_to_a_local_directory_then_refused(tree, tmp_path, ldap_groups):
    top, entries = tree
    date = dt.date.fromtimestamp(NOW)
    dump_path = write_dump(entries, "mpistat", tmp_path / "dumps" / f"{date:%Y%m%d}_999.dat.gz", mtime=NOW)
    upload = tmp_path / "uploaded"
    upload.mkdir()
    engine = make_engine(tmp_path, ldap_groups, "--split-path-prefix", str(top / "projects"), "--upload-url",
                         str(upload))  # fmt: skip
    outcome = engine.split()
    assert outcome.ok, outcome.message()
    built = tmp_path / "out" / "groups" / f"{date:%Y%m%d}"
    names = check_split(built, dump_path, entries, top)
    assert names == ["alpha.dat.gz", "beta.dat.gz", "gamma.dat.gz", "groupfile", "index.txt", "passwdfile"]
    assert sorted(p.name for p in (upload / f"{date:%Y%m%d}").iterdir()) == names
    for name in names:
        assert (upload / f"{date:%Y%m%d}" / name).read_bytes() == (built / name).read_bytes()
    assert not list((tmp_path / "out" / "groups").glob(".*partial"))
    with pytest.raises(AlreadyDone, match=f"split of {date.isoformat()} already exists"):
        make_engine(tmp_path, ldap_groups, "--upload-url", str(upload)).split()


def test_split_uploads_to_s3_and_a_finished_date_is_refused(tree, tmp_path, ldap_groups, s3_server):
    _, entries = tree
    date = dt.date.fromtimestamp(NOW)
    dump_path = write_dump(entries, "wrstat-6.4", tmp_path / "dumps" / f"{date:%Y%m%d}_999.dat.gz", mtime=NOW)
    bucket = s3_server.make_bucket()
    creds = s3_server.credentials_file(tmp_path / "s3.ini")
    s3 = ["--upload-url", f"s3://{bucket}/mpistat", "--s3-endpoint", s3_server.endpoint_url,
          "--s3-region", s3_server.region, "--s3-credentials-file", str(creds)]  # fmt: skip
    outcome = make_engine(tmp_path, ldap_groups, *s3).split()
    assert outcome.ok, outcome.message()
    assert outcome.summary()["uploaded"] == 5  # alpha, beta, groupfile, passwdfile, index.txt
    built = tmp_path / "out" / "groups" / f"{date:%Y%m%d}"
    names = check_split_selected(built, dump_path, entries)
    client = s3_server.client()
    for name in names:
        body = client.get_object(Bucket=bucket, Key=f"mpistat/{date:%Y%m%d}/{name}")["Body"].read()
        assert body == (built / name).read_bytes(), name
    assert s3_server.secret_key not in repr(outcome.summary()) and s3_server.secret_key not in outcome.message()

    # the local copy is gone, but the bucket has the finished date: refused by name
    shutil.rmtree(tmp_path / "out" / "groups")
    with pytest.raises(AlreadyDone, match="already uploaded"):
        make_engine(tmp_path, ldap_groups, *s3).split()

    wrong = tmp_path / "wrong.ini"
    wrong.write_text(creds.read_text().replace(s3_server.secret_key, "not-the-secret"))
    bad = make_engine(tmp_path, ldap_groups, *s3[:-1], str(wrong))
    with pytest.raises(MpistatError, match=f"upload to s3://{bucket}/mpistat") as info:
        bad.split(replace=True)
    assert "not-the-secret" not in str(info.value) and "\n" not in str(info.value).strip()


def check_split_selected(directory, dump_path, entries):
    """Without path prefixes: only the selected (humgen) groups, each with its lines."""
    lines = raw_lines(dump_path)
    for gid, (name, _, _, selected) in GROUPS.items():
        mine = [line for line in lines if int(line.split(b"\t")[3]) == gid]
        if selected:
            assert raw_lines(directory / f"{name}.dat.gz") == mine
        else:
            assert not (directory / f"{name}.dat.gz").exists()
    assert len(entries) == len(lines) and FORMATS["wrstat-6.4"][1] == 12
    return sorted(p.name for p in directory.iterdir())


def test_split_by_id_names_files_by_gid(tree, tmp_path, ldap_groups):
    _, entries = tree
    date = dt.date.fromtimestamp(NOW)
    dump_path = write_dump(entries, "wrstat-5.1", tmp_path / "dumps" / f"{date:%Y%m%d}_999.dat.gz", mtime=NOW)
    outcome = make_engine(tmp_path, ldap_groups, "--split-by-id").split(upload=False)
    assert outcome.ok and outcome.summary()["uploaded"] == 0
    built = tmp_path / "out" / "groups" / f"{date:%Y%m%d}"
    lines = raw_lines(dump_path)
    for gid, (_, _, _, selected) in GROUPS.items():
        mine = [line for line in lines if int(line.split(b"\t")[3]) == gid]
        assert (raw_lines(built / f"{gid}.dat.gz") == mine) if selected else not (built / f"{gid}.dat.gz").exists()
    index = [line.split("\t")[0] for line in (built / "index.txt").read_text().splitlines()[1:]]
    assert sorted(index) == ["alpha", "beta"]  # lurge's index names groups, whatever the file names


class FlakyDirectory:
    """A real local-directory backend whose first ``failures`` puts fail for one file (a
    connection reset mid-upload): the upload's retry logic is what is under test."""

    def __init__(self, root, failures: int, victim: str):
        from hpcsync.agents.core.transfer import LocalRsyncBackend

        self.real = LocalRsyncBackend(str(root))
        self.failures, self.victim, self.calls = failures, victim, []

    def describe(self):
        return self.real.describe()

    def put(self, items, *, timeout, cancel=None):
        from hpcsync.agents.core.transfer import TransferOutcome

        self.calls.append([i.remote_path for i in items])
        if self.failures and any(i.remote_path.endswith(self.victim) for i in items):
            self.failures -= 1
            good = [i for i in items if not i.remote_path.endswith(self.victim)]
            if good:
                self.real.put(good, timeout=timeout, cancel=cancel)
            bad = next(i.remote_path for i in items if i.remote_path.endswith(self.victim))
            return TransferOutcome(ok=False, error="connection reset by peer", file_errors={bad: "connection reset"})
        return self.real.put(items, timeout=timeout, cancel=cancel)


def test_upload_retries_failed_files_and_sends_index_last(tmp_path):
    from hpcsync.agents.mpistat.engine import upload_split

    built = tmp_path / "built"
    built.mkdir()
    for name in ("alpha.dat.gz", "beta.dat.gz", "passwdfile", "groupfile", "index.txt"):
        (built / name).write_text(name)
    remote = tmp_path / "remote"
    remote.mkdir()
    flaky = FlakyDirectory(remote, failures=2, victim="beta.dat.gz")
    assert upload_split(flaky, built, "20261130", threading.Event(), backoff=0.01) == 5
    assert sorted(p.name for p in (remote / "20261130").iterdir()) == sorted(p.name for p in built.iterdir())
    assert flaky.calls[1] == flaky.calls[2] == ["20261130/beta.dat.gz"]  # only the failed file again
    assert flaky.calls[-1] == ["20261130/index.txt"]  # the finished marker goes last

    remote2 = tmp_path / "remote2"
    remote2.mkdir()
    hopeless = FlakyDirectory(remote2, failures=99, victim="beta.dat.gz")
    with pytest.raises(MpistatError, match="failed for 20261130/beta.dat.gz: connection reset by peer"):
        upload_split(hopeless, built, "20261130", threading.Event(), attempts=3, backoff=0.01)
    assert len(hopeless.calls) == 3
    assert not (remote2 / "20261130" / "index.txt").exists()  # not finished: the next run sends it again
