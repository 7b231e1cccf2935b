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
from ocs import site_config as ocs_site_config

from hpcsync.agents import plugin
from hpcsync.agents.core.hub import crossbar_config
from hpcsync.agents.core.siteconfig import load_site_config

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
SITE_CONFIGS = DOCKER.parent / "site-configs"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict:
    compose = _compose()
    assert isinstance(compose.get("services"), dict) and compose["services"]
    return compose["services"]


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def _volumes(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume."""
    out = []
    for volume in service.get("volumes") or []:
        parts = volume.split(":")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def _agent_services() -> dict:
    return {name: s for name, s in _services().items() if "INSTANCE_ID" in _env(s)}


def _instance_of(service: dict):
    site = load_site_config(_mounted_config_dir(service) / "default.yaml")
    host = _env(service).get("SITE_HOST") or service.get("hostname")
    return {i.instance_id: i for i in site.instances(host)}[_env(service)["INSTANCE_ID"]]


def _argument(inst, flag: str) -> str | None:
    args = inst.arguments
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


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

    for path in sorted(SITE_CONFIGS.rglob("*.yaml")):
        site = load_site_config(path)
        for inst in site.all_instances():
            entry = plugin.agents.get(inst.agent_class)
            assert entry, f"{path}: {inst.instance_id}: no agent class {inst.agent_class}"
            # As ocs parses them: the agent's own options plus the site options (--access-policy).
            parser = ocs_site_config.add_arguments(importlib.import_module(entry["module"]).make_parser(None))
            _, unknown = parser.parse_known_args(inst.arguments)
            assert unknown == [], f"{path}: {inst.instance_id}: unknown arguments {unknown}"


def test_every_shipped_agent_has_a_file_access_policy_without_passwords():
    """Access control on everywhere, and the passwords only in a file the agent reads."""
    for path in sorted(SITE_CONFIGS.rglob("*.yaml")):
        site = load_site_config(path)
        text = path.read_text()
        assert not re.search(r"(?i)override:", text), f"{path}: passwords inline (override:)"
        for inst in site.all_instances():
            policy = _argument(inst, "--access-policy") or site.hub.get("access_policy")
            where = f"{path}: {inst.instance_id}"
            assert policy and policy != "none", f"{where}: no access policy (every client could change state)"
            assert policy.startswith(("file:", "env:", "director:")), f"{where}: policy {policy!r}"


def test_the_demo_creates_the_policy_its_agents_read():
    demo = SITE_CONFIGS / "default.yaml"
    raw = yaml.safe_load(demo.read_text())
    made = raw["demo-credentials"]["access-policy"]
    for inst in load_site_config(demo).all_instances():
        assert _argument(inst, "--access-policy") == f"file:{made}", inst.instance_id


def test_agent_secrets_and_ssh_files_are_mounted_one_by_one_read_only():
    """A container gets its own key, known_hosts and policy: no whole ~/.ssh, nothing writable."""
    defined = _compose().get("secrets") or {}
    for name, service in _agent_services().items():
        for source, target, mode in _volumes(service):
            assert not source.rstrip("/").endswith(".ssh") and not target.rstrip("/").endswith(".ssh"), (
                f"{name}: mounts a whole .ssh directory ({source}:{target})"
            )
            if "ssh" in source or "known_hosts" in target or target == "/config":
                assert mode == "ro", f"{name}: {source}:{target} must be read-only"
        secrets = service.get("secrets") or []
        for secret in secrets:
            assert secret in defined and defined[secret].get("file"), f"{name}: secret {secret} is not defined"
        inst = _instance_of(service)
        mounted = {f"/run/secrets/{s}" for s in secrets} | {target for _, target, _ in _volumes(service)}
        policy = _argument(inst, "--access-policy")
        assert policy and policy.startswith("file:/run/secrets/"), f"{name}: policy {policy!r} is not a docker secret"
        assert policy[len("file:") :] in mounted, f"{name}: {policy} is not mounted"
        for flag in ("--ssh-key", "--ssh-known-hosts", "--token-file", "--credentials-file", "--passphrase"):
            value = _argument(inst, flag)
            if value:
                path = value[len("file:") :] if value.startswith("file:") else value
                assert path in mounted, f"{name}: {flag} {path} is neither a secret nor a mounted file"
        if inst.agent_class == "SupRsync" and _argument(inst, "--ssh-host"):
            assert _argument(
                inst,
                "--ssh-key",
            ).startswith("/run/secrets/"), f"{name}: ssh key is not a secret"
        if inst.agent_class == "CloudSync":  # S3 keys and the passphrase: docker secrets, never inline
            for flag in ("--credentials-file", "--passphrase"):
                value = (_argument(inst, flag) or "").removeprefix("file:")
                assert value.startswith("/run/secrets/"), f"{name}: {flag} {value!r} is not a docker secret"
