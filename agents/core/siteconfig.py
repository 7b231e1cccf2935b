"""Reading and checking OCS site config files (the YAML ``ocs-agent-cli`` reads).

ocs itself reports a broken site config late and vaguely (a KeyError in an agent log).
:func:`load_site_config` checks the shape up front and names the file and key at fault;
``hpcsync up``, the docker-compose check and the tests all read site configs through it.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

_INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class SiteConfigError(ValueError):
    """The site config file is missing or malformed."""


@dataclass
class AgentInstance:
    agent_class: str
    instance_id: str
    arguments: list[str] = field(default_factory=list)
    manage: str | None = None


@dataclass
class SiteConfig:
    path: Path
    hub: dict[str, Any]
    hosts: dict[str, dict[str, Any]]

    @property
    def hub_url(self) -> str:
        return self.hub["wamp_server"]

    @property
    def realm(self) -> str:
        return self.hub["wamp_realm"]

    @property
    def address_root(self) -> str:
        return self.hub["address_root"]

    @property
    def hub_interface(self) -> str:
        return urlsplit(self.hub_url).hostname or "127.0.0.1"

    @property
    def hub_port(self) -> int:
        return urlsplit(self.hub_url).port or 8001

    def host_name(self, wanted: str | None = None) -> str:
        """The host block used: ``wanted``, else this machine's name, else ``localhost``."""
        for name in (wanted, os.environ.get("SITE_HOST"), socket.gethostname(), "localhost"):
            if name and name in self.hosts:
                return name
        raise SiteConfigError(
            f"{self.path}: no host block for {wanted or socket.gethostname()!r} and none named "
            f"'localhost' (hosts: {', '.join(self.hosts) or 'none'})"
        )

    def instances(self, host: str | None = None) -> list[AgentInstance]:
        block = self.hosts[self.host_name(host)]
        return [_instance(self.path, i, raw) for i, raw in enumerate(block.get("agent-instances") or [])]

    def all_instances(self) -> list[AgentInstance]:
        found = []
        for name in self.hosts:
            found += self.instances(name)
        return found


def _flatten(args: Any) -> list[str]:
    out: list[str] = []
    for item in args:
        if isinstance(item, (list, tuple)):
            out += _flatten(item)
        else:
            out.append(str(item))
    return out


def _instance(path: Path, index: int, raw: Any) -> AgentInstance:
    where = f"{path}: agent-instances[{index}]"
    if not isinstance(raw, dict):
        raise SiteConfigError(f"{where} is not a mapping")
    for key in ("agent-class", "instance-id"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise SiteConfigError(f"{where} has no '{key}' string")
    iid = raw["instance-id"]
    if not _INSTANCE_ID_RE.match(iid):
        raise SiteConfigError(
            f"{where}: instance-id {iid!r} may hold only letters, digits, '-' and '_' "
            "(a dot would split its WAMP address)"
        )
    args = raw.get("arguments") or []
    if not isinstance(args, (list, tuple)):
        raise SiteConfigError(f"{where} ({iid}): 'arguments' must be a list")
    return AgentInstance(raw["agent-class"], iid, _flatten(args), raw.get("manage"))


def load_site_config(path: str | os.PathLike) -> SiteConfig:
    """Read and check ``path``; raise :class:`SiteConfigError` naming what is wrong."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteConfigError(f"site config {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise SiteConfigError(f"site config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SiteConfigError(f"site config {path}: top level must be a mapping with 'hub' and 'hosts'")
    hub = raw.get("hub")
    if not isinstance(hub, dict):
        raise SiteConfigError(f"site config {path}: missing 'hub' mapping")
    for key in ("wamp_server", "wamp_http", "wamp_realm", "address_root"):
        if not isinstance(hub.get(key), str) or not hub[key]:
            raise SiteConfigError(f"site config {path}: hub.{key} must be a non-empty string")
    if urlsplit(hub["wamp_server"]).scheme not in ("ws", "wss"):
        raise SiteConfigError(f"site config {path}: hub.wamp_server must be a ws:// URL")
    if "." in hub["address_root"]:
        raise SiteConfigError(f"site config {path}: hub.address_root must not contain a dot")
    hosts = raw.get("hosts")
    if not isinstance(hosts, dict) or not hosts:
        raise SiteConfigError(f"site config {path}: missing 'hosts' mapping")
    seen: dict[str, str] = {}
    config = SiteConfig(path=path, hub=hub, hosts={})
    for name, block in hosts.items():
        if not isinstance(block, dict):
            raise SiteConfigError(f"site config {path}: hosts.{name} must be a mapping")
        config.hosts[str(name)] = block
    for name in config.hosts:
        for inst in config.instances(name):
            if inst.instance_id in seen:
                raise SiteConfigError(
                    f"site config {path}: instance-id {inst.instance_id!r} is used twice "
                    f"(hosts {seen[inst.instance_id]} and {name})"
                )
            seen[inst.instance_id] = name
    return config
