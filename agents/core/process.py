"""Run external commands: no shell, always a timeout, output captured, clear errors.

Every subprocess an agent starts goes through :func:`run_command`. It runs the child in a
new session so that a timeout or a stop request kills the whole process group (ssh started
by rsync, for example), and it never leaves a child behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Used when a caller gives no timeout: nothing an agent runs may hang forever.
DEFAULT_TIMEOUT = 300.0

#: util-linux's setpriv, which sets the parent-death signal of the programs we run.
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None

# How often a running command checks its cancel event; bounds the stop latency of ops.
_POLL_INTERVAL = 0.1


class CommandError(RuntimeError):
    """A command could not run, exited non-zero, timed out or was cancelled."""

    def __init__(self, message: str, result: CommandResult | None = None):
        super().__init__(message)
        self.result = result


class CommandTimeout(CommandError):
    """The command ran past its timeout and was killed."""


class CommandCancelled(CommandError):
    """The command was killed because its cancel event was set (an op was stopped)."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line naming the program, its exit status and the last line of stderr."""
        tail = _last_line(self.stderr) or _last_line(self.stdout)
        text = f"{self.argv[0]} exited with status {self.returncode}"
        return f"{text}: {tail}" if tail else text


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _resolve(program: str, env: Mapping[str, str] | None) -> str:
    """The program's path, looked up as exec would (``PATH`` of the child's environment)."""
    if os.sep in program:
        # setpriv would report a missing program as its own exit 127: say it as exec would.
        if not os.path.exists(program):
            raise CommandError(f"cannot run {program}: No such file or directory")
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise CommandError(f"cannot run {program}: Permission denied")
        return program
    found = shutil.which(program, path=(env or os.environ).get("PATH", os.defpath))
    if found is None:
        raise CommandError(f"cannot run {program}: No such file or directory (not found in PATH)")
    return found


def _tied_to_this_thread(argv: tuple[str, ...], env: Mapping[str, str] | None) -> list[str]:
    """``argv`` run so that it gets SIGKILL when the thread that started it exits.

    A SIGKILLed agent must not leave an rsync writing to the destination while its
    restarted successor starts another. ``setpriv --pdeathsig`` (util-linux) sets the
    parent-death signal and then execs the program: nothing runs between fork and exec in
    the agent's (threaded) process, unlike a Python ``preexec_fn``. Linux only; elsewhere
    (or without setpriv) the command runs as it is.
    """
    program = _resolve(argv[0], env)
    if _SETPRIV is None:
        return [program, *argv[1:]]
    return [_SETPRIV, "--pdeathsig", "KILL", "--", program, *argv[1:]]


#: Seconds a stopped or timed-out command gets between SIGTERM and SIGKILL: rsync uses
#: them to keep what it had received of a file (--partial) and remove its temp files.
TERM_GRACE = 0.5


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(
    argv: Sequence[str],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    check: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    cancel: threading.Event | None = None,
    text: bool = True,
) -> CommandResult:
    """Run ``argv`` (a list, never a shell string) and return its result.

    :param timeout: seconds before the process group is killed and
        :class:`CommandTimeout` raised; ``None`` means :data:`DEFAULT_TIMEOUT`.
    :param check: raise :class:`CommandError` when the exit status is not 0.
    :param input: data written to the child's stdin (stdin is closed otherwise, so a
        program that prompts gets EOF instead of hanging).
    :param cancel: an event that, once set, kills the command within 0.1 s.
    :param text: decode output as UTF-8 (undecodable bytes are replaced).
    """
    argv = tuple(os.fspath(a) for a in argv)
    if not argv:
        raise ValueError("run_command needs a program to run")
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    child_env = None if env is None else dict(env)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            _tied_to_this_thread(argv, child_env),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc

    if isinstance(input, str):
        input = input.encode()
    outcome: dict[str, object] = {}

    def communicate() -> None:
        try:
            outcome["out"], outcome["err"] = proc.communicate(input=input)
        except Exception as exc:  # reported below; the thread must not die silently
            outcome["exc"] = exc

    reader = threading.Thread(target=communicate, daemon=True, name=f"run:{argv[0]}")
    reader.start()
    deadline = started + timeout
    stopped_by = None
    while reader.is_alive():
        reader.join(_POLL_INTERVAL)
        if not reader.is_alive():
            break
        if cancel is not None and cancel.is_set():
            stopped_by = "cancel"
        elif time.monotonic() > deadline:
            stopped_by = "timeout"
        if stopped_by:
            _kill_group(proc, signal.SIGTERM)
            reader.join(TERM_GRACE)
            _kill_group(proc)
            reader.join()
            break
    # The leader may have exited while its children (ssh under rsync) still run.
    _kill_group(proc)
    if "exc" in outcome:
        raise CommandError(f"{argv[0]}: {outcome['exc']}")
    out, err = outcome.get("out", b""), outcome.get("err", b"")
    if text:
        out = out.decode("utf-8", "replace")
        err = err.decode("utf-8", "replace")
    result = CommandResult(argv, proc.returncode, out, err, time.monotonic() - started)
    if stopped_by == "timeout":
        raise CommandTimeout(f"{argv[0]} timed out after {timeout:g} s", result)
    if stopped_by == "cancel":
        raise CommandCancelled(f"{argv[0]} was stopped", result)
    if check and result.returncode != 0:
        raise CommandError(result.describe(), result)
    return result
