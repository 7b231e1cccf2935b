"""Time zones: sacct prints the cluster's local time; the API gets unambiguous UTC.

The original scripts treated sacct's local-time strings as UTC, so every job they pushed
was off by the cluster's UTC offset. :class:`ClusterClock` reads sacct times in the
cluster's zone (an IANA name, or the machine's local zone when none is given) and
:func:`api_time` writes them as ISO 8601 UTC (``...Z``), which no server can misread.

sacct formats times in the zone of *its own* environment, so :meth:`ClusterClock.env` sets
``TZ`` for the sacct child to the same zone used for reading: the two cannot disagree.
Inside a DST fall-back hour a local time names two instants and sacct does not say which.
:meth:`ClusterClock.sacct_choices` gives both; the sacct parser picks, per job, the reading
that keeps Submit <= Start <= End and matches the job's elapsed time (CPUTimeRAW /
AllocCPUS), so a job that spans the change is neither negative nor short. Alone, a time is
read as the first instant (``fold=0``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hpcsync.agents.core.errors import ConfigError

#: How sacct prints times (``%Y-%m-%dT%H:%M:%S``), and what -S/-E accept.
SACCT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

_USER_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2})?)?$")


class ClusterClock:
    """Reads and writes the cluster's local times.

    :param zone: IANA zone name of the cluster (``America/Los_Angeles``); ``None`` or
        ``""`` means the zone of the machine the agent runs on.
    """

    def __init__(self, zone: str | None = None):
        self.zone_name = zone or None
        if self.zone_name:
            try:
                self.zone: ZoneInfo | None = ZoneInfo(self.zone_name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(
                    f"cluster time zone {self.zone_name!r} is not a known IANA zone name (e.g. America/Los_Angeles)"
                ) from None
        else:
            self.zone = None

    def __repr__(self) -> str:
        return f"ClusterClock({self.zone_name or 'local'})"

    @property
    def label(self) -> str:
        return self.zone_name or "local time of this machine"

    def env(self) -> dict[str, str]:
        """Environment for sacct so that it prints times in this clock's zone."""
        return {"TZ": self.zone_name} if self.zone_name else {}

    def localize(self, naive: datetime) -> datetime:
        """The instant a cluster-local wall-clock time names (aware, UTC)."""
        if self.zone is not None:
            return naive.replace(tzinfo=self.zone).astimezone(UTC)  # keeps naive.fold
        # astimezone() on a naive datetime applies the machine's zone rules (DST included).
        return naive.astimezone().astimezone(UTC)

    def sacct_choices(self, text: str) -> tuple[datetime, ...]:
        """Every instant a sacct time field can name: none (Unknown), one, or two (DST fall-back).

        Raises ValueError for anything that is not a sacct time.
        """
        if not text or text in ("Unknown", "None", "N/A"):
            return ()
        if len(text) != 19 or text[10] != "T":
            raise ValueError(f"expected {SACCT_TIME_FORMAT}")
        naive = datetime.fromisoformat(text)
        first = self.localize(naive)
        second = self.localize(naive.replace(fold=1))
        return (first,) if second == first else (first, second)

    def parse_sacct(self, text: str) -> datetime | None:
        """A sacct time field as an aware UTC datetime; ``None`` for Unknown/None/empty.

        Raises ValueError for anything else (the caller names line and field).
        """
        if not text or text in ("Unknown", "None", "N/A"):
            return None
        if len(text) != 19 or text[10] != "T":
            raise ValueError(f"expected {SACCT_TIME_FORMAT}")
        return self.localize(datetime.fromisoformat(text))

    def sacct_arg(self, when: datetime) -> str:
        """``when`` as a -S/-E argument (cluster-local wall clock)."""
        local = when.astimezone(self.zone) if self.zone is not None else when.astimezone()
        return local.strftime(SACCT_TIME_FORMAT)

    def parse_user_time(self, text: str, what: str) -> datetime:
        """An operator's ``YYYY-MM-DD[THH:MM[:SS]]`` (cluster-local) or ISO 8601 with offset."""
        text = (text or "").strip()
        try:
            if _USER_TIME.match(text):
                return self.localize(datetime.fromisoformat(text))
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                raise ValueError
            return parsed.astimezone(UTC)
        except ValueError:
            raise ConfigError(
                f"{what} {text!r} is not a time: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS "
                f"(in {self.label}) or ISO 8601 with an offset"
            ) from None

    def now(self) -> datetime:
        return datetime.now(UTC)

    def period_start(self, month: int, day: int = 1, now: datetime | None = None) -> datetime:
        """Start of the current allocation period: ``month-day`` 00:00 cluster time.

        This year's if that date has been reached, else last year's (MyBRC: 06-01,
        MyLRC: 10-01), matching the server's allowance years.
        """
        now = now or self.now()
        local_now = now.astimezone(self.zone) if self.zone is not None else now.astimezone()
        year = local_now.year if (local_now.month, local_now.day) >= (month, day) else local_now.year - 1
        return self.localize(datetime(year, month, day))

    def date_start(self, date_text: str) -> datetime:
        """Midnight (cluster time) of an API date such as an allocation's ``start_date``."""
        text = (date_text or "").strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not a date: {text!r}") from None
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
        return self.localize(datetime(parsed.year, parsed.month, parsed.day))


def api_time(when: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``: what the API gets for every date."""
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hours_between(start: datetime, end: datetime) -> float:
    """Elapsed hours between two aware instants (DST changes cannot distort it)."""
    return (end - start) / timedelta(hours=1)
