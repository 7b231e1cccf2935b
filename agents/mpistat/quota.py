"""Group quotas: from a command (``lfs quota -gq <group> <mount>``) or a quota CSV.

lurge ran ``lfs quota -gq GROUP /lustre/scratchNNN``, split the output on whitespace and
took field 3, the hard block **limit** in KiB (``filesystem kbytes quota limit grace files
...``), times 1024. A long filesystem name puts the numbers on the next line, which the
split does not mind; Lustre marks a group over quota with ``*`` after the number, which is
stripped. When the command fails (lurge: the ``mercury`` account is not in the group), the
CSV for the volume is used (lurge HEAD: ``group,limit`` in KiB), else the quota is unknown.
"""

from __future__ import annotations

import csv
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path

from hpcsync.agents.core.process import CommandError, run_command

from .errors import MpistatError

KIB = 1024


def parse_lfs_quota(output: str) -> int | None:
    """Bytes of the hard block limit in ``lfs quota -q`` output, or None if unreadable."""
    fields = output.split()
    if len(fields) < 4:
        return None
    value = fields[3].rstrip("*")
    return int(value) * KIB if value.isdigit() else None


def read_quota_csv(path: str | Path) -> dict[str, int]:
    """``{group: bytes}`` from a ``group,limit`` CSV (limit in KiB); MpistatError naming
    the file and line on a bad row."""
    quotas: dict[str, int] = {}
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"group", "limit"} <= set(reader.fieldnames):
                raise MpistatError(f"quota CSV {path}: the header must name the columns group and limit")
            for row in reader:
                limit = (row.get("limit") or "").strip()
                if not limit.isdigit():
                    raise MpistatError(f"quota CSV {path} line {reader.line_num}: limit {limit!r} is not a whole "
                                       "number of KiB")  # fmt: skip
                quotas[row["group"].strip()] = int(limit) * KIB
    except OSError as exc:
        raise MpistatError(f"quota CSV {path} cannot be read: {exc.strerror or exc}") from None
    return quotas


@dataclass
class QuotaSource:
    """Where quotas come from: a command template (``{group}``, ``{mount}``, ``{volume}``
    are filled in per argument) and/or a directory of ``<volume>.csv`` files."""

    command: str | None = None
    csv_dir: str | None = None
    mounts: dict[str, str] | None = None
    timeout: float = 60.0

    def __post_init__(self) -> None:
        self._csv: dict[str, dict[str, int]] = {}
        self._argv = shlex.split(self.command) if self.command else None

    def mount(self, volume: str) -> str:
        return (self.mounts or {}).get(volume) or f"/lustre/{volume}"

    def quota(self, volume: str, group: str, cancel: threading.Event | None = None) -> int | None:
        if self._argv:
            values = {"group": group, "mount": self.mount(volume), "volume": volume}
            argv = [part.format(**values) for part in self._argv]
            try:
                result = run_command(argv, timeout=self.timeout, cancel=cancel)
                limit = parse_lfs_quota(result.stdout)
                if limit is not None:
                    return limit
            except CommandError:
                pass
        return self._from_csv(volume).get(group)

    def _from_csv(self, volume: str) -> dict[str, int]:
        if not self.csv_dir:
            return {}
        if volume not in self._csv:
            base = Path(self.csv_dir)
            found = next((p for p in (base / f"{volume}.csv", base / volume) if p.is_file()), None)
            self._csv[volume] = read_quota_csv(found) if found else {}
        return self._csv[volume]
