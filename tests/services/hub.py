"""A real crossbar hub on a free loopback port, with agents started by ``ocs-agent-cli``.

The hub is started through :mod:`hpcsync.agents.core.hub` (the code ``hpcsync up`` uses).
:meth:`Hub.start_agent` adds the instance to the harness's site config, launches it as a
separate process and returns once an :class:`ocs.ocs_client.OCSClient` can reach it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hpcsync.agents.core import daemon, hub

from . import ServiceError, free_port, log_tail

REALM = "test_realm"
ADDRESS_ROOT = "observatory"


@dataclass
class AgentProcess:
    instance_id: str
    pid: int
    log: Path
    started_in: float

    def alive(self) -> bool:
        return daemon.pid_alive(self.pid)

    def kill(self) -> None:
        """SIGKILL: instant (SIGTERM costs ocs agents 6-8 s of hard-coded sleeps)."""
        daemon.stop(self.pid, sig=9, timeout=5)


@dataclass
class Hub:
    base: Path
    port: int
    pid: int
    started_in: float
    instances: list[dict] = field(default_factory=list)
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    @property
    def site_file(self) -> Path:
        return self.base / "default.yaml"

    @property
    def client_args(self) -> list[str]:
        return ["--site-file", str(self.site_file), "--site-host", "localhost"]

    def write_site_config(self) -> None:
        config = {
            "hub": {
                "wamp_server": f"ws://127.0.0.1:{self.port}/ws",
                "wamp_http": f"http://127.0.0.1:{self.port}/call",
                "wamp_realm": REALM,
                "address_root": ADDRESS_ROOT,
            },
            "hosts": {"localhost": {"log-dir": str(self.base / "logs"), "agent-instances": self.instances}},
        }
        (self.base / "logs").mkdir(exist_ok=True)
        tmp = self.site_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(self.site_file)

    def add_instance(self, agent_class: str, instance_id: str, arguments: list[str] | None = None) -> None:
        self.instances = [i for i in self.instances if i["instance-id"] != instance_id]
        self.instances.append(
            {"agent-class": agent_class, "instance-id": instance_id, "arguments": list(arguments or [])}
        )
        self.write_site_config()

    def start_agent(
        self,
        agent_class: str,
        instance_id: str,
        arguments: list[str] | None = None,
        *,
        env: dict | None = None,
        timeout: float = 60.0,
    ) -> AgentProcess:
        """Launch the instance and wait until it answers ``get_api`` through the hub."""
        self.add_instance(agent_class, instance_id, arguments)
        log = self.base / "logs" / f"{instance_id}.out"
        argv = [str(Path(sys.executable).parent / "ocs-agent-cli"), *self.client_args, "--instance-id", instance_id]
        started = time.monotonic()
        proc = daemon.spawn(argv, log_path=log, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        ok = daemon.wait_until(lambda: proc.poll() is None and self._registered(instance_id), timeout, 0.1)
        if not ok:
            state = f"exited with {proc.poll()}" if proc.poll() is not None else f"not registered after {timeout:g} s"
            daemon.stop(proc.pid, sig=9, timeout=3)
            raise ServiceError(f"agent {instance_id} ({agent_class}) {state}:\n{log_tail(log, 40)}")
        agent = AgentProcess(instance_id, proc.pid, log, time.monotonic() - started)
        self.agents[instance_id] = agent
        return agent

    def _registered(self, instance_id: str) -> bool:
        from hpcsync.agents.core.localsite import agent_api
        from hpcsync.agents.core.siteconfig import load_site_config

        return bool(agent_api(load_site_config(self.site_file), instance_id, timeout=2))

    def client(self, instance_id: str):
        from ocs.ocs_client import OCSClient

        return OCSClient(instance_id, args=self.client_args)

    def stop_agents(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        self.agents.clear()

    def stop(self) -> None:
        self.stop_agents()
        daemon.stop(self.pid, timeout=10)


def start_hub(base: Path) -> Hub:
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    started = time.monotonic()
    try:
        pid = hub.start_crossbar(
            base / "crossbar",
            realm=REALM,
            address_root=ADDRESS_ROOT,
            port=port,
            log_path=base / "crossbar.log",
        )
    except hub.HubError as exc:
        raise ServiceError(str(exc)) from None
    h = Hub(base, port, pid, time.monotonic() - started)
    h.write_site_config()
    return h
