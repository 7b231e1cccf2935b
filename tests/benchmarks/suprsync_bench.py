"""SupRsync benchmark (a script, not a test): ``python tests/benchmarks/suprsync_bench.py``.

1. 5,000 files of 4 KiB registered, copied and verified over ssh on loopback by the
   SupRsync engine (the code the agent's ``run`` process drives), against a baseline
   measured in the same run: one bare ``rsync -a`` of the same tree plus one remote
   ``md5sum`` of every file. Prints files/s for both and the ratio (target: <= 1.3), with
   and without registration (the producer's cost, paid as each file is written).
2. The cost of an idle loop iteration (nothing to copy, deletion enabled, timecode dirs
   checked, archive stats) over a ledger of 1,000,000 copied files.

Needs root (it starts a private sshd on a free loopback port, as the test suite does).
Options: ``--files N``, ``--size BYTES``, ``--rows N``, ``--rounds N``, ``--batch N``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from hpcsync.agents.core.process import run_command  # noqa: E402
from hpcsync.agents.core.ssh import SshOptions, rsync_base_argv  # noqa: E402
from hpcsync.agents.core.transfer import SshRsyncBackend  # noqa: E402
from hpcsync.agents.suprsync.copier import DEFAULT_FILES_PER_BATCH, CopySettings  # noqa: E402
from hpcsync.agents.suprsync.engine import EngineSettings, SupRsyncEngine  # noqa: E402
from hpcsync.agents.suprsync.ledger import SupRsyncFilesManager  # noqa: E402
from hpcsync.db.models import path_hash  # noqa: E402
from services.sshd import start_sshd  # noqa: E402

ARCHIVE = "bench"


def make_tree(base: Path, n: int, size: int) -> list[tuple[str, str]]:
    """n files of ``size`` random bytes in 50 subdirectories of one timecode dir."""
    tc = int(time.time() // 1e5)
    entries = []
    for i in range(n):
        rel = f"{tc}/obs{i % 50:02d}/file_{i:06d}.dat"
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        entries.append((str(path), rel))
    return entries


def baseline(src: Path, remote: str, ssh: SshOptions) -> float:
    """One ``rsync -a`` of the tree + one remote md5sum of every file; seconds."""
    started = time.perf_counter()
    run_command([*rsync_base_argv(ssh=ssh), "-a", f"{src}/", ssh.rsync_remote(remote + "/")], timeout=600)
    out = run_command(
        ssh.ssh_argv(["sh", "-c", 'cd "$1" && find . -type f -print0 | xargs -0 md5sum', "sh", remote]), timeout=600
    ).stdout
    elapsed = time.perf_counter() - started
    if out.count("\n") < 1:
        raise SystemExit("baseline md5sum returned nothing")
    return elapsed


def suprsync_run(entries, remote: str, ssh: SshOptions, db_path: Path, batch: int) -> tuple[float, float]:
    """Register, copy and verify ``entries`` with the engine; (total s, registration s)."""
    manager = SupRsyncFilesManager(str(db_path))
    backend = SshRsyncBackend(remote, ssh, chmod="g+rwX,o+rX")
    settings = EngineSettings(ARCHIVE, str(db_path.parent / "fileroot"), "bench-sync",
                              copy=CopySettings(ARCHIVE, files_per_batch=batch))  # fmt: skip
    engine = SupRsyncEngine(lambda: manager, backend, settings)
    started = time.perf_counter()
    manager.add_files(entries, ARCHIVE)
    registered = time.perf_counter() - started
    while manager.has_pending(ARCHIVE):
        report = engine.iterate()
        if not report.ok:
            raise SystemExit(f"copy failed: {report.errors or engine.last_error}")
    elapsed = time.perf_counter() - started
    summary = manager.status_summary(ARCHIVE)[ARCHIVE]
    # the finalization file(s) the loop may have written count too
    if summary["copied"] < len(entries) or summary["failed"] or summary["missing"]:
        raise SystemExit(f"not everything was copied: {summary}")
    manager.dispose()
    return elapsed, registered


def check_remote(entries, remote: Path) -> None:
    for local, rel in entries[:: max(1, len(entries) // 200)]:
        a = hashlib.md5(Path(local).read_bytes()).hexdigest()
        b = hashlib.md5((remote / rel).read_bytes()).hexdigest()
        if a != b:
            raise SystemExit(f"remote copy of {rel} differs")


def fill_ledger(db_path: Path, rows: int) -> None:
    """``rows`` copied files in the ledger (plain sqlite3 for speed; same schema)."""
    manager = SupRsyncFilesManager(str(db_path))  # creates the schema
    manager.dispose()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    tc = int(now // 1e5) - 30
    chunk = 50_000
    for start in range(0, rows, chunk):
        data = []
        for i in range(start, min(rows, start + chunk)):
            rel = f"{tc + i // 40_000}/obs{i % 97:02d}/file_{i:07d}.dat"
            data.append((ARCHIVE, f"/data/{rel}", rel, path_hash(rel), tc + i // 40_000, "copied", "0" * 32, 4096,
                         now - 86400, now - 86400 * 20 + i, "0" * 32, now - 86400 * 19 + i, 0, True))  # fmt: skip
        conn.executemany(
            "INSERT INTO suprsync_files (archive_name, local_path, remote_path, remote_path_hash, timecode, status,"
            " local_md5sum, local_size, local_mtime, registered_at, remote_md5sum, copied_at,"
            " failed_copy_attempts, deletable) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            data,
        )
        conn.commit()
    # every old timecode dir is finalized already, as it would be in a long-running ledger
    conn.executemany(
        "INSERT INTO suprsync_timecode_dirs (archive_name, timecode, completed, synced, finalized) VALUES (?,?,1,1,1)",
        [(ARCHIVE, t) for t in range(tc, tc + rows // 40_000 + 1)],
    )
    conn.commit()
    conn.close()


def idle_loop(db_path: Path, remote: str, ssh: SshOptions, iterations: int = 20) -> list[float]:
    manager = SupRsyncFilesManager(str(db_path))
    backend = SshRsyncBackend(remote, ssh)
    settings = EngineSettings(ARCHIVE, str(db_path.parent / "fileroot"), "bench-sync", delete_after=30 * 86400)
    engine = SupRsyncEngine(lambda: manager, backend, settings)
    engine.iterate()  # first iteration: opens connections, counts the ledger once
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        report = engine.iterate()
        times.append(time.perf_counter() - started)
        if not report.ok or any(b.size for b in report.batches):
            raise SystemExit(f"idle loop did work or failed: {report.errors}")
    manager.dispose()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="repeat both transfers, keep the best of each")
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_FILES_PER_BATCH, help="--files-per-batch (default: the agent's)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="suprsync-bench-"))
    sshd = start_sshd(work / "sshd")
    remote_dirs = []
    try:
        ssh = SshOptions(sshd.shell_destination, port=sshd.port, key_file=str(sshd.client_key),
                         known_hosts_file=str(sshd.known_hosts))  # fmt: skip
        src = work / "src"
        entries = make_tree(src, args.files, args.size)
        print(f"{args.files} files of {args.size} B over ssh to {ssh.destination} port {sshd.port}, "
              f"files per batch {args.batch}")  # fmt: skip
        base_times, ours, regs = [], [], []
        for r in range(args.rounds):
            d1 = sshd.make_remote_dir()
            d2 = sshd.make_remote_dir()
            remote_dirs += [d1, d2]
            # Same starting point for both: dirty pages flushed; the order alternates per round.
            for which in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
                os.sync()
                if which == "bare":
                    base_times.append(baseline(src, str(d1), ssh))
                else:
                    elapsed, registered = suprsync_run(entries, str(d2), ssh, work / f"ledger{r}.db", args.batch)
            check_remote(entries, d2)
            ours.append(elapsed)
            regs.append(registered)
            print(f"  round {r + 1}: bare rsync -a + md5sum {base_times[-1]:.2f} s; "
                  f"suprsync {elapsed:.2f} s (registration {registered:.2f} s)")  # fmt: skip
        b, o = min(base_times), min(ours)
        print(f"bare rsync -a + remote md5sum: {b:.2f} s = {args.files / b:.0f} files/s")
        print(f"suprsync register+copy+verify: {o:.2f} s = {args.files / o:.0f} files/s "
              f"(registration alone {min(regs) * 1000:.0f} ms = {args.files / min(regs):.0f} files/s)")  # fmt: skip
        ratios = sorted(x / y for x, y in zip(ours, base_times, strict=True))
        print(f"ratio suprsync / bare: {o / b:.2f} best against best (target <= 1.3); "
              f"per round: median {statistics.median(ratios):.2f}, worst {ratios[-1]:.2f}")  # fmt: skip
        # Registration is the producer's cost, paid as each file is written; the agent's own
        # work is the copy and the verification.
        copy_only = sorted((x - g) / y for x, g, y in zip(ours, regs, base_times, strict=True))
        print(f"ratio copy+verify alone / bare: median {statistics.median(copy_only):.2f}, "
              f"best {copy_only[0]:.2f}, worst {copy_only[-1]:.2f}")  # fmt: skip

        if args.rows:
            ledger = work / "million.db"
            started = time.perf_counter()
            fill_ledger(ledger, args.rows)
            print(f"ledger of {args.rows} copied files filled in {time.perf_counter() - started:.1f} s")
            d3 = sshd.make_remote_dir()
            remote_dirs.append(d3)
            times = idle_loop(ledger, str(d3), ssh)
            print(f"idle loop over {args.rows} rows: median {statistics.median(times) * 1000:.1f} ms, "
                  f"max {max(times) * 1000:.1f} ms ({len(times)} iterations)")  # fmt: skip
    finally:
        sshd.stop()
        for d in remote_dirs:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
