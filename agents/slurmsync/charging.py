"""When the server charges a job: its date rule, so SlurmSync can predict and audit charges.

The myBRC/myLRC server stores every job it validates, but moves the project's and the user's
usage only for a job whose dates pass ``validate_job_dates`` (``coldfront/core/statistics/
utils_/accounting_utils.py``):

- the job has a submit and a start date (and, for a PUT, an end date);
- the allocation has a start date, and the job started on or after its first instant;
- for a PUT to a project of a *periodic* computing allowance (myBRC: ``fc_``, ``ic_``,
  ``pc_``), the allocation also has an end date, and the job ended by its last instant.

Allocation dates are days in the server's display time zone (``America/Los_Angeles`` for
both myBRC and myLRC): ``2024-06-01`` starts at 07:00 UTC. A job that fails the rule is
stored and answered 200 all the same, which is why a 200 alone does not say "charged".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .coldfront import Allocation


def _day(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip()[:10])
    except ValueError:
        return None


@dataclass(frozen=True)
class ChargeRule:
    """The server's date rule for one project's allocation."""

    project: str
    allocation_start: datetime | None
    #: the last instant of the allocation's end date (None: it has none)
    allocation_end: datetime | None
    periodic: bool
    allocation_id: int | None = None

    @classmethod
    def of(cls, allocation: Allocation, periodic_prefixes: tuple[str, ...], zone: str) -> ChargeRule:
        tz = ZoneInfo(zone)
        start, end = _day(allocation.start_date), _day(allocation.end_date)
        first = datetime.combine(start, time.min, tz) if start else None
        last = datetime.combine(end + timedelta(days=1), time.min, tz) - timedelta(microseconds=1) if end else None
        return cls(allocation.project, first, last, allocation.project.startswith(periodic_prefixes), allocation.id)

    def why_uncharged(
        self, submit: datetime | None, start: datetime | None, end: datetime | None, *, put: bool = True
    ) -> str | None:
        """Why the server will store this job without charging it, or None if it charges it.

        ``put``: the job arrives by PUT (SlurmSync, the completion plugin), which needs an
        end date; a POST (the plugin's RUNNING record) does not check the end.
        """
        if submit is None or start is None or (put and end is None):
            return "the job has no submit, start or end date"
        if self.allocation_start is None:
            return f"the allocation of {self.project} has no start date"
        if start < self.allocation_start:
            return f"the job started before the allocation of {self.project} ({self.allocation_start.date()})"
        if not put or not self.periodic:
            return None
        if self.allocation_end is None:
            return f"the allocation of {self.project} (a periodic allowance) has no end date"
        if end is not None and end > self.allocation_end:
            return f"the job ended after the allocation of {self.project} ({self.allocation_end.date()})"
        return None
