"""EpnAlert's engine: which EPNs on the Synchrotron's host does no project claim, and mail once.

One check (:meth:`EpnAlertEngine.check`):

1. list the EPN directories under the source root (``/data/<beamline>/``) over rsync/ssh or
   sftp; each name is checked (:mod:`hpcsync.agents.mxsync.epns`): a hostile one is refused
   and reported, never used;
2. *unknown* EPNs are those whose numeric base is not in ``epn_cap_map`` (as ASSyncy);
3. the portal's visits of the last ``visit-day-range`` days add the experiment's date and
   scientists (a portal outage is reported; the mail then goes without details);
4. the EPNs **due** are the unknown ones never alerted, or last alerted more than the
   reminder interval ago (ledger ``epnalert_alerts``); none due means no mail;
5. with ``send``: the mail is rendered and sent, and only then are the EPNs recorded as
   alerted. Without it: rendered only, nothing recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from hpcsync.agents.core.transfer import Backend, RemoteUnreachable
from hpcsync.agents.core.transfer.tree import list_dirs
from hpcsync.agents.mxsync.epns import name_problem, project_for
from hpcsync.agents.mxsync.portal import PORTAL_TZ, PortalClient, PortalError, Visit
from hpcsync.db import Database
from hpcsync.db.dialect import chunked, insert_ignore
from hpcsync.db.models import EpnAlertAlert

from .mail import MailSettings, Templates, build_message, deliver

log = logging.getLogger("hpcsync.epnalert")
_T = EpnAlertAlert.__table__


def format_scientists(people: tuple[dict, ...] | list[dict]) -> str:
    """First name, last name, email in aligned columns (ASSyncy used tabulate)."""
    rows = [("First name", "Last name", "Email")] + [
        (p.get("first_names", ""), p.get("last_name", ""), p.get("email", "")) for p in people
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_epns(epns: list[str], per_row: int = 8) -> str:
    """EPNs sorted, ``per_row`` to a line (ASSyncy's layout)."""
    epns = sorted(epns)
    return "\n".join("  ".join(epns[i : i + per_row]) for i in range(0, len(epns), per_row))


@dataclass
class AlertReport:
    send: bool
    source: str
    listed: int = 0
    unknown: list[str] = field(default_factory=list)
    due: list[str] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    with_details: list[str] = field(default_factory=list)
    portal_error: str | None = None
    host_error: str | None = None
    mail_error: str | None = None
    sent_to: str | None = None
    text: str = ""
    html: str = ""
    idle: str | None = None

    @property
    def ok(self) -> bool:
        return self.host_error is None and self.mail_error is None

    @property
    def degraded(self) -> bool:
        return not self.ok or bool(self.portal_error or self.refused)

    def message(self) -> str:
        if self.idle:
            return self.idle
        if self.host_error:
            return f"cannot list the EPNs: {self.host_error}"
        parts = [f"{self.listed} EPN directories, {len(self.unknown)} claimed by no project, {len(self.due)} due"]
        if not self.due:
            parts.append("no mail")
        elif self.sent_to:
            parts.append(f"mail sent to {self.sent_to}")
        elif self.mail_error:
            parts.append(f"mail NOT sent: {self.mail_error}")
        else:
            parts.append("mail rendered, not sent (send=True sends it)")
        if self.portal_error:
            parts.append(f"without visit details: {self.portal_error}")
        if self.refused:
            parts.append(f"{len(self.refused)} names refused: {self.refused[0]}")
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        return {
            "send": self.send,
            "source": self.source,
            "listed": self.listed,
            "unknown": self.unknown[:100],
            "due": self.due[:100],
            "not_due": self.not_due[:100],
            "with_details": self.with_details[:100],
            "refused": self.refused[:20],
            "portal_error": self.portal_error,
            "host_error": self.host_error,
            "mail_error": self.mail_error,
            "sent_to": self.sent_to,
            "text": self.text[:4000],
        }

    def feed_records(self) -> list[tuple[str, str, dict]]:
        return [
            (
                "alerts",
                "check",
                {"listed": self.listed, "unknown": len(self.unknown), "due": len(self.due), "sent": bool(self.sent_to)},
            )
        ]


class EpnAlertEngine:
    def __init__(
        self,
        *,
        backend: Backend,
        portal: PortalClient | None,
        db: Callable[[], Database],
        scope: str,
        epn_map: dict[str, str],
        visit_day_range: float,
        templates: Templates,
        mail: MailSettings,
        reminder_days: float = 7.0,
        run_at: str = "01:00",
        timeout: float = 120.0,
        cancel: threading.Event | None = None,
        clock: Callable[[], datetime] | None = None,
        local_clock: Callable[[], datetime] | None = None,
    ):
        self.backend = backend
        self.portal = portal
        self._db = db
        self.scope = scope
        self.epn_map = epn_map
        self.visit_day_range = visit_day_range
        self.templates = templates
        self.mail = mail
        self.reminder_days = reminder_days
        self.run_at = run_at
        self.timeout = timeout
        self.cancel = cancel or threading.Event()
        self.clock = clock or (lambda: datetime.now(PORTAL_TZ))
        self.local_clock = local_clock or datetime.now
        self._last_day: str | None = None

    def close(self) -> None:
        if self.portal is not None:
            self.portal.close()

    # -- the check -----------------------------------------------------------------------------

    def check(self, *, send: bool) -> AlertReport:
        report = AlertReport(send=send, source=self.backend.describe())
        try:
            names = list_dirs(self.backend, "", timeout=self.timeout, cancel=self.cancel)
        except (RemoteUnreachable, OSError) as exc:
            report.host_error = str(exc)
            return report
        report.listed = len(names)
        for name in names:
            why = name_problem(name)
            if why:
                report.refused.append(f"EPN directory {name!r} on {self.backend.describe()} is refused: {why}")
            elif project_for(name, self.epn_map) is None:
                report.unknown.append(name)
        if not report.unknown:
            return report
        visits = self._visits(report)
        alerted = self._last_alerted(report.unknown)
        cutoff = time.time() - self.reminder_days * 86400
        for epn in sorted(report.unknown):
            (report.due if alerted.get(epn, 0) < cutoff else report.not_due).append(epn)
        if not report.due:
            return report
        details, bare = [], []
        for epn in report.due:
            visit = visits.get(epn)
            if visit is None:
                bare.append(epn)
                continue
            report.with_details.append(epn)
            ps = visit.principal_scientist
            details.append(
                f"Epn {epn} on {visit.start.isoformat()} is not known.\n"
                f"Principal scientist: {ps.get('first_names', '')} {ps.get('last_name', '')} {ps.get('email', '')}\n"
                f"It includes scientists: \n{format_scientists(visit.data_scientists)}\n"
                "** Please add it the config. **\n\n"
            )
        variables = {
            "epn_details": "".join(details),
            "unknown_epns": format_epns(bare),
            "epns": [{"epn": e, "visit": visits.get(e)} for e in report.due],
            "now": self.clock(),
        }
        report.text, report.html = self.templates.render(variables)
        if not send:
            return report
        message = build_message(self.mail, report.text, report.html)
        try:
            report.sent_to = deliver(self.mail, message)
        except OSError as exc:
            report.mail_error = str(exc)
            log.error("EpnAlert mail: %s", exc)
            return report
        self._record(report.due)
        return report

    def _visits(self, report: AlertReport) -> dict[str, Visit]:
        if self.portal is None:
            return {}
        now = self.clock()
        try:
            visits, _problems = self.portal.all_visits(now - timedelta(days=self.visit_day_range), now)
        except PortalError as exc:
            report.portal_error = str(exc)
            return {}
        return {v.epn: v for v in visits}

    # -- the alert ledger ----------------------------------------------------------------------

    def _last_alerted(self, epns: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        with self._db().session() as s:
            for part in chunked(epns):
                rows = s.execute(
                    select(_T.c.epn, _T.c.last_alerted_at).where(_T.c.scope == self.scope, _T.c.epn.in_(part))
                )
                found.update(dict(rows.all()))
        return found

    def _record(self, epns: list[str]) -> None:
        now = time.time()
        recipients = ", ".join(self.mail.to)
        with self._db().session() as s:
            insert_ignore(
                s,
                _T,
                [
                    {
                        "scope": self.scope,
                        "epn": e,
                        "first_alerted_at": now,
                        "last_alerted_at": now,
                        "times_alerted": 0,
                        "recipients": recipients,
                    }
                    for e in epns
                ],
            )
            for part in chunked(epns):
                s.execute(
                    update(_T)
                    .where(_T.c.scope == self.scope, _T.c.epn.in_(part))
                    .values(last_alerted_at=now, times_alerted=_T.c.times_alerted + 1, recipients=recipients)
                )

    def alerts(self, limit: int = 1000) -> list[dict]:
        with self._db().session() as s:
            rows = s.execute(
                select(_T.c.epn, _T.c.first_alerted_at, _T.c.last_alerted_at, _T.c.times_alerted)
                .where(_T.c.scope == self.scope)
                .order_by(_T.c.epn)
                .limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    # -- the daily process ---------------------------------------------------------------------

    def daily(self, *, send: bool) -> AlertReport:
        """One tick of the ``run`` process: the check once a day, at or after ``run_at`` (local time)."""
        now = self.local_clock()
        hour, minute = (int(x) for x in self.run_at.split(":"))
        today = now.strftime("%Y-%m-%d")
        if self._last_day == today or (now.hour, now.minute) < (hour, minute):
            report = AlertReport(send=send, source=self.backend.describe())
            report.idle = f"next check {'tomorrow' if self._last_day == today else 'today'} at {self.run_at}"
            return report
        report = self.check(send=send)
        if report.ok:
            self._last_day = today
        return report
