"""The real sacct/sacctmgr behind the engine and the ``hpcsync slurmsync`` commands (no hub)."""

from __future__ import annotations

import pytest

from hpcsync.agents.cli import main as hpcsync_main
from hpcsync.agents.slurmsync.clock import ClusterClock
from hpcsync.agents.slurmsync.slurm import SACCT_FORMAT, SacctDump, Slurm

from .conftest import ALICE, BOB, seed_world, write_profile, write_token

pytestmark = pytest.mark.integration


def test_a_saved_sacct_output_reads_exactly_like_live_sacct(slurm, tmp_path):
    """The dump format the CLI and the benchmark replay is what sacct really prints."""
    clock = ClusterClock("Asia/Tokyo")
    live = Slurm(clock, slurm_conf=str(slurm.cluster.conf))
    start, end = clock.parse_user_time("2020-01-01", "start"), clock.now()
    from_sacct = live.jobs_of_account("fc_beta", start, end)
    assert {j.state for j in from_sacct} >= {"FAILED", "COMPLETED", "RUNNING"}
    dump = tmp_path / "dump.txt"
    dump.write_text(
        slurm.cluster.run(["sacct", "-naPX", SACCT_FORMAT, "-A", "fc_beta", "-S", "2020-01-01"], env=clock.env()).stdout
    )

    def stable(jobs):  # a running job's CPUTimeRAW grows between two sacct calls
        return [j if not j.active else (j.job_id, j.state, j.start) for j in jobs]

    assert stable(SacctDump(dump, clock).jobs_of_account("fc_beta", start, end)) == stable(from_sacct)
    assert stable(live.jobs_by_id([j.job_id for j in from_sacct])) == stable(from_sacct)


def test_cli_reverse_sync_prints_and_writes_the_commands(slurm, emulator, tmp_path, capsys):
    seed_world(emulator, slurm.uids[ALICE], slurm.uids[BOB])
    profile = write_profile(tmp_path / "profiles.yaml", emulator.api_url)
    token = write_token(tmp_path / "token")
    argv = [
        "slurmsync", "reverse-sync", "-T", "testbrc", "--profile-file", str(profile), "--token-file", str(token),
        "--slurm-conf", str(slurm.cluster.conf), "--log-dir", str(tmp_path), "--db", f"sqlite:///{tmp_path}/l.db",
    ]  # fmt: skip
    assert hpcsync_main(argv) == 0
    out = capsys.readouterr().out
    assert "reverse sync of testbrc:" in out and "not applied: apply=True sets them" in out
    script = (tmp_path / "reverse_sync_output_testbrc.sh").read_text()
    for line in out.splitlines():
        if line.startswith("sacctmgr "):
            assert line in script
    assert (tmp_path / "reverse_sync_testbrc_debug.log").exists()
    assert hpcsync_main([*argv, "--sacctmgr", "/nonexistent/sacctmgr"]) == 1
    assert "cannot run /nonexistent/sacctmgr" in capsys.readouterr().out
