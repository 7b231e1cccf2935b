"""The Australian Synchrotron portal API as MxSync and EpnAlert use it.

Built on :class:`hpcsync.agents.core.http.ApiClient` (timeouts, bounded retries on 5xx,
timeouts and connection errors). For each ``equipment`` entry of the configuration:

- **token**: ``POST {base}/api/v1/oauth/token`` with HTTP Basic client credentials and the
  form ``username``, ``password``, ``grant_type=password``; the token is ``data.access_token``;
- **visits**: ``GET {base}/api/v1/equipment/{id}/visits?access_token=...&start_time=...&
  end_time=...`` → ``data.visits``; on 401 (token expired) one new token and one retry.

Unlike ASSyncy, a failed call is an error (:class:`PortalError`), never an empty list: an
empty list would read as "no visits" and hide an outage. The token rides in the query
string, as the API requires, so it is kept out of every message: errors name the URL
without its query, and :func:`install_log_redaction` masks ``access_token=...`` in the
debug log lines of ``urllib3`` (which print request URLs). Passwords are
:class:`~hpcsync.agents.core.secrets.Secret` values that never print themselves.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hpcsync.agents.core.http import ApiAuthError, ApiClient, ApiError
from hpcsync.agents.core.secrets import Secret

#: The portal's time zone: times without an offset are Melbourne time.
PORTAL_TZ = ZoneInfo("Australia/Melbourne")
_TOKEN_RE = re.compile(r"(access_token=)[^&\s'\"]+")


class PortalError(ApiError):
    """The portal could not be asked, refused the credentials or answered nonsense."""


def redact_token(text: str) -> str:
    """``text`` with the value of every ``access_token=`` parameter replaced by ``***``."""
    return _TOKEN_RE.sub(r"\1***", text)


class _RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "access_token" in str(record.msg) or any("access_token" in str(a) for a in (record.args or ())):
            record.msg = redact_token(record.getMessage())
            record.args = ()
        return True


def install_log_redaction() -> None:
    """Mask portal tokens in the log lines of the HTTP stack (urllib3 logs request URLs)."""
    for name in ("urllib3.connectionpool", "requests", "hpcsync.agents.core.http"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())


@dataclass(frozen=True)
class Equipment:
    """One ``equipment`` entry: a beamline id and the credentials that read its visits."""

    id: str
    username: str
    password: Secret
    client_name: str
    client_password: Secret

    def __repr__(self) -> str:
        return f"Equipment({self.id!r}, user {self.username!r}, client {self.client_name!r})"


@dataclass(frozen=True)
class Visit:
    """One visit (experiment) as the portal lists it."""

    epn: str
    equipment_id: str
    start: datetime
    end: datetime
    principal_scientist: dict[str, str] = field(default_factory=dict)
    data_scientists: tuple[dict[str, str], ...] = ()


def parse_time(value: Any, what: str) -> datetime:
    """A portal time (ISO 8601; no offset means Melbourne time); ValueError naming ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {value[:40]!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=PORTAL_TZ)


def _person(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: str(value.get(k) or "") for k in ("first_names", "last_name", "email")}


class PortalClient:
    """The portal for a list of equipment entries (one token each).

    :param base_url: e.g. ``https://portal.synchrotron.org.au:443``.
    """

    def __init__(
        self,
        base_url: str,
        equipment: Sequence[Equipment],
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 1.0,
        cancel: threading.Event | None = None,
    ):
        install_log_redaction()
        self.base_url = base_url.rstrip("/")
        self.equipment = list(equipment)
        self.api = ApiClient(self.base_url + "/", timeout=timeout, retries=retries, backoff=backoff, cancel=cancel)
        self._tokens: dict[str, Secret] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PortalClient({self.base_url!r}, equipment {[e.id for e in self.equipment]})"

    @property
    def requests_made(self) -> int:
        return self.api.requests_made

    def close(self) -> None:
        self.api.session.close()

    # -- token -----------------------------------------------------------------------------

    def authenticate(self, equipment: Equipment) -> Secret:
        """A fresh access token for ``equipment`` (PortalError if refused)."""
        where = f"portal {self.base_url}, equipment {equipment.id}"
        try:
            resp = self.api.request(
                "POST",
                "api/v1/oauth/token",
                auth=(equipment.client_name, equipment.client_password.reveal()),
                data={
                    "username": equipment.username,
                    "password": equipment.password.reveal(),
                    "grant_type": "password",
                },
            )
        except ApiAuthError as exc:
            raise PortalError(
                f"{where}: the portal refused the API client {equipment.client_name!r} or the user "
                f"{equipment.username!r} (HTTP {exc.status}); check client_name/client_password and "
                "username/password",
                status=exc.status,
            ) from None
        except ApiError as exc:
            raise PortalError(
                f"{where}: cannot get an access token: {redact_token(str(exc))}", status=exc.status
            ) from None
        try:
            body = resp.json()
        except ValueError:
            raise PortalError(f"{where}: the token answer is not JSON") from None
        token = body.get("data", {}).get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            meta = body.get("meta", {}) if isinstance(body, dict) else {}
            why = meta.get("error_message") if isinstance(meta, dict) else None
            raise PortalError(f"{where}: the token answer holds no data.access_token ({why or 'no reason given'})")
        secret = Secret(token, f"portal token for equipment {equipment.id}")
        with self._lock:
            self._tokens[equipment.id] = secret
        return secret

    def _token(self, equipment: Equipment) -> Secret:
        with self._lock:
            token = self._tokens.get(equipment.id)
        return token if token is not None else self.authenticate(equipment)

    # -- visits ----------------------------------------------------------------------------

    def visits(self, equipment: Equipment, start: datetime, end: datetime) -> tuple[list[Visit], list[str]]:
        """Visits of ``equipment`` overlapping ``start``..``end``, and one line per visit the
        portal listed that cannot be read (skipped). Raises PortalError on any failure."""
        where = f"portal {self.base_url}, visits of equipment {equipment.id}"
        params = {"start_time": start.isoformat(), "end_time": end.isoformat()}
        for attempt in (1, 2):
            token = self._token(equipment)
            try:
                resp = self.api.request(
                    "GET", f"api/v1/equipment/{equipment.id}/visits", params={"access_token": token.reveal(), **params}
                )
                break
            except ApiAuthError as exc:
                if exc.status == 401 and attempt == 1:
                    self.authenticate(equipment)  # expired: one new token, one retry (as ASSyncy)
                    continue
                raise PortalError(
                    f"{where}: HTTP {exc.status}: the portal refused the access token"
                    + (" even just after issuing it" if exc.status == 401 else "; the user lacks access to it"),
                    status=exc.status,
                ) from None
            except ApiError as exc:
                raise PortalError(f"{where}: {redact_token(str(exc))}", status=exc.status) from None
        try:
            body = resp.json()
        except ValueError:
            raise PortalError(f"{where}: the answer is not JSON (HTTP {resp.status_code})") from None
        rows = (
            body.get("data", {}).get("visits")
            if isinstance(body, dict) and isinstance(body.get("data"), dict)
            else None
        )
        if not isinstance(rows, list):
            raise PortalError(f"{where}: the answer holds no data.visits list")
        visits, problems = [], []
        for n, row in enumerate(rows):
            try:
                visits.append(self._visit(row, equipment.id))
            except ValueError as exc:
                problems.append(f"{where}: visit #{n + 1} skipped: {exc}")
        return visits, problems

    @staticmethod
    def _visit(row: Any, equipment_id: str) -> Visit:
        if not isinstance(row, dict):
            raise ValueError("it is not an object")
        epn = row.get("epn")
        if not isinstance(epn, str) or not epn:
            raise ValueError("it has no epn")
        scientists = row.get("data_scientists") or []
        return Visit(
            epn=epn,
            equipment_id=equipment_id,
            start=parse_time(row.get("start_time"), f"start_time of EPN {epn!r}"),
            end=parse_time(row.get("end_time"), f"end_time of EPN {epn!r}"),
            principal_scientist=_person(row.get("principal_scientist")),
            data_scientists=tuple(_person(p) for p in scientists if isinstance(p, dict))
            if isinstance(scientists, list)
            else (),
        )

    def all_visits(self, start: datetime, end: datetime) -> tuple[list[Visit], list[str]]:
        """Visits of every equipment entry; PortalError as soon as one cannot be read."""
        visits: list[Visit] = []
        problems: list[str] = []
        for equipment in self.equipment:
            found, bad = self.visits(equipment, start, end)
            visits += found
            problems += bad
        return visits, problems
