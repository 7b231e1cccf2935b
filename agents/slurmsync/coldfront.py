"""The ColdFront/myBRC/myLRC API as SlurmSync uses it.

Built on :class:`hpcsync.agents.core.http.ApiClient` (timeouts, bounded retries on 5xx and
timeouts, :class:`ApiAuthError` on 401/403). Lists follow every ``next`` link, each page
once (the original scripts fetched page 1 twice, built ``/api//jobs`` and stopped silently
after 50 pages). Job upserts go out concurrently through
:func:`hpcsync.agents.core.http.json_sender`, one persistent connection per worker thread.

The token file holds what the seed's config files held: ``Token <key>`` (a bare key is
accepted and prefixed). The header value lives only in the sessions' headers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from hpcsync.agents.core.http import ApiAuthError, ApiClient, ApiError, ApiUnavailable, RetryPolicy, json_sender
from hpcsync.agents.core.secrets import Secret

SERVICE_UNITS = "Service Units"


def authorization_header(token: Secret) -> str:
    """``Token <key>`` whether the file holds the whole header value or the bare key."""
    value = token.reveal().strip()
    return value if value.lower().startswith("token ") else f"Token {value}"


@dataclass(frozen=True)
class Allocation:
    id: int
    project: str
    resource: str
    start_date: str | None
    status: str
    end_date: str | None = None


@dataclass(frozen=True)
class PushResult:
    """What one PUT did: ``outcome`` is pushed, rejected, unavailable, auth or skipped."""

    jobslurmid: str
    outcome: str
    http_status: int | None = None
    error: str | None = None


class ColdFrontApi:
    """The endpoints SlurmSync needs, on one base URL with one token."""

    def __init__(
        self,
        base_url: str,
        token: Secret,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 1.0,
        cancel: threading.Event | None = None,
    ):
        self.base_url = base_url
        self._header = {"Authorization": authorization_header(token)}
        self._options = {"timeout": timeout, "retries": retries, "backoff": backoff, "cancel": cancel}
        self._local = threading.local()
        self._clients: list[ApiClient] = []
        self._clients_lock = threading.Lock()
        self._sender = json_sender(base_url, self._header, RetryPolicy(**self._options))

    def __repr__(self) -> str:
        return f"ColdFrontApi({self.base_url!r})"

    @property
    def client(self) -> ApiClient:
        """This thread's client (requests sessions are not shared between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = ApiClient(self.base_url, headers=self._header, **self._options)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    @property
    def requests_made(self) -> int:
        with self._clients_lock:
            made = sum(c.requests_made for c in self._clients)
        return made + self._sender.requests_made

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients:
                client.session.close()
        self._sender.close()

    # -- reads -----------------------------------------------------------------------------

    def list_all(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict]:
        """Every result of a paginated list, following ``next`` (each page fetched once)."""
        for number, page in enumerate(self.client.paginate(path, params), 1):
            results = page["results"]
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise _malformed(f"GET {path} page {number}", "'results' is not a list of objects")
            yield from results

    def projects(self) -> list[dict]:
        projects = list(self.list_all("projects/"))
        for index, project in enumerate(projects):
            if not isinstance(project.get("name"), str) or not project["name"].strip():
                raise _malformed("GET projects/", f"project #{index + 1} has no 'name' ({_shape(project)})")
        return projects

    def compute_allocation(self, project: str, resource: str) -> Allocation | None:
        """The project's allocation of ``resource`` (an Active one first), or None.

        The server answers 400 when it knows no such project or resource name; that also
        means "no allocation" here.
        """
        try:
            data = self.client.get_json("allocations/", {"project": project, "resources": resource})
        except ApiError as exc:
            if exc.status == 400:
                return None
            raise
        where = f"GET allocations/ of project {project}"
        results = _results(data, where)
        if not results:
            return None
        chosen = next((a for a in results if a.get("status") == "Active"), results[0])
        if not isinstance(chosen.get("id"), int) or isinstance(chosen.get("id"), bool):
            raise _malformed(where, f"the allocation has no integer 'id' ({_shape(chosen)})")
        start, end = (_date_text(chosen.get(key)) for key in ("start_date", "end_date"))
        return Allocation(chosen["id"], project, resource, start, str(chosen.get("status", "")), end)

    def service_units(self, allocation_id: int) -> tuple[Decimal | None, Decimal | None]:
        """(allocated SUs, used SUs) of an allocation; None where the API has no value."""
        data = self.client.get_json(f"allocations/{allocation_id}/attributes/", {"type": SERVICE_UNITS})
        results = _results(data, f"GET allocations/{allocation_id}/attributes/")
        if not results:
            return None, None
        usage = results[0].get("usage")
        return _decimal(results[0].get("value")), _decimal(usage.get("value") if isinstance(usage, dict) else None)

    def running_jobs(self, start: datetime, end: datetime) -> list[dict]:
        """Jobs the API lists as RUNNING whose **start date** lies in [start, end]."""
        params = {"jobstatus": "RUNNING", "start_time": int(start.timestamp()), "end_time": int(end.timestamp())}
        jobs = list(self.list_all("jobs/", params))
        for index, job in enumerate(jobs):
            job_id = job.get("jobslurmid")
            if isinstance(job_id, bool) or not isinstance(job_id, (str, int)) or not str(job_id).strip():
                raise _malformed("GET jobs/?jobstatus=RUNNING", f"job #{index + 1} has no 'jobslurmid' ({_shape(job)})")
        return jobs

    def jobs(
        self, account: str, start: datetime, end: datetime, user: str | None = None
    ) -> tuple[list[dict], Decimal | None]:
        """An account's (and user's) jobs whose start date lies in [start, end], and the
        server's ``total_amount`` over them."""
        params = {"account": account, "start_time": int(start.timestamp()), "end_time": int(end.timestamp())}
        if user:
            params["user"] = user
        where = f"GET jobs/?account={account}" + (f"&user={user}" if user else "")
        jobs: list[dict] = []
        total: Decimal | None = None
        for number, page in enumerate(self.client.paginate("jobs/", params), 1):
            results = page["results"]
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise _malformed(f"{where} page {number}", "'results' is not a list of objects")
            if number == 1:
                total = _decimal(page.get("total_amount"))  # a JSON number: cents again
                total = None if total is None else total.quantize(Decimal("0.01"))
            for job in results:
                if not isinstance(job.get("jobslurmid"), (str, int)) or isinstance(job.get("jobslurmid"), bool):
                    raise _malformed(where, f"a job has no 'jobslurmid' ({_shape(job)})")
            jobs.extend(results)
        return jobs, total

    def allocation_users(self, project: str, resource: str) -> list[dict]:
        """The members of a project's allocation of ``resource`` (``id``, ``user``, ``status``)."""
        users = list(self.list_all("allocation_users/", {"project": project, "resources": resource}))
        for member in users:
            if not isinstance(member.get("id"), int) or not isinstance(member.get("user"), str):
                raise _malformed(f"GET allocation_users/?project={project}", f"no 'id' or 'user' ({_shape(member)})")
        return users

    def user_service_units(self, allocation_user_id: int) -> tuple[Decimal | None, Decimal | None]:
        """(allocated SUs, used SUs) of one member of an allocation."""
        path = f"allocation_users/{allocation_user_id}/attributes/"
        results = _results(self.client.get_json(path, {"type": SERVICE_UNITS}), f"GET {path}")
        if not results:
            return None, None
        usage = results[0].get("usage")
        return _decimal(results[0].get("value")), _decimal(usage.get("value") if isinstance(usage, dict) else None)

    # -- writes ----------------------------------------------------------------------------

    def put_job(self, payload: dict) -> PushResult:
        """PUT (upsert) one job; never raises for a job-level problem, says what happened."""
        jobslurmid = payload["jobslurmid"]
        path = f"jobs/{quote(jobslurmid, safe='')}/"
        try:
            status = self._sender.send("PUT", path, payload)
        except ApiAuthError as exc:
            return PushResult(jobslurmid, "auth", exc.status, str(exc))
        except ApiUnavailable as exc:
            return PushResult(jobslurmid, "unavailable", exc.status, str(exc))
        except ApiError as exc:
            return PushResult(jobslurmid, "rejected", exc.status, str(exc))
        return PushResult(jobslurmid, "pushed", status)


def _date_text(value: Any) -> str | None:
    """An allocation date as text (``YYYY-MM-DD``), or None when it is missing or not text."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.split(".", 1)[0]


def _malformed(where: str, detail: str) -> ApiError:
    return ApiError(f"{where}: the API's answer is not in the expected shape: {detail}")


def _shape(item: Any) -> str:
    """The keys of an object from the API (never its values, which may be long or private)."""
    return f"keys: {', '.join(sorted(map(str, item)))[:200]}" if isinstance(item, dict) else type(item).__name__


def _results(data: Any, where: str) -> list[dict]:
    """The ``results`` list of a list answer; ApiError naming ``where`` if it has none."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise _malformed(where, "expected an object with a 'results' list of objects")
    return results


def _decimal(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None
