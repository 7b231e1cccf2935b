"""The few lines every hpcsync ``agent.py`` needs to join the OCS hub.

``start_agent`` does what ocs's barebones ``main`` does (txaio logging, site-config
argument parsing, ``init_site_agent``), resolves hpcsync's ``--access-policy file:/path``
(passwords from a file, never from the command line; see :mod:`.access`), and bridges
Python ``logging`` (used by the plain engines) into the agent's txaio log, so one log shows
both.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from . import access
from .secrets import SecretError


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
    agent, runner = ocs_agent.init_site_agent(parsed)
    access.apply(agent, parsed, policy)
    agent.log.info(access.describe(policy))

    root = logging.getLogger("hpcsync")
    root.handlers[:] = [_TxaioHandler(agent.log)]
    root.setLevel(logging.DEBUG if os.environ.get("LOGLEVEL") == "debug" else logging.INFO)
    root.propagate = False
    return agent, runner, parsed
