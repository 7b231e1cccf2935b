"""Background processes started and stopped by PID: the hub, agents, test services.

:func:`spawn` starts a detached process (own session, so a signal to the caller's process
group does not reach it) with its output in a log file and its PID in a pid file.
:func:`stop` ends one by PID: SIGTERM (or another signal), a bounded wait, then SIGKILL of
its process group. A zombie counts as stopped: PID 1 in a container may reap late.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] not in ("Z", "X")


def read_pid(pidfile: str | os.PathLike) -> int | None:
    try:
        text = Path(pidfile).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def spawn(
    argv: Sequence[str],
    *,
    log_path: str | os.PathLike,
    pidfile: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> subprocess.Popen:
    """Start ``argv`` detached, output appended to ``log_path``; write ``pidfile``."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    if pidfile is not None:
        Path(pidfile).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{pidfile}.tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.replace(pidfile)
    return proc


def stop(pid: int, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Stop ``pid`` (and its process group); return True if it was running."""
    if not pid_alive(pid):
        return False
    for target in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
        try:
            target()
            break
        except (ProcessLookupError, PermissionError):
            continue
    if not wait_until(lambda: not pid_alive(pid), timeout):
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass
        wait_until(lambda: not pid_alive(pid), 5.0)
    return True


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:  # a probe that fails is "not ready yet"
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
