"""ssh/rsync option building, checked against a real sshd with a pinned host key."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from hpcsync.agents.core.process import CommandError, run_command
from hpcsync.agents.core.ssh import SshConfigError, SshOptions, remote_command, rsync_base_argv, ssh_diagnosis

HOSTILE_NAMES = [
    "with space.dat",
    "quote'and\"double.dat",
    "-leading-dash.dat",
    "new\nline.dat",
    "ünïcødé ✓.dat",
    "$(touch pwned).dat",
]


def test_options_never_prompt_and_time_out():
    opts = SshOptions("alice@example.org", port=2222, key_file="/k/id", connect_timeout=7).options()
    joined = " ".join(opts)
    assert "BatchMode=yes" in joined and "ConnectTimeout=7" in joined
    assert "StrictHostKeyChecking=yes" in joined
    assert opts[opts.index("-i") + 1] == "/k/id" and opts[opts.index("-p") + 1] == "2222"


def test_host_key_checking_off_only_when_asked():
    joined = " ".join(SshOptions("h", host_key_checking="off").options())
    assert "StrictHostKeyChecking=no" in joined and "UserKnownHostsFile=/dev/null" in joined


@pytest.mark.parametrize("bad", ["-oProxyCommand=evil", "user@host with space", "host;rm -rf /", "", "a@b@c"])
def test_malformed_destinations_are_refused(bad):
    with pytest.raises(SshConfigError, match="host"):
        SshOptions(bad)


def test_rsync_options_are_validated():
    with pytest.raises(SshConfigError, match="bwlimit"):
        rsync_base_argv(bwlimit="10; rm -rf /")
    with pytest.raises(SshConfigError, match="chmod"):
        rsync_base_argv(chmod="a+r --delete")
    argv = rsync_base_argv(compress=True, bwlimit="5M", chmod="g+rwX,o+rX")
    assert argv[:2] == ["rsync", "--protect-args"] and "--compress" in argv and "--bwlimit=5M" in argv


def test_remote_command_quotes_every_word():
    assert remote_command(["md5sum", "--", "a b", "-x"]) == "md5sum -- 'a b' -x"


def test_ssh_diagnosis_names_the_reason_and_never_the_key():
    changed = (
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
        "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
        "The fingerprint for the ED25519 key sent by the remote host is\nSHA256:AbCdEfGh123.\n"
        "Offending ED25519 key in /etc/hpcsync/known_hosts:3\nHost key verification failed.\n"
    )
    why = ssh_diagnosis(changed)
    assert "CHANGED" in why and "/etc/hpcsync/known_hosts" in why and "AbCdEfGh123" not in why
    assert "not in known_hosts" in ssh_diagnosis("Host key verification failed.\n")
    assert "key was refused" in ssh_diagnosis("sync@h: Permission denied (publickey).\n")
    assert "refused" in ssh_diagnosis("ssh: connect to host h port 22: Connection refused\n")
    assert ssh_diagnosis("rsync error: some files could not be transferred (code 23)") is None


def _client_options(sshd, known_hosts) -> SshOptions:
    return SshOptions(
        sshd.shell_destination, port=sshd.port, key_file=str(sshd.client_key), known_hosts_file=str(known_hosts)
    )


@pytest.mark.integration
def test_hostile_names_survive_ssh_and_rsync(sshd, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(HOSTILE_NAMES):
        (src / name).write_bytes(f"payload {i}\n".encode())
    remote = sshd.make_remote_dir()
    opts = SshOptions(
        sshd.shell_destination, port=sshd.port, key_file=str(sshd.client_key), known_hosts_file=str(sshd.known_hosts)
    )
    run_command([*rsync_base_argv(ssh=opts), "-rt", f"{src}/", opts.rsync_remote(f"{remote}/")], timeout=60)
    for i, name in enumerate(HOSTILE_NAMES):
        out = run_command(opts.ssh_argv(["md5sum", "--", f"{remote}/{name}"]), timeout=30).stdout
        assert hashlib.md5(f"payload {i}\n".encode()).hexdigest() in out
    assert not (remote / "pwned").exists()


@pytest.mark.integration
def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    opts = _client_options(sshd, empty)
    with pytest.raises(CommandError, match=r"(?i)host key"):
        run_command(opts.ssh_argv(["true"]), timeout=30)


@pytest.mark.integration
def test_unreachable_host_fails_fast_without_prompting(sshd):
    opts = SshOptions("nobody@127.0.0.1", port=1, connect_timeout=2, host_key_checking="off")
    with pytest.raises(CommandError, match="ssh exited with status 255"):
        run_command(opts.ssh_argv(["true"]), timeout=20)


@pytest.mark.integration
def test_sftp_only_user_cannot_run_commands(sshd):
    result = subprocess.run(
        ["ssh", *sshd.ssh_argv(), sshd.sftp_destination, "id"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
