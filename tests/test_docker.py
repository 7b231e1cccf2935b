"""The compose file parses and every service names an instance of the site config it mounts.

No docker engine runs here, so the images are not built; this checks what an operator
would get wrong by hand: a service whose INSTANCE_ID is missing from the mounted site
config (or under another host block), an agent class nothing provides, a secret written
into the compose file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from hpcsync.agents import plugin
from hpcsync.agents.core.hub import crossbar_config
from hpcsync.agents.core.siteconfig import load_site_config

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "docker-compose.yml"


def _services() -> dict:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose.get("services"), dict) and compose["services"]
    return compose["services"]


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def _mounted_config_dir(service: dict) -> Path:
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if target == "/config":
            return (DOCKER / source).resolve()
    raise AssertionError(f"service mounts no /config: {service}")


def test_every_agent_service_names_an_instance_of_its_site_config():
    agent_services = {name: s for name, s in _services().items() if "INSTANCE_ID" in _env(s)}
    assert agent_services, "the compose file runs no agent"
    for name, service in agent_services.items():
        env = _env(service)
        site = load_site_config(_mounted_config_dir(service) / "default.yaml")
        host = env.get("SITE_HOST") or service.get("hostname")
        assert host in site.hosts, f"{name}: host {host!r} not in {site.path}"
        instances = {i.instance_id: i for i in site.instances(host)}
        assert env["INSTANCE_ID"] in instances, f"{name}: {env['INSTANCE_ID']} not under host {host} in {site.path}"
        agent_class = instances[env["INSTANCE_ID"]].agent_class
        assert agent_class in plugin.agents, f"{name}: agent class {agent_class} is not provided by hpcsync"
        assert env["SITE_HUB"].startswith("ws://") and env["SITE_HTTP"].endswith("/call")


def test_one_service_per_instance_and_no_secret_in_the_file():
    ids = [_env(s)["INSTANCE_ID"] for s in _services().values() if "INSTANCE_ID" in _env(s)]
    assert len(ids) == len(set(ids))
    text = COMPOSE.read_text()
    assert not re.search(r"(?i)(token|password|secret)[A-Z_]*=\S", text), "secrets belong in files, not compose"


def test_crossbar_config_matches_what_hpcsync_generates():
    shipped = json.loads((DOCKER / "crossbar" / "config.json").read_text())
    assert shipped == crossbar_config(realm="test_realm", address_root="observatory", port=8001)


def test_every_shipped_site_config_passes_its_agents_parsers():
    """An argument typo in a shipped site config would only show when the container starts."""
    import importlib

    root = DOCKER.parent / "site-configs"
    for path in sorted(root.rglob("*.yaml")):
        site = load_site_config(path)
        for inst in site.all_instances():
            entry = plugin.agents.get(inst.agent_class)
            assert entry, f"{path}: {inst.instance_id}: no agent class {inst.agent_class}"
            parser = importlib.import_module(entry["module"]).make_parser(None)
            _, unknown = parser.parse_known_args(inst.arguments)
            assert unknown == [], f"{path}: {inst.instance_id}: unknown arguments {unknown}"
