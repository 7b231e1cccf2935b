"""Sphinx configuration for the hpcsync docs (built warning-free with ``-W`` in CI)."""

project = "hpcsync"
author = "hpcsync developers"
copyright = "2026, hpcsync developers"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinxarg.ext"]
exclude_patterns = ["_build", "agents/_template.rst"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_mock_imports = []
nitpicky = False
