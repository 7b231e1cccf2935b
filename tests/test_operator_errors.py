"""An operator's first hour (issue 9): each mistake gets one line naming what is wrong and
how to fix it, before anything starts. The table is mistake -> the exact message.

The site-config checks run in process (``hpcsync check``); the ledger commands run with the
site config a test writes (``--site-file``) or the one ``$OCS_CONFIG_DIR`` names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcsync.agents.cli import build_parser, main
from hpcsync.agents.core import daemon
from hpcsync.agents.core.siteconfig import DEMO_SITE_FILE, known_agent_classes
from services import free_port

REPO = Path(__file__).resolve().parents[1]
HPCSYNC = [sys.executable, "-m", "hpcsync.agents.cli"]


def _suprsync(iid: str, base: Path, archive: str = "demo", **extra) -> dict:
    args = {
        "--archive-name": archive,
        "--remote-basedir": str(base / "remote"),
        "--db-path": str(base / "ledger.db"),
        "--suprsync-file-root": str(base / "root"),
    }
    args.update(extra)
    return {"agent-class": "SupRsync", "instance-id": iid, "arguments": [[k, v] for k, v in args.items()]}


def _site(tmp_path: Path, instances: list, host_key: str = "agent-instances", **top) -> Path:
    port = free_port()
    path = tmp_path / "site.yaml"
    raw = {
        "hub": {
            "wamp_server": f"ws://127.0.0.1:{port}/ws",
            "wamp_http": f"http://127.0.0.1:{port}/call",
            "wamp_realm": "test_realm",
            "address_root": "observatory",
        },
        "hosts": {"localhost": {host_key: instances}},
        **top,
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _dirs(base: Path) -> Path:
    for name in ("remote", "root"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return base


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def problems(capsys, site: Path) -> list[str]:
    code, _out, err = run(capsys, "check", "--site-file", str(site), "--site-host", "localhost")
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].endswith("problem(s); nothing was started")
    return [line.removeprefix("hpcsync check: ") for line in lines[:-1]]


# -- the site config: items 3, 4, 5, 6 ------------------------------------------------------


def test_a_good_site_config_passes(tmp_path, capsys):
    site = _site(tmp_path, [_suprsync("sync-1", _dirs(tmp_path))])
    code, out, err = run(capsys, "check", "--site-file", str(site), "--site-host", "localhost")
    assert (code, err) == (0, "")
    assert out.strip().splitlines()[-1] == f"{site}: no problems found"


def test_site_config_mistakes_each_give_one_line(tmp_path, capsys):
    base = _dirs(tmp_path)
    (tmp_path / "a-dir.db").mkdir()
    pg_port = free_port()  # nothing listens there
    instances = [
        _suprsync("typo-arg", base, **{"--remote-basdir": "/x"}),  # 6
        {"agent-class": "SupRsnc", "instance-id": "typo-class", "arguments": []},  # 5
        _suprsync("db-is-dir", base, **{"--db-path": str(tmp_path / "a-dir.db")}),  # 3
        _suprsync("db-no-parent", base, **{"--db-path": str(tmp_path / "nowhere" / "l.db")}),  # 3
        _suprsync("db-unreachable", base, **{"--db-path": f"postgresql+psycopg://u@127.0.0.1:{pg_port}/x"}),  # 3
        _suprsync("no-root", base, **{"--suprsync-file-root": str(tmp_path / "missing-root")}),
        _suprsync("bad-value", base, **{"--sleep-time": "soon"}),
        {"agent-class": "SupRsync", "instance-id": "no-args", "intance": 1},
        _suprsync("no-policy", base, **{"--access-policy": f"file:{tmp_path / 'policy.yaml'}"}),
    ]
    site = _site(tmp_path, instances, hubb=1)
    classes = ", ".join(sorted(known_agent_classes()))
    found = problems(capsys, site)
    expected = [
        f"{site}: unknown key 'hubb' (did you mean 'hub'?)",
        f"{site}: no-args: unknown key 'intance' (did you mean 'instance-id'?)",
        f"{site}: typo-arg: unknown argument --remote-basdir; did you mean --remote-basedir?",
        f"{site}: typo-class: unknown agent-class 'SupRsnc' (did you mean 'SupRsync'?); known: {classes}",
        f"{site}: db-is-dir: --db-path {tmp_path / 'a-dir.db'}: is a directory, not a SQLite file",
        f"{site}: db-no-parent: --db-path {tmp_path / 'nowhere' / 'l.db'}: directory {tmp_path / 'nowhere'} "
        "does not exist (create it, or pass --create-directories)",
        f"{site}: no-root: --suprsync-file-root {tmp_path / 'missing-root'}: directory does not exist "
        "(create it, or pass --create-directories)",
        f"{site}: bad-value: argument --sleep-time: invalid float value: 'soon'",
        f"{site}: no-args: missing required argument(s): --archive-name, --remote-basedir, --db-path, "
        "--suprsync-file-root",
        f"{site}: no-policy: --access-policy file {tmp_path / 'policy.yaml'} does not exist",
    ]
    for line in expected:
        assert line in found, f"{line!r} not in {found}"
    (unreachable,) = [p for p in found if p.startswith(f"{site}: db-unreachable:")]
    assert unreachable.startswith(
        f"{site}: db-unreachable: --db-path postgresql+psycopg://u@127.0.0.1:{pg_port}/x: cannot be reached: "
    )
    assert "refused" in unreachable.lower()
    assert len(found) == len(expected) + 1, found
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "missing-root").exists()


def test_agent_instance_instead_of_agent_instances(tmp_path, capsys):
    site = _site(tmp_path, [_suprsync("sync-1", _dirs(tmp_path))], host_key="agent-instance")
    assert problems(capsys, site) == [
        f"{site}: hosts.localhost: unknown key 'agent-instance' (did you mean 'agent-instances'?)",
        f"{site}: hosts.localhost: no 'agent-instances' list, so no agent would start",
    ]


def test_missing_directories_are_created_only_when_asked(tmp_path, capsys):
    site = _site(tmp_path, [_suprsync("sync-1", tmp_path / "demo")])
    assert len(problems(capsys, site)) == 3  # ledger dir, file root, remote dir
    code, out, _ = run(capsys, "check", "--site-file", str(site), "--create-directories")
    assert code == 0 and f"created --remote-basedir directory {tmp_path / 'demo' / 'remote'}" in out
    assert (tmp_path / "demo" / "remote").is_dir()


def test_site_config_asking_for_directories_gets_them_at_up_only(tmp_path, capsys):
    site = _site(tmp_path, [_suprsync("sync-1", tmp_path / "demo")], **{"create-directories": True})
    code, out, _ = run(capsys, "check", "--site-file", str(site))
    assert code == 0
    remote = tmp_path / "demo" / "remote"
    assert f"--remote-basedir directory {remote} does not exist; 'hpcsync up' will create it" in out
    assert not (tmp_path / "demo").exists()


def test_a_failing_check_starts_nothing(tmp_path):
    site = _site(tmp_path, [{"agent-class": "SupRsnc", "instance-id": "x", "arguments": []}])
    run_dir = tmp_path / "run"
    up = subprocess.run([*HPCSYNC, "up", "--site-file", str(site), "--run-dir", str(run_dir)],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert up.returncode == 1
    assert up.stderr.splitlines()[-1] == "hpcsync up: 1 problem(s); nothing was started"
    assert "Traceback" not in up.stderr + up.stdout
    assert not (run_dir / "pids").exists() or not list((run_dir / "pids").iterdir())


# -- the ledger the CLI uses: items 1, 2, 7 ------------------------------------------------


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """A site config with one SupRsync instance whose ledger exists, found by $OCS_CONFIG_DIR."""
    base = _dirs(tmp_path / "demo")
    config = tmp_path / "config"
    config.mkdir()
    site = _site(config, [_suprsync("suprsync-demo", base)])
    site.rename(config / "default.yaml")
    monkeypatch.setenv("OCS_CONFIG_DIR", str(config))
    monkeypatch.delenv("SUPRSYNC_DB", raising=False)
    data = tmp_path / "f.dat"
    data.write_text("payload")
    return {"site": config / "default.yaml", "ledger": base / "ledger.db", "data": data, "tmp": tmp_path}


def test_the_demo_comment_command_works_as_written(tmp_path):
    """Item 1: the commands in site-configs/default.yaml's comments run as written."""
    lines = [line for line in DEMO_SITE_FILE.read_text().splitlines() if "hpcsync suprsync" in line]
    assert lines, "the demo documents how to register a file"
    parser = build_parser()
    for line in lines:
        argv = line.split("hpcsync", 1)[1].split("#")[0].split()
        args = parser.parse_args(argv)  # no 'unrecognized arguments'
        assert args.instance == "suprsync-demo"


def test_ledger_options_before_or_after_the_action(demo, capsys):
    ledger, data = str(demo["ledger"]), str(demo["data"])
    code, out, err = run(capsys, "suprsync", "add", "--db", ledger, "--archive", "demo", "--create", data, "a/f.dat")
    assert (code, err) == (0, "")
    assert out.strip() == f"registered {data} -> a/f.dat in archive demo of ledger {ledger} (id 1)"
    code, out, _ = run(capsys, "suprsync", "--db", ledger, "--archive", "demo", "add", data, "a/g.dat")
    assert code == 0 and "(id 2)" in out


def test_add_without_db_uses_the_instance_ledger_and_names_it(demo, capsys):
    code, out, err = run(capsys, "suprsync", "add", "--create", str(demo["data"]), "a/f.dat")
    assert (code, err) == (0, "")
    assert out.strip() == f"registered {demo['data']} -> a/f.dat in archive demo of ledger {demo['ledger']} (id 1)"


LEDGER_MISTAKES = [
    # (item, argv after 'suprsync', exact stderr; {ledger}, {site}, {tmp} filled in)
    (
        "2: misspelt --db",
        ["add", "--db", "{tmp}/demo/ledgr.db", "--archive", "demo", "{data}", "a/f.dat"],
        "hpcsync suprsync: ledger {tmp}/demo/ledgr.db does not exist (pass --create to start a new one); "
        "the ledgers of {site}: {ledger} (instance suprsync-demo)",
    ),
    (
        "2: misspelt --archive",
        ["add", "--archive", "dmeo", "{data}", "a/f.dat"],
        "hpcsync suprsync: no SupRsync instance of {site} copies archive 'dmeo' from ledger {ledger} "
        "(did you mean 'demo'?); it serves: demo (pass --force to register anyway)",
    ),
    (
        "2: misspelt --instance",
        ["add", "--instance", "suprsync-dmeo", "{data}", "a/f.dat"],
        "hpcsync suprsync: no SupRsync instance 'suprsync-dmeo' in {site} (did you mean 'suprsync-demo'?); "
        "its SupRsync instances: suprsync-demo",
    ),
    (
        "2: --db and --instance disagree",
        ["add", "--instance", "suprsync-demo", "--db", "{tmp}/other.db", "{data}", "a/f.dat"],
        "hpcsync suprsync: --db {tmp}/other.db is not the ledger of instance suprsync-demo ({ledger}); "
        "give one or the other",
    ),
    (
        "2: list on a ledger that does not exist",
        ["list", "--db", "{tmp}/nothing.db"],
        "hpcsync suprsync: ledger {tmp}/nothing.db does not exist; the ledgers of {site}: {ledger} "
        "(instance suprsync-demo)",
    ),
    (
        "run without an instance or the settings",
        ["run", "--once", "--db-path", "{ledger}"],
        "hpcsync suprsync: run needs --instance NAME, or --archive-name, --remote-basedir, --suprsync-file-root",
    ),
]


@pytest.mark.parametrize(("item", "argv", "message"), LEDGER_MISTAKES, ids=[m[0] for m in LEDGER_MISTAKES])
def test_ledger_mistakes(demo, capsys, item, argv, message):
    fill = {"tmp": demo["tmp"], "data": demo["data"], "ledger": demo["ledger"], "site": demo["site"]}
    code, out, err = run(capsys, "suprsync", *[a.format(**fill) for a in argv])
    assert code == 1 and out == ""
    assert err.strip() == message.format(**fill)
    assert not (demo["tmp"] / "demo" / "ledgr.db").exists() and not (demo["tmp"] / "nothing.db").exists()


def test_several_instances_need_instance(demo, capsys, tmp_path):
    site = _site(tmp_path, [_suprsync("a", tmp_path / "a"), _suprsync("b", tmp_path / "b")])
    code, _out, err = run(capsys, "suprsync", "add", "--site-file", str(site), str(demo["data"]), "x")
    assert code == 1
    assert err.strip() == f"hpcsync suprsync: {site} has 2 SupRsync instances (a, b): pass --instance NAME"


def test_force_registers_into_an_unserved_archive(demo, capsys):
    code, out, _ = run(capsys, "suprsync", "add", "--create", "--archive", "other", "--force", str(demo["data"]), "x")
    assert code == 0 and "in archive other of ledger" in out


def test_list_says_what_it_lists_and_when_nothing_matches(demo, capsys):
    """Item 7."""
    run(capsys, "suprsync", "add", "--create", str(demo["data"]), "a/f.dat")
    code, out, err = run(capsys, "suprsync", "list")
    assert (code, err) == (0, "")
    assert out.strip() == f"no failed or missing files in ledger {demo['ledger']}"
    code, out, _ = run(capsys, "suprsync", "list", "--status", "pending")
    assert code == 0 and out.startswith("1\tdemo\tpending\t")
    listing = build_parser()._subparsers._group_actions[0].choices["suprsync"]
    help_text = listing._subparsers._group_actions[0].choices["list"].format_help()
    assert "failed' (attempt limit reached) and 'missing'" in " ".join(help_text.split())


# -- dry runs: item 9 ------------------------------------------------------------------------


def test_every_state_changing_op_is_a_dry_run_by_default():
    """Item 9: from ocs-web's generic panel (no parameters) no op changes state."""
    from hpcsync.agents.core.skeleton import declared_ops
    from hpcsync.agents.suprsync.agent import SupRsync

    for name, declaration in declared_ops(SupRsync).items():
        if not declaration.changes_state or declaration.kind == "process":
            continue
        params = dict(getattr(getattr(SupRsync, name), "_ocs_prescreen", []))
        assert params["dry_run"]["default"] is True, name


def test_cli_retry_is_a_dry_run_unless_apply(demo, capsys):
    run(capsys, "suprsync", "add", "--create", str(demo["data"]), "a/f.dat")
    code, out, _ = run(capsys, "suprsync", "retry")
    assert code == 0
    assert out.strip() == "0 failed or missing files of demo would be pending again (dry run; add --apply)"
    _code, out, _ = run(capsys, "suprsync", "retry", "--apply")
    assert out.strip() == "0 files of demo are pending again, with fresh attempts"


# -- lookup and help: items 8, 10 -------------------------------------------------------------


def test_site_config_is_found_from_any_directory(tmp_path):
    """Item 8: --site-file, then $OCS_CONFIG_DIR/default.yaml, then the repository's demo."""
    env = {k: v for k, v in os.environ.items() if k != "OCS_CONFIG_DIR"}
    done = subprocess.run([*HPCSYNC, "check"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{DEMO_SITE_FILE}: no problems found"
    (tmp_path / "cfg").mkdir()
    env["OCS_CONFIG_DIR"] = str(tmp_path / "cfg")
    done = subprocess.run([*HPCSYNC, "check"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    missing = tmp_path / "cfg" / "default.yaml"
    assert done.stderr.strip().splitlines()[0] == f"hpcsync check: site config {missing} does not exist"


def _all_help(parser) -> list[str]:
    texts = [parser.format_help()]
    for action in parser._actions:
        for sub in (getattr(action, "choices", None) or {}).values() if action.nargs == "A..." else ():
            texts += _all_help(sub)
    return texts


def test_help_has_no_restructuredtext():
    """Item 10."""
    texts = _all_help(build_parser())
    assert len(texts) > 10
    for text in texts:
        assert not re.search(r"``|:func:|:class:|:mod:|^\s*::\s*$", text, re.M), text


# -- issue 8, hostile runs item 6: the CLI shows failure ----------------------------------------


def test_run_once_reports_failed_files_and_quiet_migrations(demo, capsys):
    run(capsys, "suprsync", "add", "--create", str(demo["data"]), "a/f.dat")
    demo["data"].unlink()  # registered, then gone: the file goes missing
    argv = [*HPCSYNC, "suprsync", "run", "--instance", "suprsync-demo", "--once", "--max-copy-attempts", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"] is False and report["failed_files"] == 1
    assert "alembic" not in done.stderr.lower() and "Context impl" not in done.stderr
    assert "1 failed" in done.stderr


def test_run_once_names_an_unreachable_destination(demo, tmp_path):
    port = free_port()  # nothing listens: ssh is refused
    argv = [*HPCSYNC, "suprsync", "run", "--instance", "suprsync-demo", "--once", "--ssh-host", "nobody@127.0.0.1",
            "--ssh-port", str(port), "--ssh-host-key-checking", "off", "--ssh-connect-timeout", "3"]  # fmt: skip
    add = subprocess.run([*HPCSYNC, "suprsync", "add", "--create", str(demo["data"]), "a/f.dat"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert add.returncode == 0, add.stderr
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"] is False and report["errors"], report
    assert "connection was refused" in report["errors"][0]


def test_failed_up_leaves_no_hub_running(tmp_path):
    """Item 5: an agent that fails to start (here: a bad $CROSSBAR_TIMEOUT, which the site
    config cannot show) ends 'up' with its log, and the hub 'up' started is stopped again."""
    site = _site(tmp_path, [_suprsync("sync-1", _dirs(tmp_path))])
    run_dir = tmp_path / "run"
    env = dict(os.environ, CROSSBAR_TIMEOUT="soon")
    up = subprocess.run([*HPCSYNC, "up", "--site-file", str(site), "--run-dir", str(run_dir)],
                        capture_output=True, text=True, timeout=180, env=env)  # fmt: skip
    try:
        assert up.returncode == 1
        assert "sync-1: exited with status" in up.stdout and "invalid int value: 'soon'" in up.stdout
        assert "hub: stopped again, since not every agent started" in up.stdout
        assert up.stderr.strip() == "hpcsync up: 1 agent(s) failed to start: sync-1"
        assert not (run_dir / "pids" / "crossbar.pid").exists()
    finally:
        subprocess.run([*HPCSYNC, "down", "--site-file", str(site), "--run-dir", str(run_dir)], timeout=120)
    assert daemon.read_pid(run_dir / "pids" / "crossbar.pid") is None
