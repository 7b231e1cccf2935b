"""A real crossbar hub on a free loopback port, with agents started by ``ocs-agent-cli``.

The hub is started through :mod:`hpcsync.agents.core.hub` (the code ``hpcsync up`` uses).
:meth:`Hub.start_agent` adds the instance to the harness's site config, launches it as a
separate process and returns once an :class:`ocs.ocs_client.OCSClient` can reach it.

Access control is on, as in a deployment: every hpcsync agent gets the harness's
``--access-policy file:...`` (passwords made by :func:`~hpcsync.agents.core.access.ensure_demo_credentials`)
unless the test passes its own, and :meth:`Hub.client` presents the level-2 password
unless told otherwise (``privs=1``: no password). :meth:`Hub.wamp_call` calls a procedure
over ``/ws`` the way ocs-web does (autobahn, not the HTTP bridge).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hpcsync.agents import plugin
from hpcsync.agents.core import access, daemon, hub

from . import ServiceError, free_port, log_tail

REALM = "test_realm"
ADDRESS_ROOT = "observatory"

#: Default of :meth:`Hub.start_agent` and :meth:`Hub.client`: the harness's policy/password.
HARNESS = object()

#: A WAMP client over ``/ws`` (asyncio autobahn; ocs-web uses autobahn-js): request on
#: stdin as JSON ``{"action": "call"|"publish", "uri", "args", "kwargs"}``, reply on stdout.
_WAMP_CLIENT = r"""
import asyncio, json, sys
import txaio
txaio.use_asyncio()
from autobahn.asyncio.wamp import ApplicationRunner, ApplicationSession
from autobahn.wamp.types import PublishOptions

url, realm = sys.argv[1:3]
request = json.load(sys.stdin)
reply = {}

class Client(ApplicationSession):
    async def onJoin(self, details):
        try:
            if request["action"] == "call":
                reply["result"] = await self.call(request["uri"], *request["args"], **request["kwargs"])
            else:
                options = PublishOptions(acknowledge=True, exclude_me=True)
                await self.publish(request["uri"], *request["args"], options=options, **request["kwargs"])
                reply["result"] = None
        except Exception as exc:
            reply["error"] = f"{type(exc).__name__}: {exc}"
        self.leave()

    def onDisconnect(self):
        asyncio.get_event_loop().stop()

ApplicationRunner(url, realm).run(Client)
print(json.dumps(reply))
"""


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
    def policy_file(self) -> Path:
        """The harness's access policy (md5 hashes), given to hpcsync agents as ``file:``."""
        return self.base / "access" / "policy.yaml"

    @property
    def passwords_file(self) -> Path:
        """The matching OCS client password file (``OCS_PASSWORDS_FILE``), clear text."""
        return self.base / "access" / "ocs-passwords.yaml"

    def password(self, level: int = 2) -> str:
        """The harness's clear-text password for credential level 2 or 3."""
        rows = yaml.safe_load(self.passwords_file.read_text())
        return rows[0][f"password_{level}"]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

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
        access_policy: str | object | None = HARNESS,
    ) -> AgentProcess:
        """Launch the instance and wait until it answers ``get_api`` through the hub.

        ``access_policy``: by default an hpcsync agent gets ``--access-policy
        file:<policy_file>`` (unless ``arguments`` hold one); None gives none; a string is
        passed as the policy. ocs's own agents get only what ``arguments`` say.
        """
        arguments = list(arguments or [])
        if access_policy is HARNESS:
            has_own = any(a == "--access-policy" or a.startswith("--access-policy=") for a in arguments)
            access_policy = None if has_own or agent_class not in plugin.agents else f"file:{self.policy_file}"
        if access_policy is not None:
            arguments += ["--access-policy", str(access_policy)]
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

    def client(self, instance_id: str, privs: str | int | object = HARNESS):
        """An OCSClient for the instance; by default it sends the harness's level-2 password.

        ``privs`` as OCSClient takes it: a password (str), or a level (int) looked up in
        ``$OCS_PASSWORDS_FILE``; 1 sends no password.
        """
        from ocs.ocs_client import OCSClient

        if privs is HARNESS:
            privs = self.password(2)
        return OCSClient(instance_id, privs=privs, args=self.client_args)

    def wamp_call(self, procedure: str, args: list, kwargs: dict | None = None, timeout: float = 30.0):
        """Call ``procedure`` over ``/ws`` from a fresh autobahn session (as ocs-web does).

        Returns the result; raises :class:`ServiceError` with the router's error otherwise.
        The request travels on stdin, so no password shows in the caller's argv either.
        """
        return self._wamp("call", procedure, args, kwargs, timeout)

    def wamp_publish(self, topic: str, args: list, kwargs: dict | None = None, timeout: float = 30.0) -> None:
        """Publish an event on ``topic`` over ``/ws``, as any client of the hub could."""
        self._wamp("publish", topic, args, kwargs, timeout)

    def _wamp(self, action: str, uri: str, args: list, kwargs: dict | None, timeout: float):
        request = json.dumps({"action": action, "uri": uri, "args": list(args), "kwargs": dict(kwargs or {})})
        proc = subprocess.run(
            [sys.executable, "-c", _WAMP_CLIENT, self.ws_url, REALM],
            input=request,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise ServiceError(f"WAMP {action} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        reply = json.loads(lines[-1])
        if "error" in reply:
            raise ServiceError(f"{uri}: {reply['error']}")
        return reply["result"]

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
    access.ensure_demo_credentials(h.policy_file, h.passwords_file)
    h.write_site_config()
    return h
