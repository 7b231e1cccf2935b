"""EPN names: which are accepted, and which project an EPN belongs to.

An EPN (experiment) name becomes a directory name twice: the source ``/data/<beamline>/<epn>/``
and the destination ``<root>/<project>/<epn>/data/``. Names come from the portal and from
the remote listing, neither of which hpcsync controls, so a name is accepted only if it is
one plain path component: letters, digits, ``.``, ``_`` and ``-``, not starting with ``.``
or ``-`` (an option to rsync or ssh), at most 64 characters. Anything else (``../x``,
``/abs``, ``a;rm``, a newline, ``-e``) is refused with a sentence saying why.

The project is found as ASSyncy does: the EPN's leading digits (``12282`` of ``12282a``)
are looked up in ``epn_cap_map``.
"""

from __future__ import annotations

import re

MAX_LENGTH = 64
_ALLOWED = re.compile(r"[A-Za-z0-9._-]")
_BASE = re.compile(r"([0-9]+)")


class EpnNameError(ValueError):
    """An EPN name (or a project name) that cannot be a directory name."""


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be an EPN or project directory name, or None if it can."""
    if not isinstance(name, str):
        return f"it is not text but {type(name).__name__}"
    if not name:
        return "it is empty"
    if "/" in name:
        return "it contains '/' (a path, not a name)"
    if ".." in name:
        return "it contains '..'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a control character (newline, tab ...)"
    if name.startswith("-"):
        return "it starts with '-' and would read as an option"
    if name.startswith("."):
        return "it starts with '.' (a hidden name)"
    bad = sorted({c for c in name if not _ALLOWED.fullmatch(c)})
    if bad:
        return f"it contains {', '.join(repr(c) for c in bad)}; names are letters, digits, '.', '_' and '-'"
    if len(name) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    return None


def check_epn(name: object, source: str) -> str:
    """``name`` if it is an acceptable EPN name, else EpnNameError naming ``source``."""
    why = name_problem(name)
    if why:
        raise EpnNameError(f"EPN name {name!r} from {source} is refused: {why}")
    return name  # type: ignore[return-value]


def epn_base(epn: str) -> str | None:
    """The numeric base of an EPN (``12282`` of ``12282a``), or None if it has none."""
    m = _BASE.match(epn)
    return m.group(1) if m else None


def project_for(epn: str, epn_map: dict[str, str]) -> str | None:
    """The project (CAP) an EPN belongs to per ``epn_cap_map``, or None."""
    base = epn_base(epn)
    return epn_map.get(base) if base is not None else None
