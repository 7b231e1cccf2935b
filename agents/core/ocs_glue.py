"""The few lines every hpcsync ``agent.py`` needs to join the OCS hub.

``start_agent`` does what ocs's barebones ``main`` does (txaio logging, site-config
argument parsing, ``init_site_agent``), resolves hpcsync's ``--access-policy file:/path``
(passwords from a file, never from the command line; see :mod:`.access`), and bridges
Python ``logging`` (used by the plain engines) into the agent's txaio log, so one log shows
both.

**The hub may go away and come back.** ocs ends an agent whose hub has been gone for
``crossbar_timeout`` seconds (10 by default), and nothing starts it again. An hpcsync agent
waits for its hub for ever instead (``crossbar_timeout`` 0, unless the site config, the
instance's arguments, ``--crossbar-timeout`` or ``$CROSSBAR_TIMEOUT`` set one): its
processes go on working through the outage (SupRsync keeps copying), and it tries the hub
again at least every :data:`HUB_RETRY_MAX_DELAY` seconds (autobahn's default backoff
grows to 60 s), so it is registered again soon after the hub returns, however long the
outage. At start it waits for the hub to answer before joining: autobahn's capped retry
gives up on a hub that was never reached.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from . import access
from .secrets import SecretError
from .siteconfig import flatten_arguments


class _TxaioHandler(logging.Handler):
    """Forward stdlib log records of the engines to the agent's txaio logger."""

    def __init__(self, txlog: Any):
        super().__init__()
        self._txlog = txlog

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name}: {record.getMessage()}"
        except Exception:  # a bad format string must not kill the op
            text = f"{record.name}: {record.msg!r}"
        level = record.levelno
        # txaio formats with {}; escape braces in the already-rendered text.
        text = text.replace("{", "{{").replace("}", "}}")
        if level >= logging.ERROR:
            self._txlog.error(text)
        elif level >= logging.WARNING:
            self._txlog.warn(text)
        elif level >= logging.INFO:
            self._txlog.info(text)
        else:
            self._txlog.debug(text)


def start_agent(
    agent_class: str,
    make_parser: Callable[[argparse.ArgumentParser | None], argparse.ArgumentParser],
    args: Sequence[str] | None = None,
):
    """Parse site-config + command-line arguments and create the OCS agent and runner.

    Returns ``(agent, runner, args)``. The caller constructs its agent class, registers
    ops and calls ``runner.run(agent, auto_reconnect=True)``. A policy that cannot be read
    or parsed ends the process with a one-line message naming the file or variable.
    """
    import txaio
    from ocs import ocs_agent, site_config

    txaio.use_twisted()
    parser = make_parser(None)
    parsed = site_config.parse_args(agent_class=agent_class, parser=parser, args=args)
    try:
        policy = access.prepare(parsed)
    except SecretError as exc:
        # Before txaio takes over stderr: the message is the process's last line, as is.
        raise SystemExit(f"{agent_class} {parsed.instance_id}: {exc}") from None

    txaio.make_logger()
    txaio.start_logging(level=os.environ.get("LOGLEVEL", "info"))
    if not _crossbar_timeout_given(parsed, args):
        parsed.crossbar_timeout = 0  # wait for the hub for ever (see the module docstring)
    agent, runner = ocs_agent.init_site_agent(parsed)
    if parsed.crossbar_timeout == 0:
        runner.max_retries = -1
        runner.initial_retry_delay = 1.0
        runner.max_retry_delay = HUB_RETRY_MAX_DELAY
        wait_for_hub(parsed.site_hub, agent.log)
    access.apply(agent, parsed, policy)
    agent.log.info(access.describe(policy))

    root = logging.getLogger("hpcsync")
    root.handlers[:] = [_TxaioHandler(agent.log)]
    root.setLevel(logging.DEBUG if os.environ.get("LOGLEVEL") == "debug" else logging.INFO)
    root.propagate = False
    return agent, runner, parsed


#: Longest pause between two attempts to reach a hub that went away (s).
HUB_RETRY_MAX_DELAY = 10.0
#: How often an agent waiting for its hub at start says so in its log (s).
HUB_WAIT_LOG_EVERY = 60.0


def _crossbar_timeout_given(parsed: argparse.Namespace, args: Sequence[str] | None) -> bool:
    """True if an operator chose a crossbar timeout: on the command line or in ``$CROSSBAR_TIMEOUT``
    (ocs-agent-cli passes it on), in the instance's arguments, or as the host's ``crossbar_timeout``."""
    argv = list(sys.argv[1:] if args is None else args)
    if any(a == "--crossbar-timeout" or a.startswith("--crossbar-timeout=") for a in argv):
        return True
    try:
        raw = yaml.safe_load(Path(parsed.site_file).read_text(encoding="utf-8"))
        hosts = raw["hosts"]
        host = next(h for h in (parsed.site_host, socket.gethostname(), "localhost") if h in hosts)
        block = hosts[host]
        instance = next(i for i in block["agent-instances"] if i.get("instance-id") == parsed.instance_id)
    except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration):
        return False  # ocs has already read this file; what it could not find was not given
    if "crossbar_timeout" in block:
        return True
    return any(a.startswith("--crossbar-timeout") for a in flatten_arguments(instance.get("arguments") or []))


def wait_for_hub(url: str, log: Any, *, poll: float = 1.0) -> None:
    """Return once something accepts connections at the hub's address (log while waiting)."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "wss" else 80))
    next_log = time.monotonic()
    while True:
        try:
            socket.create_connection(address, timeout=poll).close()
            return
        except OSError as exc:
            if time.monotonic() >= next_log:
                log.warn("waiting for the hub at {url}: {reason}", url=url, reason=exc.strerror or exc)
                next_log = time.monotonic() + HUB_WAIT_LOG_EVERY
            time.sleep(poll)
