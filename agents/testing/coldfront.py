"""An emulator of the ColdFront/myBRC/myLRC REST API, for tests, demos and benchmarks.

It follows the real server (``ucb-rit/coldfront``, ``coldfront/api``; the answers below were
checked against a running server):

- **Auth**: DRF token authentication, header ``Authorization: Token <key>``. Every endpoint
  needs an authenticated, active user with an unexpired token (401 otherwise, with DRF's
  messages); writes need ``is_staff`` or ``is_superuser`` (403).
- **Pagination**: DRF ``PageNumberPagination``, 100 per page: ``count``, ``next``,
  ``previous`` (absolute URLs, query keys sorted), ``results``; ``?page=N`` past the end is
  404 ``Invalid page.``. The jobs list adds ``total_amount`` and ``total_cpu_time`` (numbers).
- **URLs**: the router's lookups match ``[^/.]+``, so an id containing ``.`` matches no URL
  (Django's HTML 404); an object that does not exist is 404 ``No <Model> matches the given
  query.``.
- ``GET /api/projects/`` (items carry ``status`` and ``field_of_science`` as integer ids,
  ``created``, ``modified``, ``force_review``, ``requires_review``); ``GET /api/allocations/
  ?project=&resources=`` (names the server does not know are 400, like django-filter's
  ModelMultipleChoiceFilter; a known resource the project has no allocation of is 200 with
  no results); ``GET /api/allocations/<id>/attributes/?type=Service Units`` with ``usage``;
  the same for ``/api/allocation_users/``.
- ``GET /api/jobs/`` filters ``user``, ``account``, ``jobstatus``, ``min_amount``,
  ``max_amount``, ``partition``, ``start_time``/``end_time`` (Unix, applied to **startdate**,
  default: the current allowance year), ordered by startdate.
- **Times** are stored and answered in UTC (``...Z``); a naive time is read as UTC. Dates
  (an allocation's ``start_date``/``end_date``, the allowance year) are days of the
  server's display time zone (``America/Los_Angeles``).
- **Usage rule** (``validate_job_dates``): ``POST /api/jobs/`` adds a new job's amount to
  the project's and the user's usage only if the job has submit and start dates, the
  allocation has a start date and the job started on or after it. ``PUT /api/jobs/<id>/``
  (an upsert, answered 200 whether it created or updated) moves usage (a new job: by its
  amount; an existing one: ``max(usage + (new - old), 0)``) only if, in addition, the job
  has an end date and, for the periodic allowances (prefixes ``fc_``, ``ic_``, ``pc_``), the
  allocation has an end date and the job ended on or before its last day. Otherwise the job
  is stored and answered 200 and usage is left alone. The body's ``jobslurmid`` names the
  job; the URL's id only picks the instance the serializer compares user and account with.
  ``PATCH`` answers 200 ``{"failure": "This method is not supported."}`` like the server.
- Serializer rules: chronological dates; the user must be an active member of the
  project's active compute allocation; an existing job's user and account cannot change;
  node errors are nested per node (``{"nodes": [{}, {"name": [...]}]}``).

For tests there is an admin side, in-process (methods of :class:`ColdFrontEmulator`) and
over HTTP under ``/_emulator/`` (no auth; loopback only): seed data, reset, count requests
per URL (to prove no page is fetched twice), read usage, and inject faults (answer 503
after N requests; or process a request and drop the connection before answering).

Run it standalone: ``python -m hpcsync.agents.testing.coldfront --port 8000 --seed seed.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo

from .http_emulator import HttpEmulator

PAGE_SIZE = 100
ALLOCATION_MIN = Decimal("0.00")
ALLOCATION_MAX = Decimal("100000000.00")
SERVICE_UNITS = "Service Units"
#: Project prefixes of myBRC's periodic computing allowances (FCA, ICA, PCA).
PERIODIC_PREFIXES = ("fc_", "ic_", "pc_")
#: ``ProjectStatusChoice`` ids as the server's ``add_default_project_choices`` creates them.
PROJECT_STATUS_IDS = {"New": 1, "Active": 2, "Archived": 3, "Denied": 4, "Inactive": 5}
#: ``FieldOfScience.DEFAULT_PK``: the field of science of a project nobody has described.
FIELD_OF_SCIENCE_DEFAULT = 149
#: Django's own 404 page (DEBUG off) for a URL no route matches, e.g. a job id with a ``.``.
DJANGO_NOT_FOUND = (
    '\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    "  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n"
)


class RawBody(str):
    """A body sent as it is (``text/html``), not as JSON: Django's own error pages."""


class ApiResponse(Exception):
    """Raised by handlers to answer at once with ``status`` and ``body``."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _validation_error(detail: Any) -> ApiResponse:
    if isinstance(detail, str):
        detail = [detail]
    return ApiResponse(400, detail)


# -- value conversions, the way DRF fields do them -----------------------------------------


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


class ColdFrontEmulator(HttpEmulator):
    """The API's data, its rules, and an HTTP server in a thread.

    :param period_start_month: first month of the allowance year (6 = myBRC, 10 = myLRC).
    :param time_zone: the server's display time zone (``DISPLAY_TIME_ZONE``): allocation
        dates and the allowance year are its days. Times are stored and answered in UTC.
    :param periodic_prefixes: project name prefixes of the periodic computing allowances,
        whose jobs are charged only if the allocation has an end date they ended by.
    """

    def __init__(
        self,
        *,
        period_start_month: int = 6,
        time_zone: str = "America/Los_Angeles",
        periodic_prefixes: tuple[str, ...] = PERIODIC_PREFIXES,
    ):
        self.period_start_month = period_start_month
        self.zone = ZoneInfo(time_zone)
        self.periodic_prefixes = tuple(periodic_prefixes)
        super().__init__()
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self.users: dict[str, dict] = {}
        self.tokens: dict[str, dict] = {}
        self.projects: dict[int, dict] = {}
        self.project_users: dict[tuple[str, str], str] = {}
        self.allocations: dict[int, dict] = {}
        self.allocation_users: dict[int, dict] = {}
        self.attributes: dict[int, dict] = {}
        self.user_attributes: dict[int, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.resources: set[str] = set()
        self._ids = Counter()
        self.requests: Counter[str] = Counter()
        self.faults: list[dict] = []
        self._release = threading.Event()

    def _next_id(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    # -- admin: data -----------------------------------------------------------------------

    def seed(self, spec: dict) -> None:
        """Add users, tokens and projects (each with a compute allocation and members).

        ``spec`` = ``{"users": [{"username", "cluster_uid"}], "tokens": [{"key", "username",
        "is_staff", "is_active", "expires"}], "resources": [names the server knows], "projects":
        [{"name", "resource", "service_units", "start_date", "end_date", "users": [usernames],
        "allocation_status"}]}``. The server charges a job only within its allocation's
        dates: give ``start_date`` and, for ``fc_``/``ic_``/``pc_`` projects, ``end_date``.
        """
        with self._lock:
            self.resources.update(spec.get("resources", []))
            for user in spec.get("users", []):
                self.add_user(user["username"], str(user["cluster_uid"]))
            for token in spec.get("tokens", []):
                self.add_token(
                    token["key"],
                    token["username"],
                    is_staff=token.get("is_staff", False),
                    is_superuser=token.get("is_superuser", False),
                    is_active=token.get("is_active", True),
                    expires=token.get("expires"),
                )
            for project in spec.get("projects", []):
                self.add_project(
                    project["name"],
                    resource=project.get("resource"),
                    service_units=project.get("service_units", "0.00"),
                    start_date=project.get("start_date"),
                    end_date=project.get("end_date"),
                    users=project.get("users", []),
                    allocation_status=project.get("allocation_status", "Active"),
                )

    def add_user(self, username: str, cluster_uid: str | None = None, **flags: Any) -> dict:
        with self._lock:
            user = self.users.setdefault(
                username,
                {"id": self._next_id("user"), "username": username, "cluster_uid": cluster_uid,
                 "is_active": True, "is_staff": False, "is_superuser": False},
            )  # fmt: skip
            if cluster_uid is not None:
                user["cluster_uid"] = cluster_uid
            user.update(flags)
            return user

    def add_token(
        self,
        key: str,
        username: str,
        *,
        is_staff: bool = False,
        is_superuser: bool = False,
        is_active: bool = True,
        expires: float | None = None,
    ) -> None:
        with self._lock:
            self.add_user(username, is_staff=is_staff, is_superuser=is_superuser, is_active=is_active)
            self.tokens[key] = {"username": username, "expires": expires}

    def add_project(
        self,
        name: str,
        *,
        resource: str | None,
        service_units: str = "0.00",
        start_date: str | None = None,
        end_date: str | None = None,
        users: list[str] = (),
        allocation_status: str = "Active",
    ) -> dict:
        with self._lock:
            now = datetime.now(UTC)
            project = {
                "id": self._next_id("project"), "created": now, "modified": now, "name": name, "title": name,
                "description": "", "field_of_science": FIELD_OF_SCIENCE_DEFAULT, "status": "Active",
                "force_review": False, "requires_review": True, "compute_resource": resource,
            }  # fmt: skip
            self.projects[project["id"]] = project
            if resource:
                self.resources.add(resource)
                allocation = {
                    "id": self._next_id("allocation"), "project": name, "resources": [resource],
                    "status": allocation_status, "quantity": 1, "start_date": start_date, "end_date": end_date,
                    "justification": "", "description": "", "is_locked": False,
                }  # fmt: skip
                self.allocations[allocation["id"]] = allocation
                attribute_id = self._next_id("attribute")
                self.attributes[attribute_id] = {
                    "id": attribute_id, "allocation_attribute_type": SERVICE_UNITS, "allocation": allocation["id"],
                    "value": str(service_units), "usage": Decimal("0.00"),
                }  # fmt: skip
                for username in users:
                    self.add_member(name, username, service_units=service_units)
            return project

    def add_member(self, project: str, username: str, *, service_units: str | None = None) -> None:
        """Make ``username`` an active member of ``project`` and of its compute allocation."""
        with self._lock:
            self.add_user(username)
            self.project_users[(project, username)] = "Active"
            allocation = self._compute_allocation(project, active_only=False)
            if allocation is None:
                return
            au_id = self._next_id("allocation_user")
            self.allocation_users[au_id] = {
                "id": au_id, "allocation": allocation["id"], "user": username, "status": "Active",
            }  # fmt: skip
            attribute = self._su_attribute(allocation["id"])
            ua_id = self._next_id("user_attribute")
            self.user_attributes[ua_id] = {
                "id": ua_id, "allocation_attribute_type": SERVICE_UNITS, "allocation": allocation["id"],
                "allocation_user": au_id, "value": str(service_units or attribute["value"]),
                "usage": Decimal("0.00"),
            }  # fmt: skip

    def set_usage(self, project: str, value: str | Decimal, username: str | None = None) -> None:
        """Set a usage by hand, as an administrator can (the project's, or one member's)."""
        with self._lock:
            allocation = self._compute_allocation(project, active_only=False)
            if username is None:
                self._su_attribute(allocation["id"])["usage"] = Decimal(str(value))
                return
            for au in self.allocation_users.values():
                if au["allocation"] == allocation["id"] and au["user"] == username:
                    self._user_su_attribute(au["id"])["usage"] = Decimal(str(value))
                    return
        raise KeyError(f"{username} is not in {project}'s allocation")

    def set_allocation_dates(self, project: str, *, start_date: str | None, end_date: str | None) -> None:
        """Change the dates of a project's compute allocation (as an administrator can)."""
        with self._lock:
            allocation = self._compute_allocation(project, active_only=False)
            allocation["start_date"], allocation["end_date"] = start_date, end_date

    def delete_job(self, jobslurmid: str) -> None:
        """Delete a job, usage untouched (an administrator's delete in Django's admin)."""
        with self._lock:
            del self.jobs[jobslurmid]

    def reset_jobs(self) -> None:
        """Forget every job and set every usage back to 0 (projects, users, tokens stay)."""
        with self._lock:
            self.jobs.clear()
            for attribute in (*self.attributes.values(), *self.user_attributes.values()):
                attribute["usage"] = Decimal("0.00")
            self.requests.clear()
            self.clear_faults()

    # -- admin: observation ----------------------------------------------------------------

    def request_count(self, method: str | None = None, path_prefix: str = "") -> int:
        with self._lock:
            return sum(
                n
                for key, n in self.requests.items()
                if (method is None or key.startswith(method + " ")) and key.split(" ", 1)[1].startswith(path_prefix)
            )

    def requests_by_url(self) -> dict[str, int]:
        with self._lock:
            return dict(self.requests)

    def usage(self, project: str) -> Decimal:
        with self._lock:
            allocation = self._compute_allocation(project, active_only=False)
            return self._su_attribute(allocation["id"])["usage"]

    def user_usage(self, project: str, username: str) -> Decimal:
        with self._lock:
            allocation = self._compute_allocation(project, active_only=False)
            for au in self.allocation_users.values():
                if au["allocation"] == allocation["id"] and au["user"] == username:
                    return self._user_su_attribute(au["id"])["usage"]
        raise KeyError(f"{username} is not in {project}'s allocation")

    def usage_report(self) -> dict[str, dict]:
        with self._lock:
            report = {}
            for project in self.projects.values():
                allocation = self._compute_allocation(project["name"], active_only=False)
                if allocation is None:
                    continue
                attribute = self._su_attribute(allocation["id"])
                users = {
                    au["user"]: _money(self._user_su_attribute(au["id"])["usage"])
                    for au in self.allocation_users.values()
                    if au["allocation"] == allocation["id"]
                }
                report[project["name"]] = {
                    "service_units": attribute["value"], "usage": _money(attribute["usage"]), "users": users,
                }  # fmt: skip
            return report

    def job(self, jobslurmid: str) -> dict | None:
        with self._lock:
            job = self.jobs.get(jobslurmid)
            return None if job is None else self._job_out(job)

    def all_jobs(self) -> list[dict]:
        with self._lock:
            return [self._job_out(j) for j in self.jobs.values()]

    # -- admin: faults ---------------------------------------------------------------------

    def inject_fault(
        self,
        *,
        status: int = 503,
        after: int = 0,
        count: int | None = None,
        methods: tuple[str, ...] | list[str] = ("PUT", "POST"),
        path_prefix: str = "/api/",
        mode: str = "status",
        delay: float = 0.0,
    ) -> None:
        """From the ``after+1``-th matching request on, fail ``count`` of them (None = all).

        ``mode="status"`` answers ``status`` without touching data (an outage);
        ``mode="drop"`` processes the request, then closes the connection without an
        answer (the client cannot know that its write was committed);
        ``mode="delay"`` holds the request ``delay`` seconds (a very slow API; clearing
        the faults lets held requests go on at once), then answers it normally.
        """
        if mode not in ("status", "drop", "delay"):
            raise ValueError("mode must be 'status', 'drop' or 'delay'")
        with self._lock:
            self.faults.append({
                "status": int(status), "after": int(after), "count": count, "methods": [m.upper() for m in methods],
                "path_prefix": path_prefix, "mode": mode, "seen": 0, "fired": 0, "delay": float(delay),
            })  # fmt: skip

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()
            self._release.set()
            self._release = threading.Event()

    def _fault_for(self, method: str, path: str) -> dict | None:
        for fault in self.faults:
            if method not in fault["methods"] or not path.startswith(fault["path_prefix"]):
                continue
            fault["seen"] += 1
            if fault["seen"] > fault["after"] and (fault["count"] is None or fault["fired"] < fault["count"]):
                fault["fired"] += 1
                return fault
        return None

    # -- server ----------------------------------------------------------------------------

    server_version = "ColdFrontEmulator/1.0"

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes, host: str):
        status, payload, extra, drop = self.handle(method, path, headers, body, host)
        if drop:
            return None
        if isinstance(payload, RawBody):
            data, content_type = payload.encode(), "text/html; charset=utf-8"
        else:
            data, content_type = json.dumps(payload, default=str).encode(), "application/json"
        return status, data, {"Content-Type": content_type, "Vary": "Accept", **extra}

    @property
    def api_url(self) -> str:
        """The base URL a client uses (``.../api/``)."""
        return f"{self.url}/api/"

    # -- request entry point ---------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, host: str
    ) -> tuple[int, Any, dict[str, str], bool]:
        """Answer one request: ``(status, body, extra headers, drop_connection)``."""
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = {k: v for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if path.startswith("/_emulator/"):
            try:
                return (*self._admin(method, path, body), {}, False)
            except (KeyError, ValueError, TypeError) as exc:
                return 400, {"detail": f"bad admin request: {exc}"}, {}, False
        with self._lock:
            self.requests[f"{method} {target}"] += 1
            fault = self._fault_for(method, path)
            release = self._release
        if fault is not None and fault["mode"] == "status":
            return fault["status"], {"detail": "Service temporarily unavailable (injected fault)."}, {}, False
        if fault is not None and fault["mode"] == "delay":
            release.wait(fault["delay"])
        try:
            status, payload = self._api(method, path, query, headers, body, host)
            extra: dict[str, str] = {}
        except ApiResponse as answer:
            status, payload, extra = answer.status, answer.body, answer.headers
        return status, payload, extra, fault is not None and fault["mode"] == "drop"

    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        data = json.loads(body or b"{}") if method in ("POST", "PUT") else {}
        if path == "/_emulator/seed" and method == "POST":
            self.seed(data)
            return 200, {"ok": True}
        if path == "/_emulator/reset" and method == "POST":
            self.reset_jobs()
            return 200, {"ok": True}
        if path == "/_emulator/faults" and method == "POST":
            self.inject_fault(**data)
            return 200, {"ok": True}
        if path == "/_emulator/faults" and method == "DELETE":
            self.clear_faults()
            return 200, {"ok": True}
        if path == "/_emulator/requests" and method == "GET":
            by_url = self.requests_by_url()
            return 200, {"total": sum(by_url.values()), "by_url": by_url}
        if path == "/_emulator/usage" and method == "GET":
            return 200, self.usage_report()
        if path == "/_emulator/jobs" and method == "GET":
            return 200, self.all_jobs()
        return 404, {"detail": "Not found."}

    # -- the API ---------------------------------------------------------------------------

    def _api(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes, host: str
    ) -> tuple[int, Any]:
        if not path.startswith("/api/"):
            raise ApiResponse(404, {"detail": "Not found."})
        parts = path[len("/api/") :].split("/")
        if parts and parts[-1] == "":
            parts.pop()
        elif method in ("POST", "PUT", "PATCH"):
            # Django's APPEND_SLASH cannot redirect a write: the router has no such URL.
            raise ApiResponse(404, {"detail": "Not found."})
        if not parts or any(p == "" for p in parts):
            raise ApiResponse(404, {"detail": "Not found."})
        if any("." in p for p in parts):
            # The router's lookups are [^/.]+: no view is reached, auth is not even checked.
            raise ApiResponse(404, RawBody(DJANGO_NOT_FOUND))
        user = self._authenticate(headers.get("authorization"))
        if method not in ("GET", "HEAD", "OPTIONS") and not (user["is_staff"] or user["is_superuser"]):
            raise ApiResponse(403, {"detail": "You do not have permission to perform this action."})
        base = f"http://{host}{path}"
        with self._lock:
            return self._route(method, parts, query, body, headers, base)

    def _authenticate(self, header: str | None) -> dict:
        challenge = {"WWW-Authenticate": "Token"}
        words = (header or "").split()
        if not words or words[0].lower() != "token":
            raise ApiResponse(401, {"detail": "Authentication credentials were not provided."}, challenge)
        if len(words) == 1:
            raise ApiResponse(401, {"detail": "Invalid token header. No credentials provided."}, challenge)
        if len(words) > 2:
            raise ApiResponse(
                401, {"detail": "Invalid token header. Token string should not contain spaces."}, challenge
            )
        with self._lock:
            token = self.tokens.get(words[1])
            if token is None:
                raise ApiResponse(401, {"detail": "Invalid token."}, challenge)
            user = self.users[token["username"]]
            if not user["is_active"]:
                raise ApiResponse(401, {"detail": "User inactive or deleted."}, challenge)
            if token["expires"] is not None and token["expires"] < time.time():
                raise ApiResponse(401, {"detail": "Expired token."}, challenge)
            return dict(user)

    def _route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes, headers: dict, base: str
    ) -> tuple[int, Any]:
        head, rest = parts[0], parts[1:]
        if head == "projects":
            if not rest:
                self._allow(method, "GET")
                rows = sorted(self.projects.values(), key=lambda p: p["id"])
                if "name" in query:
                    rows = [p for p in rows if p["name"] in query["name"]]
                return self._page(rows, query, base, self._project_out)
            if len(rest) == 1:
                self._allow(method, "GET")
                return 200, self._project_out(self._by_pk(self.projects, rest[0], "Project"))
        if head == "allocations":
            if not rest:
                self._allow(method, "GET")
                rows = self._filter_allocations(query)
                return self._page(rows, query, base, self._allocation_out)
            allocation = self._by_pk(self.allocations, rest[0], "Allocation")
            if len(rest) == 1:
                self._allow(method, "GET")
                return 200, self._allocation_out(allocation)
            if len(rest) == 2 and rest[1] == "attributes":
                self._allow(method, "GET")
                rows = [a for a in self.attributes.values() if a["allocation"] == allocation["id"]]
                rows = self._filter_type(rows, query)
                return self._page(rows, query, base, self._attribute_out)
        if head == "allocation_users":
            if not rest:
                self._allow(method, "GET")
                return self._page(self._filter_allocation_users(query), query, base, self._allocation_user_out)
            allocation_user = self._by_pk(self.allocation_users, rest[0], "AllocationUser")
            if len(rest) == 1:
                self._allow(method, "GET")
                return 200, self._allocation_user_out(allocation_user)
            if len(rest) == 2 and rest[1] == "attributes":
                self._allow(method, "GET")
                rows = [a for a in self.user_attributes.values() if a["allocation_user"] == allocation_user["id"]]
                return self._page(self._filter_type(rows, query), query, base, self._user_attribute_out)
        if head == "jobs":
            if not rest:
                self._allow(method, "GET", "POST")
                if method == "POST":
                    return self._create_job(self._body(body, headers))
                return self._list_jobs(query, base)
            if len(rest) == 1:
                self._allow(method, "GET", "PUT", "PATCH")
                jobslurmid = rest[0]
                if method == "GET":
                    job = self.jobs.get(jobslurmid)
                    if job is None:
                        raise ApiResponse(404, {"detail": "No Job matches the given query."})
                    return 200, self._job_out(job)
                if method == "PATCH":
                    return 200, {"failure": "This method is not supported."}
                return self._update_job(jobslurmid, self._body(body, headers))
        raise ApiResponse(404, {"detail": "Not found."})

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed and not (method in ("HEAD", "OPTIONS") and "GET" in allowed):
            raise ApiResponse(405, {"detail": f'Method "{method}" not allowed.'})

    @staticmethod
    def _by_pk(table: dict[int, dict], text: str, model: str) -> dict:
        if not text.isdigit():
            raise ApiResponse(404, {"detail": "Not found."})  # DRF: a pk that is no number
        if int(text) not in table:
            raise ApiResponse(404, {"detail": f"No {model} matches the given query."})
        return table[int(text)]

    @staticmethod
    def _body(body: bytes, headers: dict) -> dict:
        content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
        try:
            if content_type == "application/json":
                data = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise _validation_error({"non_field_errors": ["Invalid data. Expected a dictionary."]})
                return data
            if content_type in ("application/x-www-form-urlencoded", ""):
                # A form cannot carry the nested `nodes` list (the original scripts' payload
                # arrived garbled this way); only scalar fields are taken.
                form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
                return {k: v[-1] for k, v in form.items() if k != "nodes"}
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiResponse(400, {"detail": f"JSON parse error - {exc}"}) from None
        raise ApiResponse(415, {"detail": f'Unsupported media type "{content_type}" in request.'})

    # -- pagination ------------------------------------------------------------------------

    def _page(self, rows: list, query: dict[str, list[str]], base: str, render, extra: dict | None = None):
        page_text = (query.get("page") or ["1"])[-1]
        count = len(rows)
        pages = max(1, -(-count // PAGE_SIZE))
        if page_text == "last":
            number = pages
        elif page_text.isdigit() and 1 <= int(page_text) <= pages:
            number = int(page_text)
        else:
            raise ApiResponse(404, {"detail": "Invalid page."})
        chunk = rows[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        body = {
            "count": count,
            "next": self._page_url(base, query, number + 1) if number < pages else None,
            "previous": self._page_url(base, query, number - 1) if number > 1 else None,
            "results": [render(r) for r in chunk],
        }
        body.update(extra or {})
        return 200, body

    @staticmethod
    def _page_url(base: str, query: dict[str, list[str]], number: int) -> str:
        # DRF's replace_query_param/remove_query_param re-encode the query with sorted keys.
        params = {k: v for k, v in query.items() if k != "page"}
        if number > 1:
            params["page"] = [str(number)]
        text = urlencode(sorted(params.items()), doseq=True)
        return f"{base}?{text}" if text else base

    # -- filters ---------------------------------------------------------------------------

    def _choice_filter(self, query: dict[str, list[str]], name: str, known: set[str]) -> list[str] | None:
        values = [v for v in query.get(name, []) if v != ""]
        if not values:
            return None
        for value in values:
            if value not in known:
                raise _validation_error(
                    {name: [f"Select a valid choice. {value} is not one of the available choices."]}
                )
        return values

    def _filter_allocations(self, query: dict[str, list[str]]) -> list[dict]:
        projects = self._choice_filter(query, "project", {p["name"] for p in self.projects.values()})
        resources = self._choice_filter(query, "resources", self.resources)
        rows = sorted(self.allocations.values(), key=lambda a: a["id"])
        if projects is not None:
            rows = [a for a in rows if a["project"] in projects]
        if resources is not None:
            rows = [a for a in rows if set(a["resources"]) & set(resources)]
        return rows

    def _filter_allocation_users(self, query: dict[str, list[str]]) -> list[dict]:
        users = self._choice_filter(query, "user", set(self.users))
        projects = self._choice_filter(query, "project", {p["name"] for p in self.projects.values()})
        resources = self._choice_filter(query, "resources", self.resources)
        rows = sorted(self.allocation_users.values(), key=lambda a: a["id"])
        if users is not None:
            rows = [a for a in rows if a["user"] in users]
        if projects is not None:
            rows = [a for a in rows if self.allocations[a["allocation"]]["project"] in projects]
        if resources is not None:
            rows = [a for a in rows if set(self.allocations[a["allocation"]]["resources"]) & set(resources)]
        return rows

    def _filter_type(self, rows: list[dict], query: dict[str, list[str]]) -> list[dict]:
        types = self._choice_filter(query, "type", {SERVICE_UNITS})
        rows = sorted(rows, key=lambda a: a["id"])
        if types is not None:
            rows = [a for a in rows if a["allocation_attribute_type"] in types]
        return rows

    # -- renderers -------------------------------------------------------------------------

    def _project_out(self, project: dict) -> dict:
        out = {k: v for k, v in project.items() if k != "compute_resource"}
        out["created"], out["modified"] = self._time_out(project["created"]), self._time_out(project["modified"])
        out["status"] = PROJECT_STATUS_IDS[project["status"]]  # ProjectSerializer: fields "__all__"
        return out

    def _allocation_out(self, allocation: dict) -> dict:
        out = dict(allocation)
        out["resources"] = [{"name": r} for r in allocation["resources"]]
        return out

    def _allocation_user_out(self, au: dict) -> dict:
        allocation = self.allocations[au["allocation"]]
        return {
            "id": au["id"], "allocation": au["allocation"], "user": au["user"],
            "user_id": self.users[au["user"]]["id"], "project": allocation["project"], "status": au["status"],
        }  # fmt: skip

    def _attribute_out(self, attribute: dict) -> dict:
        out = {k: v for k, v in attribute.items() if k != "usage"}
        out["usage"] = {"allocation_attribute": attribute["id"], "value": _money(attribute["usage"])}
        return out

    def _user_attribute_out(self, attribute: dict) -> dict:
        out = {k: v for k, v in attribute.items() if k != "usage"}
        out["usage"] = {"allocation_user_attribute": attribute["id"], "value": _money(attribute["usage"])}
        return out

    def _time_out(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

    def _job_out(self, job: dict) -> dict:
        return {
            "jobslurmid": job["jobslurmid"],
            "submitdate": self._time_out(job["submitdate"]),
            "startdate": self._time_out(job["startdate"]),
            "enddate": self._time_out(job["enddate"]),
            "userid": self.users[job["userid"]]["cluster_uid"],
            "accountid": job["accountid"],
            "amount": _money(job["amount"]),
            "jobstatus": job["jobstatus"],
            "partition": job["partition"],
            "qos": job["qos"],
            "nodes": [{"name": n} for n in job["nodes"]],
            "num_cpus": job["num_cpus"],
            "num_req_nodes": job["num_req_nodes"],
            "num_alloc_nodes": job["num_alloc_nodes"],
            "raw_time": job["raw_time"],
            "cpu_time": job["cpu_time"],
        }

    # -- accounting objects ----------------------------------------------------------------

    def _compute_allocation(self, project: str, *, active_only: bool = True) -> dict | None:
        record = next((p for p in self.projects.values() if p["name"] == project), None)
        if record is None or not record["compute_resource"]:
            return None
        found = [
            a
            for a in self.allocations.values()
            if a["project"] == project
            and record["compute_resource"] in a["resources"]
            and (not active_only or a["status"] == "Active")
        ]
        return found[0] if found else None

    def _su_attribute(self, allocation_id: int) -> dict:
        return next(
            a
            for a in self.attributes.values()
            if a["allocation"] == allocation_id and a["allocation_attribute_type"] == SERVICE_UNITS
        )

    def _user_su_attribute(self, allocation_user_id: int) -> dict:
        return next(a for a in self.user_attributes.values() if a["allocation_user"] == allocation_user_id)

    def _accounting_objects(self, project: str, username: str) -> tuple[dict, dict, dict]:
        """(allocation, project SU attribute, user SU attribute), or the serializer's 400."""
        allocation = self._compute_allocation(project)
        if allocation is None:
            raise _validation_error({"non_field_errors": [f"Account {project} has no active compute allocation."]})
        if self.project_users.get((project, username)) != "Active":
            raise _validation_error({"non_field_errors": [f"User {username} is not a member of account {project}."]})
        allocation_user = next(
            (
                au
                for au in self.allocation_users.values()
                if au["allocation"] == allocation["id"] and au["user"] == username and au["status"] == "Active"
            ),
            None,
        )
        if allocation_user is None:
            raise _validation_error({
                "non_field_errors": [
                    f"User {username} is not an active member of the compute allocation for account {project}."
                ]
            })  # fmt: skip
        return allocation, self._su_attribute(allocation["id"]), self._user_su_attribute(allocation_user["id"])

    # -- jobs ------------------------------------------------------------------------------

    def _allowance_year(self) -> tuple[datetime, datetime]:
        today = datetime.now(self.zone).date()
        year = today.year if today.month >= self.period_start_month else today.year - 1
        start = datetime(year, self.period_start_month, 1, tzinfo=self.zone)
        end = datetime(year + 1, self.period_start_month, 1, tzinfo=self.zone) - timedelta(microseconds=1)
        return start.astimezone(UTC), end.astimezone(UTC)

    def _list_jobs(self, query: dict[str, list[str]], base: str) -> tuple[int, Any]:
        def param(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        jobs = list(self.jobs.values())
        username = param("user")
        if username:
            if username not in self.users:
                # The server does User.objects.get() unguarded: an unknown user is a 500.
                raise ApiResponse(500, {"detail": "A server error occurred."})
            jobs = [j for j in jobs if j["userid"] == username]
        account = param("account")
        if account:
            jobs = [j for j in jobs if j["accountid"] == account]
        jobstatus = param("jobstatus")
        if jobstatus:
            jobs = [j for j in jobs if j["jobstatus"] == jobstatus]
        bounds = []
        for name, default in (("min_amount", ALLOCATION_MIN), ("max_amount", ALLOCATION_MAX)):
            text = param(name)
            try:
                bounds.append(Decimal(text) if text else default)
            except InvalidOperation:
                label = "minimum" if name == "min_amount" else "maximum"
                raise _validation_error(f"Invalid {label} amount {text}. Details: [<class 'decimal.ConversionSyntax'>]")
        jobs = [j for j in jobs if bounds[0] <= j["amount"] <= bounds[1]]
        partition = param("partition")
        if partition:
            jobs = [j for j in jobs if j["partition"] == partition]
        default_start, default_end = self._allowance_year()
        times = []
        for name, default in (("start_time", default_start), ("end_time", default_end)):
            text = param(name)
            if text is None:
                times.append(default)
                continue
            try:
                times.append(datetime.fromtimestamp(float(text), tz=UTC))
            except (ValueError, OverflowError, OSError) as exc:
                label = "starting" if name == "start_time" else "ending"
                raise _validation_error(f"Invalid {label} timestamp {text}. Details: {exc}")
        # Filtered on startdate, whatever the parameter names suggest (server behaviour).
        jobs = [j for j in jobs if j["startdate"] is not None and times[0] <= j["startdate"] <= times[1]]
        jobs.sort(key=lambda j: j["startdate"])
        totals = {
            # A Decimal aggregate outside a serializer: DRF's JSON encoder writes a number.
            "total_amount": float(sum((j["amount"] for j in jobs), Decimal("0.00"))),
            "total_cpu_time": float(sum(j["cpu_time"] or 0.0 for j in jobs)),
        }
        return self._page(jobs, query, base, self._job_out, totals)

    def _parse_time(self, value: Any, name: str, errors: dict) -> datetime | None:
        if value in (None, ""):
            return None
        try:
            parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            errors[name] = [
                "Datetime has wrong format. Use one of these formats instead: "
                "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
            ]
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # DRF: naive means the server's TIME_ZONE, UTC
        return parsed.astimezone(UTC)

    def _validate_job(self, data: dict, instance: dict | None) -> dict:
        """The JobSerializer: field checks, then ``validate``; 400 with DRF's shapes."""
        errors: dict[str, list[str]] = {}
        out: dict[str, Any] = {}

        def text_field(name: str, limit: int, required: bool = False) -> None:
            value = data.get(name)
            if value is None or value == "":
                if required:
                    errors[name] = ["This field is required."] if value is None else ["This field may not be blank."]
                else:
                    out[name] = None
                return
            value = str(value)
            if len(value) > limit:
                errors[name] = [f"Ensure this field has no more than {limit} characters."]
            out[name] = value

        text_field("jobslurmid", 150, required=True)
        # The primary key's UniqueValidator (the instance itself excluded).
        if out.get("jobslurmid") in self.jobs and (instance is None or instance["jobslurmid"] != out["jobslurmid"]):
            errors["jobslurmid"] = ["job with this jobslurmid already exists."]
        for name in ("submitdate", "startdate", "enddate"):
            out[name] = self._parse_time(data.get(name), name, errors)
        cluster_uid = data.get("userid")
        if cluster_uid in (None, ""):
            errors["userid"] = ["This field is required."]
        else:
            user = next((u for u in self.users.values() if u["cluster_uid"] == str(cluster_uid)), None)
            if user is None:
                errors["userid"] = [f"UserProfile for cluster_uid {cluster_uid} does not exist."]
            elif instance is not None and instance["userid"] != user["username"]:
                errors["userid"] = [
                    f"Specified user {user['username']} does not match already associated user {instance['userid']}."
                ]
            else:
                out["userid"] = user["username"]
        account = data.get("accountid")
        if account in (None, ""):
            errors["accountid"] = ["This field is required."]
        elif not any(p["name"] == account for p in self.projects.values()):
            errors["accountid"] = [f"Object with name={account} does not exist."]
        elif instance is not None and instance["accountid"] != account:
            errors["accountid"] = [
                f"Specified account {account} does not match already associated account {instance['accountid']}."
            ]
        else:
            out["accountid"] = account
        if "amount" in data and data["amount"] is not None:
            try:
                amount = Decimal(str(data["amount"]).strip())
                if not amount.is_finite():
                    raise InvalidOperation
            except InvalidOperation:
                errors["amount"] = ["A valid number is required."]
            else:
                if -amount.as_tuple().exponent > 2:
                    errors["amount"] = ["Ensure that there are no more than 2 decimal places."]
                elif len(amount.as_tuple().digits) > 11:
                    errors["amount"] = ["Ensure that there are no more than 11 digits in total."]
                elif not ALLOCATION_MIN <= amount <= ALLOCATION_MAX:
                    errors["amount"] = [f"Ensure this value is between {ALLOCATION_MIN} and {ALLOCATION_MAX}."]
                out["amount"] = amount
        elif "amount" in data:
            errors["amount"] = ["This field may not be null."]
        for name in ("jobstatus", "partition", "qos"):
            text_field(name, 50)
        out["nodes"] = None
        if data.get("nodes") is not None:
            out["nodes"] = self._nodes(data["nodes"], errors)
        for name in ("num_cpus", "num_req_nodes", "num_alloc_nodes"):
            out[name] = self._number(data.get(name), name, int, errors)
        for name in ("raw_time", "cpu_time"):
            out[name] = self._number(data.get(name), name, float, errors)
        if errors:
            raise _validation_error(errors)
        # Like DRF's validated_data: only what the request gave (plus the required keys).
        out = {k: v for k, v in out.items() if k in data or k in ("jobslurmid", "userid", "accountid")}
        submit, start, end = out.get("submitdate"), out.get("startdate"), out.get("enddate")
        for first, second, text in (
            (submit, start, f"Job start date {start} occurs before Job submit date {submit}."),
            (start, end, f"Job end date {end} occurs before Job start date {start}."),
            (submit, end, f"Job end date {end} occurs before Job submit date {submit}."),
        ):
            if first and second and second < first:
                raise _validation_error({"non_field_errors": [text]})
        return out

    @staticmethod
    def _nodes(nodes: Any, errors: dict) -> list[str] | None:
        """``NodeSerializer(many=True)``: errors nested per node, ``{}`` for the good ones."""
        if not isinstance(nodes, list):
            errors["nodes"] = {"non_field_errors": [f'Expected a list of items but got type "{type(nodes).__name__}".']}
            return None
        names, per_node = [], []
        for node in nodes:
            if not isinstance(node, dict):
                kind = type(node).__name__
                per_node.append({"non_field_errors": [f"Invalid data. Expected a dictionary, but got {kind}."]})
                continue
            name = node.get("name")
            if name is None or name == "":
                missing = "This field is required." if name is None else "This field may not be blank."
                per_node.append({"name": [missing]})
            elif isinstance(name, bool) or not isinstance(name, (str, int, float)):
                per_node.append({"name": ["Not a valid string."]})
            elif len(str(name)) > 30:
                per_node.append({"name": ["Ensure this field has no more than 30 characters."]})
            else:
                per_node.append({})
                names.append(str(name))
        if any(per_node):
            errors["nodes"] = per_node
            return None
        return names

    @staticmethod
    def _number(value: Any, name: str, kind: type, errors: dict) -> Any:
        if value is None or value == "":
            return None
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return kind(value)
        except (TypeError, ValueError):
            errors[name] = ["A valid integer is required." if kind is int else "A valid number is required."]
            return None

    def _day_start(self, day: str) -> datetime:
        """Midnight of an allocation date in the display time zone, as UTC."""
        return datetime.combine(date.fromisoformat(day), datetime.min.time(), self.zone).astimezone(UTC)

    def _dates_valid(self, job: dict, allocation: dict, end_expected: bool) -> bool:
        """``validate_job_dates``: usage moves only for a job with the expected dates that
        started on or after its allocation's start date and, when an end date is expected and
        the project is a periodic allowance, ended by the allocation's end date (which it
        must then have)."""
        needed = ["submitdate", "startdate"] + (["enddate"] if end_expected else [])
        if any(job.get(k) is None for k in needed):
            return False
        if not allocation.get("start_date"):
            return False
        if job["startdate"] < self._day_start(allocation["start_date"]):
            return False
        if not end_expected or not allocation["project"].startswith(self.periodic_prefixes):
            return True
        if not allocation.get("end_date"):
            return False
        last = date.fromisoformat(allocation["end_date"]) + timedelta(days=1)
        return job["enddate"] <= self._day_start(last.isoformat()) - timedelta(microseconds=1)

    _JOB_FIELDS = (
        "jobslurmid", "submitdate", "startdate", "enddate", "userid", "accountid", "amount", "jobstatus",
        "partition", "qos", "nodes", "num_cpus", "num_req_nodes", "num_alloc_nodes", "raw_time", "cpu_time",
    )  # fmt: skip

    def _store_job(self, data: dict, existing: dict | None) -> dict:
        if existing is None:
            job = {name: data.get(name) for name in self._JOB_FIELDS}
            job["nodes"] = list(data.get("nodes") or [])
            job["amount"] = data["amount"] if data.get("amount") is not None else Decimal("0.00")
            self.jobs[job["jobslurmid"]] = job
            return job
        for key, value in data.items():
            if key == "nodes":
                for name in value or []:
                    if name not in existing["nodes"]:
                        existing["nodes"].append(name)  # the serializer adds nodes, never removes
            else:
                existing[key] = value
        return existing

    def _create_job(self, payload: dict) -> tuple[int, Any]:
        data = self._validate_job(payload, None)
        allocation, attribute, user_attribute = self._accounting_objects(data["accountid"], data["userid"])
        if "amount" in data and self._dates_valid(data, allocation, end_expected=False):
            attribute["usage"] += data["amount"]
            user_attribute["usage"] += data["amount"]
        job = self._store_job(data, None)
        return 201, self._job_out(job)

    def _update_job(self, url_id: str, payload: dict) -> tuple[int, Any]:
        # The URL's job is the serializer's instance (its user and account must not change);
        # the job stored and charged is the one the body names.
        data = self._validate_job(payload, self.jobs.get(url_id))
        instance = self.jobs.get(data["jobslurmid"])
        allocation, attribute, user_attribute = self._accounting_objects(data["accountid"], data["userid"])
        if "amount" in data and self._dates_valid(data, allocation, end_expected=True):
            amount = data["amount"]
            if instance is None:
                attribute["usage"] += amount
                user_attribute["usage"] += amount
            else:
                difference = amount - instance["amount"]
                attribute["usage"] = max(attribute["usage"] + difference, Decimal("0.00"))
                user_attribute["usage"] = max(user_attribute["usage"] + difference, Decimal("0.00"))
        job = self._store_job(data, instance)
        return 200, self._job_out(job)  # UpdateModelMixin answers 200, creating or not


def job_url(api_url: str, jobslurmid: str) -> str:
    return f"{api_url.rstrip('/')}/jobs/{quote(jobslurmid, safe='')}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcsync.agents.testing.coldfront", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    parser.add_argument("--seed", help="JSON file of users, tokens and projects (see ColdFrontEmulator.seed)")
    parser.add_argument("--period-start-month", type=int, default=6, help="6 = myBRC, 10 = myLRC")
    parser.add_argument(
        "--time-zone",
        default="America/Los_Angeles",
        help="the server's display time zone (allocation dates); times are answered in UTC",
    )
    args = parser.parse_args(argv)
    emulator = ColdFrontEmulator(period_start_month=args.period_start_month, time_zone=args.time_zone)
    if args.seed:
        with open(args.seed, encoding="utf-8") as fh:
            emulator.seed(json.load(fh))
    return emulator.serve_until_signalled(
        args.host, args.port, f"ColdFront emulator listening on http://{args.host}:{{port}}/api/"
    )


if __name__ == "__main__":
    sys.exit(main())
