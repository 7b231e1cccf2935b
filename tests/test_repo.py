"""What keeps main landable: lint, format, a warning-free docs build, a working registry."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from hpcsync.agents import plugin

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_lint_is_clean():
    result = subprocess.run([BIN / "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout


def test_ruff_format_is_clean():
    result = subprocess.run(
        [BIN / "ruff", "format", "--check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout


def test_docs_build_without_warnings(tmp_path):
    result = subprocess.run(
        [BIN / "sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs", str(tmp_path / "html")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "html" / "architecture.html").exists()


def test_every_registered_agent_loads_and_has_a_docs_page():
    for agent_class, entry in plugin.agents.items():
        module = importlib.import_module(entry["module"])
        assert callable(getattr(module, entry["entry_point"])), agent_class
        parser = module.make_parser(None)
        assert parser.format_help()
        short = entry["module"].split(".")[-2]
        assert (ROOT / "docs" / "agents" / f"{short}.rst").exists(), f"{agent_class} has no docs page"


def test_the_registry_lists_every_agent_package_once_and_everything_derives_from_it():
    from hpcsync.agents import registry
    from hpcsync.agents.cli import build_parser

    packages = sorted(p.parent.name for p in (ROOT / "agents").glob("*/agent.py"))
    assert sorted(e.package for e in registry.AGENTS) == packages
    assert len({e.agent_class for e in registry.AGENTS}) == len(registry.AGENTS)
    assert set(plugin.agents) == {e.agent_class for e in registry.AGENTS}
    commands = build_parser()._subparsers._group_actions[0].choices
    for entry in registry.AGENTS:
        assert entry.has_cli == (entry.cli_command in commands), entry


def test_agent_modules_hold_op_declarations_only():
    """``agent.py`` declares ops; run/stop plumbing lives in the core job runner."""
    from hpcsync.agents import registry
    from hpcsync.agents.core.skeleton import AgentShell, declared_ops

    for entry in registry.AGENTS:
        module = importlib.import_module(entry.module)
        (shell,) = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, AgentShell)
                    and v is not AgentShell]  # fmt: skip
        ops = declared_ops(shell)
        assert ops, entry
        own = {n for n, v in vars(shell).items() if callable(v) and not isinstance(v, type) and not n.startswith("__")}
        assert own == set(ops), f"{entry.agent_class} defines non-op methods: {sorted(own - set(ops))}"
        for name in ops:
            assert (getattr(shell, name).__doc__ or "").strip().startswith(f"{name}("), (entry, name)


def test_ocs_finds_the_hpcsync_plugin():
    from importlib.metadata import entry_points

    from ocs.agent_cli import build_agent_list

    assert "hpcsync" in {ep.name for ep in entry_points(group="ocs.plugins")}
    agents = build_agent_list()
    for agent_class in plugin.agents:
        assert agents[agent_class]["module"] == plugin.agents[agent_class]["module"]


def test_a_normal_install_carries_migrations_and_entry_points(tmp_path):
    """The wheel (not only the editable install) has what agents need at run time."""
    import zipfile

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("hpcsync-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "hpcsync/db/migrations/env.py" in names
    assert "hpcsync/db/migrations/versions/0001_initial.py" in names
    assert "hpcsync/agents/core/process.py" in names
    assert "hpcsync = hpcsync.agents.cli:main" in entry_points
    assert "hpcsync = hpcsync.agents.plugin" in entry_points
