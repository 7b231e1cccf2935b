"""The crossbar WAMP hub: its config file, start, readiness and stop.

ocs's shipped crossbar template is rejected by crossbar 26.x (``auto_ping_size`` 4) and
listens on all interfaces. :func:`crossbar_config` writes a config that crossbar accepts,
binds to loopback unless told otherwise, and serves ``/info`` for readiness checks. Both
``hpcsync up`` and the test harness start the hub through this module.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from . import daemon


class HubError(RuntimeError):
    """The hub could not be configured or started."""


def crossbar_config(*, realm: str, address_root: str, port: int, interface: str = "127.0.0.1") -> dict:
    """A crossbar 26.x config for one OCS realm.

    Agents join ``/ws`` anonymously with the ``iocs_agent`` role; clients call through the
    ``/call`` HTTP bridge with the ``iocs_controller`` role (no register). Both are limited
    to URIs under ``address_root``.
    """
    prefix = address_root + "."

    def role(name: str, register: bool) -> dict:
        return {
            "name": name,
            "permissions": [
                {
                    "uri": prefix,
                    "match": "prefix",
                    "allow": {"call": True, "register": register, "publish": True, "subscribe": True},
                    "disclose": {"caller": False, "publisher": False},
                    "cache": True,
                }
            ],
        }

    return {
        "version": 2,
        "controller": {},
        "workers": [
            {
                "type": "router",
                "realms": [{"name": realm, "roles": [role("iocs_agent", True), role("iocs_controller", False)]}],
                "transports": [
                    {
                        "type": "web",
                        "endpoint": {"type": "tcp", "port": int(port), "interface": interface},
                        "paths": {
                            "ws": {
                                "type": "websocket",
                                "auth": {"anonymous": {"type": "static", "role": "iocs_agent"}},
                                "options": {
                                    "open_handshake_timeout": 2500,
                                    "close_handshake_timeout": 1000,
                                    "auto_ping_interval": 10000,
                                    "auto_ping_timeout": 5000,
                                    "auto_ping_size": 12,
                                },
                            },
                            "call": {"type": "caller", "realm": realm, "role": "iocs_controller", "options": {}},
                            "info": {"type": "nodeinfo"},
                        },
                    }
                ],
            }
        ],
    }


def write_crossbar_config(cbdir: str | os.PathLike, **kwargs) -> Path:
    cbdir = Path(cbdir)
    cbdir.mkdir(parents=True, exist_ok=True)
    path = cbdir / "config.json"
    path.write_text(json.dumps(crossbar_config(**kwargs), indent=2))
    return path


def find_crossbar() -> str:
    """The crossbar program: ``$HPCSYNC_CROSSBAR``, beside this Python, or on PATH."""
    candidates = [
        os.environ.get("HPCSYNC_CROSSBAR"),
        str(Path(sys.executable).parent / "crossbar"),
        shutil.which("crossbar"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise HubError("crossbar is not installed: run ./install.sh, or set HPCSYNC_CROSSBAR to the crossbar program")


def info_url(interface: str, port: int) -> str:
    host = "127.0.0.1" if interface in ("0.0.0.0", "") else interface
    return f"http://{host}:{port}/info"


def hub_ready(interface: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(info_url(interface, port), timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_crossbar(
    cbdir: str | os.PathLike,
    *,
    realm: str,
    address_root: str,
    port: int,
    interface: str = "127.0.0.1",
    log_path: str | os.PathLike,
    pidfile: str | os.PathLike | None = None,
    ready_timeout: float = 60.0,
) -> int:
    """Write the config, start crossbar detached, wait until ``/info`` answers; return its PID."""
    if hub_ready(interface, port, timeout=0.5):
        raise HubError(f"something already answers on {info_url(interface, port)}; is a hub running?")
    write_crossbar_config(cbdir, realm=realm, address_root=address_root, port=port, interface=interface)
    proc = daemon.spawn(
        [find_crossbar(), "start", "--cbdir", str(cbdir), "--loglevel", "warn"],
        log_path=log_path,
        pidfile=pidfile,
    )
    ready = daemon.wait_until(lambda: proc.poll() is None and hub_ready(interface, port), ready_timeout, 0.2)
    if not ready:
        code = proc.poll()
        daemon.stop(proc.pid, timeout=3)
        last_lines = tail(log_path)
        state = f"exited with status {code}" if code is not None else f"not ready after {ready_timeout:g} s"
        raise HubError(f"crossbar {state}; last log lines:\n{last_lines}")
    return proc.pid


def tail(path: str | os.PathLike, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
