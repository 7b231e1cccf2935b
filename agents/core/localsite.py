"""``hpcsync up | down | status``: a site config's hub and agents on this machine.

What ``ocs-local-support`` does, without its bugs: one run directory holds the crossbar
config, every PID file and every log; ``down`` stops exactly what ``up`` started (by PID);
``status`` asks each agent over the hub for its ops and their state.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from . import daemon, hub
from .siteconfig import AgentInstance, SiteConfig

#: Seconds an agent gets to register on the hub after it was started.
AGENT_READY_TIMEOUT = 60.0


class LocalSiteError(RuntimeError):
    pass


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

    def up(self, only: list[str] | None = None, out=sys.stdout) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        crossbar_pid = daemon.read_pid(self.pidfile("crossbar"))
        if crossbar_pid and daemon.pid_alive(crossbar_pid):
            print(f"hub: already running (pid {crossbar_pid})", file=out)
        else:
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
        wanted = [i for i in self.instances() if not only or i.instance_id in only]
        unknown = set(only or ()) - {i.instance_id for i in wanted}
        if unknown:
            raise LocalSiteError(f"no such instance in {self.site.path}: {', '.join(sorted(unknown))}")
        spawned: dict[str, object] = {}
        for inst in wanted:
            pid = daemon.read_pid(self.pidfile(inst.instance_id))
            if pid and daemon.pid_alive(pid):
                print(f"{inst.instance_id}: already running (pid {pid})", file=out)
                continue
            spawned[inst.instance_id] = self._spawn_agent(inst)
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
        if failed:
            raise LocalSiteError(f"{len(failed)} agent(s) failed to start: {', '.join(failed)}")

    def _registered(self, proc, instance_id: str) -> bool:
        # An agent that exited will never register: stop waiting for it.
        return proc.poll() is not None or bool(agent_api(self.site, instance_id, timeout=2))

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
                "ops": {},
            }
            if report["hub"]["ready"]:
                try:
                    api = agent_api(self.site, inst.instance_id, timeout=3)
                except (requests.RequestException, LocalSiteError, ValueError):
                    api = None
                if api:
                    entry["registered"] = True
                    for kind in ("tasks", "processes"):
                        for name, session, _info in api.get(kind, []):
                            entry["ops"][name] = {
                                "kind": kind[:-1] if kind == "tasks" else "process",
                                "status": session.get("status", "no_history"),
                                "success": session.get("success"),
                            }
            report["agents"].append(entry)
        return report


def format_status(report: dict) -> str:
    hub_state = "ready" if report["hub"]["ready"] else "not answering"
    lines = [f"hub {report['hub']['url']}: {hub_state} (pid {report['hub']['pid'] or '-'})"]
    for agent in report["agents"]:
        state = "registered" if agent["registered"] else ("running, not registered" if agent["pid"] else "stopped")
        lines.append(f"  {agent['instance_id']} [{agent['agent_class']}]: {state} (pid {agent['pid'] or '-'})")
        for name, op in sorted(agent["ops"].items()):
            result = "" if op["success"] is None else (" ok" if op["success"] else " failed")
            lines.append(f"      {op['kind']:8s} {name}: {op['status']}{result}")
    return "\n".join(lines)


def status_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
