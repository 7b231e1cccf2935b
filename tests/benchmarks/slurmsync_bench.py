"""SlurmSync benchmark (a script, not a test): ``python tests/benchmarks/slurmsync_bench.py``.

1. Writes a sacct dump of 20,000 finished jobs in the exact shape of
   ``sacct -naPX --format=JobId,Submit,Start,End,UID,Account,State,Partition,QOS,NodeList,
   AllocCPUS,ReqNodes,AllocNodes,CPUTimeRAW,CPUTime,JobIDRaw`` (40 projects, 200 users,
   ranged node lists, every end state, one unpriced partition; one job in ten is a task of
   a 10-task array, printed ``<array>_<task>`` with its own raw id).
2. Starts the ColdFront emulator as its own process (so client and server do not share a
   GIL) and seeds it with the projects, members and a staff token.
3. **Baseline**, measured in the same run: what the seed scripts do - parse, then one PUT
   per job, one after the other (on one keep-alive connection, a stronger baseline than
   their urllib2 connection per request). Then the emulator's jobs and usage are reset.
4. **Full sync** by the SlurmSync engine (the code the agent's ``full_sync`` op runs):
   projects and allocations from the API, jobs from the dump, ledger intent/outcome per
   batch, concurrent PUTs, book-keeping log. Checks that the usage equals the baseline's.
5. **No-change re-run**: the same full sync again; the ledger skips every job.

Prints jobs/s for both, the ratio, and the re-run time. Options: ``--jobs N``,
``--projects N``, ``--workers N``, ``--keep`` (keep the temp dir).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import hostlist
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from hpcsync.agents.core import daemon  # noqa: E402
from hpcsync.agents.slurmsync.clock import ClusterClock  # noqa: E402
from hpcsync.agents.slurmsync.options import SlurmSyncOptions, build_engine  # noqa: E402
from hpcsync.agents.slurmsync.slurm import parse_sacct_output  # noqa: E402
from services import free_port  # noqa: E402

TOKEN = "bench0123456789abcdef0123456789abcdef0123"
ZONE = "America/Los_Angeles"
PRICES = {"savio": 0.75, "savio2": 1.00, "savio2_gpu": 2.67, "savio2_knl": 0.40, "savio3": 1.00, "debug": 0.5}
PARTITIONS = [*PRICES, "savio4_htc"]  # the last one is not in the price table: 0 SU
STATES = ["COMPLETED"] * 70 + ["FAILED"] * 10 + ["CANCELLED by {uid}"] * 8 + ["TIMEOUT"] * 7 + ["OUT_OF_MEMORY"] * 3
STATES += ["NODE_FAIL"] * 2
PREFIXES = ["pc", "fc", "ac", "ic", "co"]


def cpu_time(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def write_dump(path: Path, jobs: int, projects: list[str], members: dict[str, list[int]], rng: random.Random) -> None:
    first = datetime(2025, 7, 1)
    with open(path, "w") as fh:
        for n in range(jobs):
            raw_id = 100000 + n
            group, task = divmod(n, 10)
            if group % 10 == 9:  # a 10-task array: its id is the raw id of the task left last
                project = projects[(group * 10) % len(projects)]
                job_id = f"{100000 + group * 10 + 9}_{task + 1}"
            else:
                project = projects[n % len(projects)]
                job_id = str(raw_id)
            uid = rng.choice(members[project])
            submit = first + timedelta(seconds=rng.randrange(0, 120 * 86400))
            start = submit + timedelta(seconds=rng.randrange(0, 7200))
            elapsed = rng.randrange(1, 72 * 3600)
            end = start + timedelta(seconds=elapsed)
            nodes = rng.choice([1, 1, 1, 2, 4])
            base = rng.randrange(1, 900)
            partition = rng.choice(PARTITIONS)
            names = [f"n{base + i:04d}.{partition}" for i in range(nodes)]
            cpus = nodes * rng.choice([1, 4, 8, 20, 32])
            state = rng.choice(STATES).format(uid=uid)
            fields = [
                job_id, submit.isoformat(), start.isoformat(), end.isoformat(), str(uid), project, state,
                partition, "savio_normal", hostlist.collect_hostlist(names), str(cpus), str(nodes), str(nodes),
                str(cpus * elapsed), cpu_time(cpus * elapsed), str(raw_id),
            ]  # fmt: skip
            fh.write("|".join(fields) + "\n")


def start_emulator(tmp: Path) -> tuple[int, str]:
    port = free_port()
    proc = daemon.spawn(
        [sys.executable, "-m", "hpcsync.agents.testing.coldfront", "--port", str(port)], log_path=tmp / "emulator.log"
    )
    url = f"http://127.0.0.1:{port}"
    if not daemon.wait_until(lambda: requests.get(url + "/_emulator/requests", timeout=1).ok, 30, 0.1):
        daemon.stop(proc.pid)
        raise SystemExit(f"the emulator did not start: {(tmp / 'emulator.log').read_text()[-2000:]}")
    return proc.pid, url


def usage(url: str) -> dict[str, str]:
    return {name: row["usage"] for name, row in requests.get(url + "/_emulator/usage").json().items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--projects", type=int, default=40)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    rng = random.Random(20261122)
    tmp = Path(tempfile.mkdtemp(prefix="slurmsync-bench-"))
    projects = [f"{PREFIXES[i % len(PREFIXES)]}_bench{i:03d}" for i in range(args.projects)]
    uids = list(range(40000, 40000 + args.users))
    members = {p: rng.sample(uids, 10) for p in projects}
    dump = tmp / "sacct.txt"
    write_dump(dump, args.jobs, projects, members, rng)
    print(f"sacct dump: {args.jobs} jobs, {len(projects)} projects, {dump.stat().st_size / 1e6:.1f} MB")

    pid, url = start_emulator(tmp)
    try:
        seed = {
            "users": [{"username": f"u{uid}", "cluster_uid": str(uid)} for uid in uids],
            "tokens": [{"key": TOKEN, "username": "syncbot", "is_staff": True}],
            "projects": [
                # The dates the server needs to charge (fc_/ic_/pc_ allowances need an end date).
                {"name": p, "resource": "Savio Compute", "service_units": "100000000.00", "start_date": "2025-06-01",
                 "end_date": "2026-05-31", "users": [f"u{uid}" for uid in members[p]]}
                for p in projects
            ],
        }  # fmt: skip
        requests.post(url + "/_emulator/seed", json=seed).raise_for_status()
        profile = tmp / "profiles.yaml"
        profile.write_text(
            json.dumps({"profiles": {"bench": {"extends": "mybrc", "base_url": url + "/api/", "prices": PRICES}}})
        )
        token = tmp / "token"
        token.write_text(f"Token {TOKEN}\n")
        token.chmod(0o600)

        def engine():
            settings = SlurmSyncOptions(
                target="bench", profile_file=str(profile), token_file=str(token), sacct_file=str(dump),
                cluster_tz=ZONE, db=f"sqlite:///{tmp / 'ledger.db'}", log_dir=str(tmp / "logs"), workers=args.workers,
            )  # fmt: skip
            return build_engine(settings)

        # -- baseline: parse, then one PUT per job, serially -------------------------------
        started = time.perf_counter()
        base_engine = engine()
        jobs = parse_sacct_output(dump.read_text().splitlines(), ClusterClock(ZONE), str(dump))
        session = requests.Session()
        session.headers["Authorization"] = f"Token {TOKEN}"
        failures = 0
        for job in jobs:
            prepared = base_engine.prepare(job)
            reply = session.put(f"{url}/api/jobs/{prepared.jobslurmid}/", json=prepared.payload, timeout=30)
            failures += not reply.ok
        baseline_s = time.perf_counter() - started
        baseline_usage = usage(url)
        if failures:
            print(f"baseline: {failures} PUTs failed", file=sys.stderr)
            return 1
        requests.post(url + "/_emulator/reset").raise_for_status()

        # -- the SlurmSync full sync ------------------------------------------------------
        started = time.perf_counter()
        report = engine().full_sync(push=True)
        sync_s = time.perf_counter() - started
        if not report.ok or report.pushed != args.jobs:
            print(f"full sync did not push every job: {report.message()}", file=sys.stderr)
            return 1
        if usage(url) != baseline_usage:
            print("usage after the full sync differs from the baseline's", file=sys.stderr)
            return 1
        ids = {job["jobslurmid"] for job in requests.get(url + "/_emulator/jobs").json()}
        if len(ids) != args.jobs or any(not i.isdigit() for i in ids):
            print("the API's jobs are not the dump's raw job ids (array tasks under JobID?)", file=sys.stderr)
            return 1
        puts = requests.get(url + "/_emulator/requests").json()["total"]

        # -- no-change re-run -------------------------------------------------------------
        started = time.perf_counter()
        rerun = engine().full_sync(push=True)
        rerun_s = time.perf_counter() - started
        rerun_requests = requests.get(url + "/_emulator/requests").json()["total"] - puts
        if rerun.pushed or rerun.unchanged != args.jobs:
            print(f"the re-run pushed again: {rerun.message()}", file=sys.stderr)
            return 1

        total_su = sum(Decimal(v) for v in baseline_usage.values())
        print(f"service units charged: {total_su} (baseline and full sync agree per project)")
        print(f"baseline, serial one PUT per job: {baseline_s:7.2f} s  {args.jobs / baseline_s:8.0f} jobs/s")
        print(
            f"SlurmSync full sync ({args.workers} workers): {sync_s:7.2f} s  {args.jobs / sync_s:8.0f} jobs/s  "
            f"({report.api_requests} API requests, ledger + book-keeping log included)"
        )
        print(f"ratio full sync / baseline: {baseline_s / sync_s:.2f}x faster")
        print(
            f"no-change re-run: {rerun_s:.2f} s ({rerun_requests} API requests, 0 PUTs; "
            f"{rerun.unchanged} jobs unchanged per the ledger)"
        )
        return 0
    finally:
        daemon.stop(pid)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
