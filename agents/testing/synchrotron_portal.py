"""An emulator of the Australian Synchrotron portal API, for tests, demos and benchmarks.

It follows the API as ASSyncy uses it (``reference/slurm-coldfront-and-assyncy.md`` §2.1,
``ASPortal/Connection.py``):

- **Token**: ``POST /api/v1/oauth/token``, HTTP Basic with the API client's name and
  password, form ``username``, ``password``, ``grant_type=password``. Success:
  ``{"data": {"access_token": ...}}``. Failure: 401 with ``{"meta": {"error_message":
  ...}}`` (a wrong client, a wrong user password, another grant type). Tokens expire
  after :attr:`SynchrotronPortalEmulator.token_lifetime` seconds.
- **Visits**: ``GET /api/v1/equipment/{id}/visits?access_token=...&start_time=<iso>&
  end_time=<iso>``: ``{"data": {"visits": [...]}}``, each visit with ``epn``,
  ``start_time``, ``end_time`` (ISO 8601 with offset), ``principal_scientist``
  (``first_names``, ``last_name``, ``email``) and ``data_scientists`` (a list of the same).
  A visit is listed when it overlaps the window (ASSyncy's "current visits" query, now to
  now + 1 h, finds an experiment that started yesterday). Times without an offset are read
  in Australia/Melbourne. A missing, unknown or expired token is 401 (ASSyncy
  re-authenticates once on 401); a user without access to the equipment 403; an
  unknown equipment id 404; a missing or unreadable time 400.

For tests there is an admin side, in-process (methods) and over HTTP under ``/_emulator/``
(no auth; loopback only): seed data, expire tokens, count requests, and inject faults
(``status``: answer 500/503 without doing anything; ``delay``: answer late; ``malformed``:
a 200 whose body is not JSON; ``expire``: the token is treated as expired).

Run it standalone: ``python -m hpcsync.agents.testing.synchrotron_portal --port 8010
--seed seed.json`` (or ``--demo``: the demo's client, user and visits; see :func:`demo_seed`).
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

from .http_emulator import HttpEmulator

#: The portal's time zone (the Australian Synchrotron is in Melbourne).
PORTAL_TZ = ZoneInfo("Australia/Melbourne")


class _Answer(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(status)
        self.status = status
        self.body = body


def _error(status: int, message: str) -> _Answer:
    return _Answer(status, {"meta": {"code": status, "error_message": message}})


def parse_portal_time(text: str) -> datetime:
    """An ISO 8601 time as the portal reads it (no offset: Melbourne time)."""
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=PORTAL_TZ)


def person(first_names: str, last_name: str, email: str) -> dict[str, str]:
    return {"first_names": first_names, "last_name": last_name, "email": email}


class SynchrotronPortalEmulator(HttpEmulator):
    """The portal's data and rules, and an HTTP server in a thread."""

    server_version = "SynchrotronPortalEmulator/1.0"

    def __init__(self, *, token_lifetime: float = 3600.0):
        super().__init__()
        self.token_lifetime = token_lifetime
        self._lock = threading.RLock()
        self.clients: dict[str, str] = {}
        self.users: dict[str, dict] = {}
        self.visits: dict[str, list[dict]] = {}
        self.tokens: dict[str, dict] = {}
        self.requests: Counter[str] = Counter()
        self.faults: list[dict] = []
        self._release = threading.Event()

    # -- admin: data -----------------------------------------------------------------------

    def add_client(self, name: str, password: str) -> None:
        with self._lock:
            self.clients[name] = password

    def add_user(self, username: str, password: str, equipment: list[str | int]) -> None:
        with self._lock:
            self.users[username] = {"password": password, "equipment": {str(e) for e in equipment}}
            for e in equipment:
                self.visits.setdefault(str(e), [])

    def add_visit(
        self,
        equipment_id: str | int,
        epn: str,
        start: datetime | str,
        end: datetime | str,
        *,
        principal_scientist: dict | None = None,
        data_scientists: list[dict] | None = None,
    ) -> dict:
        """Add a visit; ``epn`` is stored as given (tests send hostile names through it)."""

        def iso(value: datetime | str) -> str:
            return value.isoformat() if isinstance(value, datetime) else str(value)

        visit = {
            "epn": epn,
            "start_time": iso(start),
            "end_time": iso(end),
            "principal_scientist": principal_scientist or person("Ada", "Lovelace", "ada@example.edu"),
            "data_scientists": list(data_scientists or []),
        }
        with self._lock:
            self.visits.setdefault(str(equipment_id), []).append(visit)
        return visit

    def clear_visits(self) -> None:
        with self._lock:
            for visits in self.visits.values():
                visits.clear()

    def seed(self, spec: dict) -> None:
        """``{"clients": {name: password}, "users": [{"username", "password", "equipment"}],
        "visits": [{"equipment", "epn", "start_time", "end_time", "principal_scientist",
        "data_scientists"}], "token_lifetime": seconds}``."""
        with self._lock:
            if "token_lifetime" in spec:
                self.token_lifetime = float(spec["token_lifetime"])
            for name, password in spec.get("clients", {}).items():
                self.add_client(name, password)
            for user in spec.get("users", []):
                self.add_user(user["username"], user["password"], user.get("equipment", []))
            for v in spec.get("visits", []):
                self.add_visit(
                    v["equipment"],
                    v["epn"],
                    v["start_time"],
                    v["end_time"],
                    principal_scientist=v.get("principal_scientist"),
                    data_scientists=v.get("data_scientists"),
                )

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (the next call with one gets 401)."""
        with self._lock:
            for token in self.tokens.values():
                token["expires"] = 0.0

    def request_count(self, path_prefix: str = "") -> int:
        with self._lock:
            return sum(n for key, n in self.requests.items() if key.split(" ", 1)[1].startswith(path_prefix))

    # -- admin: faults ---------------------------------------------------------------------

    def inject_fault(
        self,
        mode: str = "status",
        *,
        status: int = 500,
        after: int = 0,
        count: int | None = None,
        path_prefix: str = "/api/v1/",
        delay: float = 0.0,
    ) -> None:
        """From the ``after+1``-th request under ``path_prefix`` on, ``count`` of them (None:
        all) get the fault: ``status`` (an error answer, nothing done), ``delay`` (held
        ``delay`` s, then answered; clearing faults releases it), ``malformed`` (200 with a
        body that is not JSON) or ``expire`` (the request's token counts as expired)."""
        if mode not in ("status", "delay", "malformed", "expire"):
            raise ValueError("mode must be 'status', 'delay', 'malformed' or 'expire'")
        with self._lock:
            self.faults.append(
                {
                    "mode": mode,
                    "status": int(status),
                    "after": int(after),
                    "count": count,
                    "path_prefix": path_prefix,
                    "delay": float(delay),
                    "seen": 0,
                    "fired": 0,
                }
            )

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()
            self._release.set()
            self._release = threading.Event()

    def _fault_for(self, path: str) -> dict | None:
        for fault in self.faults:
            if not path.startswith(fault["path_prefix"]):
                continue
            fault["seen"] += 1
            if fault["seen"] > fault["after"] and (fault["count"] is None or fault["fired"] < fault["count"]):
                fault["fired"] += 1
                return fault
        return None

    # -- server ----------------------------------------------------------------------------

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes, host: str):
        try:
            status, payload, raw = self.handle(method, path, headers, body)
        except Exception as exc:  # a bug in the emulator shows as a 500, not a hang
            status, payload, raw = 500, {"meta": {"error_message": f"emulator error: {exc!r}"}}, False
        return status, payload if raw else json.dumps(payload).encode(), {"Content-Type": "application/json"}

    # -- requests --------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, bool]:
        """``(status, body, raw)``: ``raw`` bodies are sent as they are (malformed JSON)."""
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if path.startswith("/_emulator/"):
            try:
                return (*self._admin(method, path, body), False)
            except (KeyError, ValueError, TypeError) as exc:
                return 400, {"detail": f"bad admin request: {exc}"}, False
        with self._lock:
            self.requests[f"{method} {path}"] += 1
            fault = self._fault_for(path)
            release = self._release
        if fault is not None and fault["mode"] == "status":
            return fault["status"], {"meta": {"code": fault["status"], "error_message": "injected fault"}}, False
        if fault is not None and fault["mode"] == "delay":
            release.wait(fault["delay"])
        if fault is not None and fault["mode"] == "malformed":
            return 200, b'{"data": {"visits": [{"epn": "12', True
        try:
            with self._lock:
                status, payload = self._api(method, path, query, headers, body, expired=fault is not None)
        except _Answer as answer:
            status, payload = answer.status, answer.body
        return status, payload, False

    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        data = json.loads(body or b"{}") if method in ("POST", "PUT") else {}
        if path == "/_emulator/seed" and method == "POST":
            self.seed(data)
        elif path == "/_emulator/expire" and method == "POST":
            self.expire_tokens()
        elif path == "/_emulator/faults" and method == "POST":
            self.inject_fault(**data)
        elif path == "/_emulator/faults" and method == "DELETE":
            self.clear_faults()
        elif path == "/_emulator/requests" and method == "GET":
            with self._lock:
                return 200, dict(self.requests)
        else:
            return 404, {"detail": "Not found."}
        return 200, {"ok": True}

    def _api(self, method, path, query, headers, body, *, expired: bool) -> tuple[int, Any]:
        if path == "/api/v1/oauth/token":
            if method != "POST":
                raise _error(405, "Method not allowed")
            return self._token(headers, body)
        words = path.strip("/").split("/")
        if len(words) == 5 and words[:3] == ["api", "v1", "equipment"] and words[4] == "visits":
            if method != "GET":
                raise _error(405, "Method not allowed")
            return self._visits(words[3], query, expired)
        raise _error(404, "Not found")

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        auth = headers.get("authorization", "")
        try:
            scheme, _, encoded = auth.partition(" ")
            name, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            scheme, name, password = "", "", ""
        if scheme.lower() != "basic" or self.clients.get(name) != password or not name:
            raise _error(401, "Client authentication failed")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "password":
            raise _error(400, "The authorization grant type is not supported by the authorization server")
        user = self.users.get(form.get("username", ""))
        if user is None or user["password"] != form.get("password"):
            raise _error(401, "The user credentials were incorrect")
        token = secrets.token_hex(20)
        self.tokens[token] = {"username": form["username"], "expires": time.time() + self.token_lifetime}
        return 200, {"meta": {"code": 200}, "data": {"access_token": token}}

    def _visits(self, equipment_id: str, query: dict[str, list[str]], expired: bool) -> tuple[int, Any]:
        token = self.tokens.get((query.get("access_token") or [""])[0])
        if token is None or expired or token["expires"] <= time.time():
            raise _error(401, "The access token provided is invalid or has expired")
        if equipment_id not in self.visits:
            raise _error(404, f"Equipment {equipment_id} not found")
        if equipment_id not in self.users[token["username"]]["equipment"]:
            raise _error(403, "You are not allowed to view the visits of this equipment")
        window = []
        for name in ("start_time", "end_time"):
            try:
                window.append(parse_portal_time(query[name][0]))
            except (KeyError, IndexError, ValueError):
                raise _error(400, f"{name} is missing or not an ISO 8601 time") from None
        start, end = window
        found = []
        for visit in self.visits[equipment_id]:
            try:
                v_start, v_end = parse_portal_time(visit["start_time"]), parse_portal_time(visit["end_time"])
            except (KeyError, ValueError):
                found.append(visit)  # stored broken on purpose: clients must cope
                continue
            if v_start <= end and v_end >= start:
                found.append(visit)
        return 200, {"meta": {"code": 200}, "data": {"visits": found}}


def demo_seed(now: datetime | None = None) -> dict:
    """The demo's portal: client ``demo-client``/``demo-client-secret``, user ``demo``/``demo``
    on equipment 23 and 24, and visits: finished ones (12282a, 12282b, 13001a: mapped in the
    demo config; 14444a: claimed by no project), one still running (12282c)."""
    now = (now or datetime.now(PORTAL_TZ)).astimezone(PORTAL_TZ).replace(microsecond=0)

    def visit(equipment: int, epn: str, days_ago: float, hours: float) -> dict:
        start = now - timedelta(days=days_ago)
        return {
            "equipment": equipment,
            "epn": epn,
            "start_time": start.isoformat(),
            "end_time": (start + timedelta(hours=hours)).isoformat(),
            "principal_scientist": person("Rosalind", "Franklin", "rosalind@example.edu"),
            "data_scientists": [person("Max", "Perutz", "max@example.edu")],
        }

    return {
        "clients": {"demo-client": "demo-client-secret"},
        "users": [{"username": "demo", "password": "demo", "equipment": [23, 24]}],
        "visits": [
            visit(23, "12282a", 10, 24),
            visit(24, "12282b", 5, 12),
            visit(23, "13001a", 3, 8),
            visit(24, "14444a", 2, 8),
            visit(23, "12282c", 0.1, 48),
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcsync.agents.testing.synchrotron_portal", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010, help="0 picks a free port (printed at start)")
    parser.add_argument("--seed", help="JSON file of clients, users and visits (see SynchrotronPortalEmulator.seed)")
    parser.add_argument("--demo", action="store_true", help="seed the demo's client, user and visits")
    args = parser.parse_args(argv)
    emulator = SynchrotronPortalEmulator()
    if args.demo:
        emulator.seed(demo_seed())
    if args.seed:
        with open(args.seed, encoding="utf-8") as fh:
            emulator.seed(json.load(fh))
    return emulator.serve_until_signalled(
        args.host, args.port, f"Synchrotron portal emulator listening on http://{args.host}:{{port}}"
    )


if __name__ == "__main__":
    sys.exit(main())
