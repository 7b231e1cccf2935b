"""``hpcsync up | down | status``: a site config's hub and agents on this machine.

What ``ocs-local-support`` does, without its bugs: one run directory holds the crossbar
config, every PID file and every log; ``down`` stops exactly what ``up`` started (by PID);
``status`` asks each agent over the hub for its ops and their state.

A site config may name demo credentials (``demo-credentials: {access-policy: PATH,
client-passwords: PATH}``, as ``site-configs/default.yaml`` does): ``up`` then creates
that agent access policy and the matching OCS client password file, with random
passwords, if they are missing, and says where the client file is. AccessDirector
instances start first, so the agents that take their rules from one find it on the hub.

``up`` checks the whole site config first (:func:`.preflight.check_site`) and starts
nothing if a check fails; if an agent then fails to start, what this ``up`` started is
stopped again. It waits for each agent's first process cycle and reports the agents that
came up degraded. ``status`` shows each agent's health: ``degraded``, its ``last_error``
(one line) and the age of its last successful cycle.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from . import access, daemon, hub
from .siteconfig import AgentInstance, SiteConfig

#: Seconds an agent gets to register on the hub after it was started.
AGENT_READY_TIMEOUT = 60.0

#: Seconds ``up`` waits for a started agent's processes to finish their first cycle.
FIRST_CYCLE_TIMEOUT = 30.0

#: OCS's agent that hands out access rules (``--access-policy director:<its id>``).
ACCESS_DIRECTOR = "AccessDirector"


class LocalSiteError(RuntimeError):
    pass


class CheckFailed(LocalSiteError):
    """The site config failed ``hpcsync check``: one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def default_run_dir() -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "hpcsync" / "run"


def call_hub(site: SiteConfig, procedure: str, *args, timeout: float = 5.0, **kwargs):
    """Call a WAMP procedure through the hub's HTTP bridge (with a timeout, unlike ocs's)."""
    url = site.hub["wamp_http"]
    resp = requests.post(url, json={"procedure": procedure, "args": list(args), "kwargs": kwargs}, timeout=timeout)
    resp.raise_for_status()
    body = resp.json()
    if "error" in body:
        raise LocalSiteError(f"{procedure}: {body['error']} {body.get('args') or ''}".strip())
    return body["args"][0]


def agent_api(site: SiteConfig, instance_id: str, timeout: float = 5.0) -> dict:
    return call_hub(site, f"{site.address_root}.{instance_id}", "get_api", timeout=timeout)


@dataclass
class LocalSite:
    site: SiteConfig
    run_dir: Path
    host: str | None = None

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / "pids" / f"{name}.pid"

    def instances(self) -> list[AgentInstance]:
        return self.site.instances(self.host)

    # -- up ---------------------------------------------------------------------------

    def check(self, *, create_directories: bool = False, out=sys.stdout) -> None:
        """``hpcsync check``: raise :class:`CheckFailed` with every problem; print notes."""
        from .preflight import check_site

        flight = check_site(self.site.path, self.host, create=create_directories, starting=True)
        for note in flight.notes:
            print(f"check: {note}", file=out)
        if flight.problems:
            raise CheckFailed(flight.problems)

    def up(self, only: list[str] | None = None, out=sys.stdout, *, create_directories: bool = False) -> None:
        self.check(create_directories=create_directories, out=out)
        wanted = [i for i in self.instances() if not only or i.instance_id in only]
        unknown = set(only or ()) - {i.instance_id for i in wanted}
        if unknown:
            raise LocalSiteError(f"no such instance in {self.site.path}: {', '.join(sorted(unknown))}")
        self.logs.mkdir(parents=True, exist_ok=True)
        credentials = self.demo_credentials()
        if credentials:
            policy_file, passwords_file = credentials
            try:
                made = access.ensure_demo_credentials(policy_file, passwords_file)
            except (access.AccessPolicyError, OSError) as exc:
                raise LocalSiteError(f"demo credentials: {exc}") from None
            verb = "created" if made else "using"
            print(f"access: {verb} demo policy {policy_file}; ops that change state need a password:", file=out)
            print(f"        export OCS_PASSWORDS_FILE={passwords_file}  # then OCSClient(id, privs=2)", file=out)
        crossbar_pid = daemon.read_pid(self.pidfile("crossbar"))
        started_hub = False
        if crossbar_pid and daemon.pid_alive(crossbar_pid):
            print(f"hub: already running (pid {crossbar_pid})", file=out)
        else:
            started_hub = True
            started = time.monotonic()
            pid = hub.start_crossbar(
                self.run_dir / "crossbar",
                realm=self.site.realm,
                address_root=self.site.address_root,
                port=self.site.hub_port,
                interface=self.site.hub_interface,
                log_path=self.logs / "crossbar.log",
                pidfile=self.pidfile("crossbar"),
            )
            took = time.monotonic() - started
            print(f"hub: started crossbar on {self.site.hub_url} (pid {pid}, ready in {took:.1f} s)", file=out)
        # Directors first: an agent asks its director for rules once, when it joins.
        directors = [i for i in wanted if i.agent_class == ACCESS_DIRECTOR]
        started: list[str] = []
        failed = self._start(directors, out, started)
        failed += self._start([i for i in wanted if i.agent_class != ACCESS_DIRECTOR], out, started)
        if failed:
            self._undo(started, started_hub, out)
            raise LocalSiteError(f"{len(failed)} agent(s) failed to start: {', '.join(failed)}")
        degraded = self._first_cycles([i for i in wanted if i.instance_id in started], out)
        if degraded:
            raise LocalSiteError(
                f"{len(degraded)} agent(s) came up degraded: {', '.join(degraded)} "
                "(they keep running; 'hpcsync status' shows their last error)"
            )

    def _undo(self, started: list[str], started_hub: bool, out) -> None:
        """Stop what a failed ``up`` started: its agents and, if it started it, the hub."""
        for iid in started:
            pid = daemon.read_pid(self.pidfile(iid))
            if pid:
                daemon.stop(pid, sig=9, timeout=5)
            self.pidfile(iid).unlink(missing_ok=True)
        if started_hub:
            pid = daemon.read_pid(self.pidfile("crossbar"))
            if pid:
                daemon.stop(pid, timeout=10)
            self.pidfile("crossbar").unlink(missing_ok=True)
            print("hub: stopped again, since not every agent started", file=out)

    def _first_cycles(self, instances: list[AgentInstance], out) -> list[str]:
        """Wait for each agent's running processes to finish a cycle; the ids that are degraded."""
        deadline = time.monotonic() + FIRST_CYCLE_TIMEOUT
        degraded = []
        for inst in instances:
            health: dict = {}

            def cycled(iid: str = inst.instance_id, health: dict = health) -> bool:
                health.update(agent_health(agent_api(self.site, iid, timeout=3)))
                return health["first_cycle_done"]

            if not daemon.wait_until(cycled, max(0.0, deadline - time.monotonic()), 0.3):
                print(f"{inst.instance_id}: no cycle finished within {FIRST_CYCLE_TIMEOUT:g} s yet", file=out)
            if health.get("degraded"):
                degraded.append(inst.instance_id)
                print(f"{inst.instance_id}: degraded: {health.get('last_error') or 'see its log'}", file=out)
        return degraded

    def demo_credentials(self) -> tuple[Path, Path] | None:
        """The site config's ``demo-credentials`` (policy file, client password file), if any."""
        try:
            raw = yaml.safe_load(self.site.path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return None  # load_site_config already read it; nothing new to report here
        block = raw.get("demo-credentials") if isinstance(raw, dict) else None
        if block is None:
            return None
        paths = [block.get(k) if isinstance(block, dict) else None for k in ("access-policy", "client-passwords")]
        if not all(isinstance(p, str) and p for p in paths):
            raise LocalSiteError(
                f"{self.site.path}: demo-credentials needs 'access-policy' and 'client-passwords' file paths"
            )
        return Path(paths[0]).expanduser(), Path(paths[1]).expanduser()

    def _start(self, instances: list[AgentInstance], out, started: list[str]) -> list[str]:
        """Start the instances not already running; wait for each to register. Failed ids."""
        spawned: dict[str, object] = {}
        for inst in instances:
            pid = daemon.read_pid(self.pidfile(inst.instance_id))
            if pid and daemon.pid_alive(pid):
                print(f"{inst.instance_id}: already running (pid {pid})", file=out)
                continue
            spawned[inst.instance_id] = self._spawn_agent(inst)
            started.append(inst.instance_id)
        failed = []
        for iid, proc in spawned.items():
            started = time.monotonic()
            ok = daemon.wait_until(lambda p=proc, i=iid: self._registered(p, i), AGENT_READY_TIMEOUT, 0.2)
            if proc.poll() is not None or not ok:
                state = f"exited with status {proc.poll()}" if proc.poll() is not None else "did not register"
                failed.append(iid)
                log = self.logs / f"{iid}.log"
                print(f"{iid}: {state}; see {log}:\n{hub.tail(log)}", file=out)
            else:
                print(f"{iid}: up (pid {proc.pid}, registered in {time.monotonic() - started:.1f} s)", file=out)
        return failed

    def _registered(self, proc, instance_id: str) -> bool:
        # An agent that exited will never register: stop waiting for it.
        return proc.poll() is not None or bool(agent_api(self.site, instance_id, timeout=2))

    def _spawn_agent(self, inst: AgentInstance):
        argv = [
            sys.executable, "-m", "ocs.agent_cli",
            "--site-file", str(self.site.path.resolve()),
            "--site-host", self.site.host_name(self.host),
            "--instance-id", inst.instance_id,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return daemon.spawn(
            argv,
            log_path=self.logs / f"{inst.instance_id}.log",
            pidfile=self.pidfile(inst.instance_id),
            env=env,
        )

    # -- down -------------------------------------------------------------------------

    def down(self, out=sys.stdout) -> None:
        pids_dir = self.run_dir / "pids"
        names = sorted(p.stem for p in pids_dir.glob("*.pid")) if pids_dir.is_dir() else []
        agents = [n for n in names if n != "crossbar"]
        # ocs agents take 6-8 s to leave on SIGTERM: signal all, then wait for each.
        pids = {}
        for name in agents:
            pid = daemon.read_pid(self.pidfile(name))
            if pid and daemon.pid_alive(pid):
                pids[name] = pid
                try:
                    os.kill(pid, 15)
                except ProcessLookupError:
                    pass
        for name in agents:
            if name in pids:
                daemon.stop(pids[name], timeout=10)
                print(f"{name}: stopped (pid {pids[name]})", file=out)
            self.pidfile(name).unlink(missing_ok=True)
        pid = daemon.read_pid(self.pidfile("crossbar"))
        if pid and daemon.stop(pid, timeout=10):
            print(f"hub: stopped crossbar (pid {pid})", file=out)
        self.pidfile("crossbar").unlink(missing_ok=True)
        if not names:
            print(f"nothing to stop in {self.run_dir}", file=out)

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict:
        """What runs: the hub, and each instance with its pid, registration and ops."""
        pid = daemon.read_pid(self.pidfile("crossbar"))
        report = {
            "hub": {
                "url": self.site.hub_url,
                "pid": pid if pid and daemon.pid_alive(pid) else None,
                "ready": hub.hub_ready(self.site.hub_interface, self.site.hub_port),
            },
            "agents": [],
        }
        for inst in self.instances():
            apid = daemon.read_pid(self.pidfile(inst.instance_id))
            entry = {
                "instance_id": inst.instance_id,
                "agent_class": inst.agent_class,
                "pid": apid if apid and daemon.pid_alive(apid) else None,
                "registered": False,
                "access_policy": None,
                "degraded": None,
                "last_error": None,
                "last_success_age": None,
                "ops": {},
            }
            if report["hub"]["ready"]:
                try:
                    api = agent_api(self.site, inst.instance_id, timeout=3)
                except (requests.RequestException, LocalSiteError, ValueError):
                    api = None
                if api:
                    entry["registered"] = True
                    entry["access_policy"] = (api.get("access_control") or {}).get("policy")
                    health = agent_health(api)
                    entry.update({k: health[k] for k in ("degraded", "last_error", "last_success_age")})
                    for kind in ("tasks", "processes"):
                        for name, session, _info in api.get(kind, []):
                            entry["ops"][name] = {
                                "kind": kind[:-1] if kind == "tasks" else "process",
                                "status": session.get("status", "no_history"),
                                "success": session.get("success"),
                                "degraded": bool(session.get("degraded")),
                            }
            report["agents"].append(entry)
        return report


def one_line(text: str | None) -> str | None:
    """The first line of an error, for a status line."""
    if not text:
        return None
    lines = str(text).strip().splitlines()
    return lines[0] if lines else None


def _error_of(session: dict) -> tuple[float, str] | None:
    error = (session.get("data") or {}).get("last_error")
    if isinstance(error, dict) and error.get("message"):
        return float(error.get("time") or 0), one_line(error["message"])
    if isinstance(error, str) and error:
        return 0.0, one_line(error)
    return None


def _last_success(session: dict) -> float | None:
    """When the session's last cycle (or run) ended well, as far as session.data tells."""
    data = session.get("data") or {}
    if data.get("last_success_at"):
        return float(data["last_success_at"])
    cycle = data.get("last_cycle")
    if isinstance(cycle, dict) and cycle.get("ok") and cycle.get("finished_at"):
        return float(cycle["finished_at"])
    if not session.get("degraded") and data.get("next_run_at") and data.get("interval") is not None:
        return float(data["next_run_at"]) - float(data["interval"])  # the cycle before the wait
    if session.get("success") and session.get("end_time"):
        return float(session["end_time"])
    return None


def agent_health(api: dict, now: float | None = None) -> dict:
    """An agent's health from its ``get_api`` answer (each op's session):

    ``degraded`` (any op), ``last_error`` (one line; a degraded op's, else the newest),
    ``last_success_age`` (seconds since a running process last ended a cycle well) and
    ``first_cycle_done`` (every running process has finished a cycle, or failed).
    """
    now = time.time() if now is None else now
    sessions = [s for kind in ("tasks", "processes") for _n, s, _i in api.get(kind, [])]
    processes = [s for _n, s, _i in api.get("processes", []) if s.get("status") in ("starting", "running")]
    degraded = any(s.get("degraded") for s in sessions)
    errors = [e for s in sessions if (e := _error_of(s)) and (s.get("degraded") or not degraded)]
    successes = [t for s in processes if (t := _last_success(s)) is not None]
    return {
        "degraded": degraded,
        "last_error": max(errors)[1] if errors else None,
        "last_success_age": round(now - max(successes), 1) if successes else None,
        "first_cycle_done": all(
            s.get("degraded") or _error_of(s) or _last_success(s) is not None or s.get("status") != "running"
            for s in processes
        ),
    }


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(report: dict) -> str:
    hub_state = "ready" if report["hub"]["ready"] else "not answering"
    lines = [f"hub {report['hub']['url']}: {hub_state} (pid {report['hub']['pid'] or '-'})"]
    for agent in report["agents"]:
        state = "registered" if agent["registered"] else ("running, not registered" if agent["pid"] else "stopped")
        if agent["registered"]:
            state += ", DEGRADED" if agent.get("degraded") else ", healthy"
        policy = f", access {agent['access_policy']}" if agent.get("access_policy") else ""
        lines.append(f"  {agent['instance_id']} [{agent['agent_class']}]: {state} (pid {agent['pid'] or '-'}{policy})")
        if agent.get("last_success_age") is not None:
            lines.append(f"      last good cycle {_age(agent['last_success_age'])} ago")
        if agent.get("last_error"):
            lines.append(f"      last error: {agent['last_error']}")
        for name, op in sorted(agent["ops"].items()):
            result = "" if op["success"] is None else (" ok" if op["success"] else " failed")
            flag = " (degraded)" if op.get("degraded") else ""
            lines.append(f"      {op['kind']:8s} {name}: {op['status']}{result}{flag}")
    return "\n".join(lines)


def status_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
