"""Reading and checking OCS site config files (the YAML ``ocs-agent-cli`` reads).

ocs itself reports a broken site config late and vaguely (a KeyError in an agent log).
:func:`load_site_config` checks the shape up front and names the file and key at fault;
``hpcsync up``, the docker-compose check and the tests all read site configs through it.
:func:`unknown_keys` names keys ocs would silently ignore (``agent-instance:``), and
:func:`parse_instance` runs an instance's ``arguments`` through its agent's own parser,
naming a misspelt option and the one that was meant. :func:`find_site_file` looks for the
file as ocs does.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import importlib
import io
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


#: The keys ocs (and hpcsync, for the demo) reads at each level; anything else is a typo
#: that ocs would silently ignore.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "top": ("hub", "hosts", "demo-credentials", "create-directories"),
    "hub": ("wamp_server", "wamp_http", "wamp_realm", "address_root", "registry_address", "access_policy"),
    "host": (
        "agent-instances",
        "agent-paths",
        "crossbar",
        "crossbar_timeout",
        "log-dir",
        "wamp_server",
        "wamp_http",
        "wamp_realm",
    ),
    "instance": ("agent-class", "instance-id", "arguments", "manage"),
    "demo-credentials": ("access-policy", "client-passwords"),
}

#: The demo site config shipped in the repository (last place :func:`find_site_file` looks).
DEMO_SITE_FILE = Path(__file__).resolve().parents[2] / "site-configs" / "default.yaml"


def find_site_file(explicit: str | os.PathLike | None = None) -> Path:
    """The site config, looked up as ocs does: ``explicit`` (``--site-file``), else
    ``$OCS_CONFIG_DIR/default.yaml``, else the repository's demo; from any directory."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("OCS_CONFIG_DIR"):
        return Path(os.environ["OCS_CONFIG_DIR"]).expanduser() / "default.yaml"
    return DEMO_SITE_FILE


def add_site_arguments(parser: argparse.ArgumentParser) -> None:
    """``--site-file`` and ``--site-host``, with SUPPRESS defaults so that they work before
    or after a subcommand (read them with ``getattr(args, "site_file", None)``)."""
    parser.add_argument(
        "--site-file",
        default=argparse.SUPPRESS,
        help="site config (default: $OCS_CONFIG_DIR/default.yaml, else the repository's demo)",
    )
    parser.add_argument(
        "--site-host",
        default=argparse.SUPPRESS,
        help="host block to use (default: $SITE_HOST, this hostname, else 'localhost')",
    )


def suggest(word: str, known: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or nothing."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_keys(path: str | os.PathLike) -> list[str]:
    """One line per key of the site config that neither ocs nor hpcsync reads."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []  # load_site_config says what is wrong with the file itself
    problems: list[str] = []

    def check(block: Any, level: str, where: str) -> None:
        if not isinstance(block, dict):
            return
        for key in block:
            if key not in KNOWN_KEYS[level]:
                problems.append(f"{path}: {where}unknown key {key!r}{suggest(str(key), KNOWN_KEYS[level])}")

    check(raw, "top", "")
    if not isinstance(raw, dict):
        return problems
    check(raw.get("hub"), "hub", "hub: ")
    check(raw.get("demo-credentials"), "demo-credentials", "demo-credentials: ")
    for name, host in (raw.get("hosts") or {}).items() if isinstance(raw.get("hosts"), dict) else ():
        check(host, "host", f"hosts.{name}: ")
        if isinstance(host, dict) and "agent-instances" not in host:
            problems.append(f"{path}: hosts.{name}: no 'agent-instances' list, so no agent would start")
        for i, inst in enumerate((host or {}).get("agent-instances") or [] if isinstance(host, dict) else []):
            iid = inst.get("instance-id", f"agent-instances[{i}]") if isinstance(inst, dict) else i
            check(inst, "instance", f"{iid}: ")
    return problems


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


def flatten_arguments(args: Any) -> list[str]:
    """An instance's ``arguments`` (nested lists, as ocs allows) as one flat argv."""
    out: list[str] = []
    for item in args:
        if isinstance(item, (list, tuple)):
            out += flatten_arguments(item)
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
    return AgentInstance(raw["agent-class"], iid, flatten_arguments(args), raw.get("manage"))


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


class _RaisingParser(argparse.ArgumentParser):
    """An argument parser that raises instead of printing a usage and exiting."""

    def error(self, message: str):
        raise SiteConfigError(message)

    def exit(self, status: int = 0, message: str | None = None):
        raise SiteConfigError(message or f"exit {status}")


@functools.cache
def known_agent_classes() -> dict[str, dict[str, str]]:
    """Every agent class ``ocs-agent-cli`` can start (all ``ocs.plugins``): class -> module."""
    from ocs.agent_cli import build_agent_list

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the plugins it found
        return build_agent_list()


def agent_parser(agent_class: str) -> argparse.ArgumentParser | None:
    """The parser ``ocs-agent-cli`` gives an instance of ``agent_class``: the agent's own
    arguments (``make_parser``, or ``add_agent_args`` as ocs's own agents call it) plus
    ocs's site arguments, raising :class:`SiteConfigError` on errors. None if the agent's
    module offers neither (its arguments cannot be known before it starts)."""
    from ocs import site_config

    classes = known_agent_classes()
    if agent_class not in classes:
        raise SiteConfigError(
            f"unknown agent-class {agent_class!r}{suggest(agent_class, sorted(classes))}; "
            f"known: {', '.join(sorted(classes))}"
        )
    module = importlib.import_module(classes[agent_class]["module"])
    build = getattr(module, "make_parser", None) or getattr(module, "add_agent_args", None)
    if build is None:
        return None
    parser = build(_RaisingParser(prog=agent_class, add_help=False))
    site_config.add_arguments(parser)
    return parser


def parse_instance(site: SiteConfig, inst: AgentInstance) -> argparse.Namespace:
    """The instance's ``arguments`` parsed by its agent's parser, as the agent will parse them.

    Raises :class:`SiteConfigError` naming the file, the instance and the option: an
    unknown option with the closest known one, a missing required option, a bad value.
    """
    where = f"{site.path}: {inst.instance_id}"
    try:
        parser = agent_parser(inst.agent_class)
    except SiteConfigError as exc:
        raise SiteConfigError(f"{where}: {exc}") from None
    if parser is None:
        return argparse.Namespace(agent_class=inst.agent_class, instance_id=inst.instance_id)
    known = parser._option_string_actions  # argparse keeps no public list of option strings
    for token in inst.arguments:
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        if name in known or len([k for k in known if k.startswith(name)]) == 1:
            continue
        options = sorted(k for k in known if k.startswith("--"))
        hint = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        better = f"; did you mean {hint[0]}?" if hint else f"; {inst.agent_class} takes: {', '.join(options)}"
        raise SiteConfigError(f"{where}: unknown argument {name}{better}")
    try:
        args = parser.parse_args([*inst.arguments, "--instance-id", inst.instance_id])
    except SiteConfigError as exc:
        text = str(exc).replace("the following arguments are required:", "missing required argument(s):")
        raise SiteConfigError(f"{where}: {text}") from None
    args.agent_class = inst.agent_class
    return args
