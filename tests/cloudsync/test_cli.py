"""``hpcsync sync`` as a process, on files the kernel really refuses to it.

The suite runs as root, and root reads a mode-000 file anyway (CAP_DAC_OVERRIDE). So the CLI
runs as root *without* CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv`` drops them from
the bounding set before exec, as ``docker run --cap-drop`` does): the kernel then applies a
file's mode to it like to any user, and ``open()`` of a mode-000 file fails with EACCES. (A
plain unprivileged user cannot run this venv's interpreter, which lives under /root.)
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from hpcsync.agents.core.process import run_command

NO_DAC = "-dac_override,-dac_read_search"


def _cli_args(rig) -> list[str]:
    flags = {"endpoint_url": "--endpoint-url", "region": "--region", "credentials_file": "--credentials-file"}
    args = ["--remote", rig.remote, "--user", "alice", "--config-dir", str(rig.tmp / "cfg"),
            "--db", f"sqlite:///{rig.tmp / 'cli.db'}"]  # fmt: skip
    for key, value in rig.backend_options.items():
        args += [flags[key], str(value)]
    return args


def _push_without_dac_override(rig, name: str):
    """``hpcsync sync push NAME`` as root stripped of the capabilities that bypass file modes."""
    argv = ["setpriv", f"--bounding-set={NO_DAC}", f"--inh-caps={NO_DAC}", "--",
            sys.executable, "-m", "hpcsync.agents.cli", "sync", "push", name, *_cli_args(rig)]  # fmt: skip
    return run_command(argv, timeout=120, check=False, cwd=str(rig.tmp))


def test_the_kernel_refuses_the_reads_here():
    argv = ["setpriv", f"--bounding-set={NO_DAC}", f"--inh-caps={NO_DAC}", "--",
            sys.executable, "-c", "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])"]  # fmt: skip
    effective = int(run_command(argv, timeout=60).stdout.strip(), 16)
    assert not effective & (1 << 1) and not effective & (1 << 2), hex(effective)  # DAC_OVERRIDE, DAC_READ_SEARCH


def test_unreadable_files_and_directories_are_reported_and_the_rest_is_synced(rig, tmp_path):
    home = tmp_path / "home"
    (home / "locked").mkdir(parents=True)
    (home / "keep.txt").write_text("keep")
    (home / "edit.txt").write_text("version 1")
    (home / "later-locked.txt").write_text("readable once")
    (home / "locked" / "inner.txt").write_text("inside")
    rig.engine(home).store.add("data", str(home))

    first = _push_without_dac_override(rig, "data")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Sync ... OK" in first.stdout
    data = rig.stored / "data"
    assert (data / "later-locked.txt").read_text() == "readable once" and (data / "locked" / "inner.txt").exists()

    (home / "edit.txt").write_text("version 2")
    os.chmod(home / "later-locked.txt", 0)
    os.chmod(home / "locked", 0)
    (home / "new-secret.bin").write_text("never readable")
    os.chmod(home / "new-secret.bin", 0)
    os.mkfifo(home / "pipe")
    try:
        second = _push_without_dac_override(rig, "data")
    finally:
        os.chmod(home / "locked", 0o755)
    out, err = second.stdout, second.stderr
    assert second.returncode == 1, out + err
    assert "Permissions ... OK" in out and "Sync ... FAIL" in out
    assert "1 file(s) sent" in out and "4 not synced" in out, out
    for path, why in (("later-locked.txt", "not readable: Permission denied"),
                      ("new-secret.bin", "not readable: Permission denied"),
                      ("locked", "directory not readable: Permission denied"),
                      ("pipe", "not a regular file")):  # fmt: skip
        assert f"! {path!r}: {why}" in err, err

    # the rest went; what could not be read keeps its remote copy and its manifest entry
    assert (data / "edit.txt").read_text() == "version 2" and (data / "keep.txt").read_text() == "keep"
    assert (data / "later-locked.txt").read_text() == "readable once"
    assert (data / "locked" / "inner.txt").read_text() == "inside"
    assert not (data / "new-secret.bin").exists() and not (data / "pipe").exists()
    manifest = json.loads((rig.stored / "data.hpcsync.json").read_text())["files"]
    assert {"keep.txt", "edit.txt", "later-locked.txt", "locked/inner.txt"} <= set(manifest)
    assert "new-secret.bin" not in manifest and "pipe" not in manifest


@pytest.mark.parametrize("rig", ["localdir"], indirect=True)
def test_a_push_with_nothing_unreadable_exits_0_after_a_failed_one(rig, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "a.txt").write_text("a")
    (home / "b.txt").write_text("b")
    os.chmod(home / "b.txt", 0)
    rig.engine(home).store.add("data", str(home))
    failed = _push_without_dac_override(rig, "data")
    assert failed.returncode == 1 and "'b.txt': not readable" in failed.stderr
    assert not (rig.stored / "data" / "b.txt").exists()
    os.chmod(home / "b.txt", 0o644)
    fixed = _push_without_dac_override(rig, "data")
    assert fixed.returncode == 0 and "Sync ... OK" in fixed.stdout, fixed.stdout + fixed.stderr
    assert (rig.stored / "data" / "b.txt").read_text() == "b"
