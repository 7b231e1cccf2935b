"""Sphinx configuration for the hpcsync docs (built warning-free with ``-W`` in CI)."""

project = "hpcsync"
author = "hpcsync developers"
copyright = "2026, hpcsync developers"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinxarg.ext"]
exclude_patterns = ["_build", "agents/_template.rst", "agents/_generated_index.rst"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_mock_imports = []
nitpicky = False


def _write_agent_index() -> None:
    """``agents/_generated_index.rst``: the agents' toctree and table, from the registry."""
    from pathlib import Path

    from hpcsync.agents.registry import AGENTS

    lines = [".. toctree::", "   :maxdepth: 1", ""]
    lines += [f"   {entry.package}" for entry in AGENTS]
    lines += ["", ".. list-table::", "   :header-rows: 1", "", "   * - agent class", "     - job"]
    for entry in AGENTS:
        lines += [f"   * - :doc:`{entry.agent_class} <{entry.package}>`", f"     - {entry.summary}"]
    target = Path(__file__).parent / "agents" / "_generated_index.rst"
    text = "\n".join(lines) + "\n"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


_write_agent_index()
