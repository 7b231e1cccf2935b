"""Reading an operator's file (token, price table, profile, dump) with one clear error.

Every "the file is missing / unreadable / a directory / not text" message in hpcsync comes
from here, named after what the file is for, in the caller's own error type.
"""

from __future__ import annotations

from pathlib import Path


def read_operator_file(path: str | Path, what: str, error: type[Exception]) -> bytes:
    """The bytes of ``path``; ``error(f"{what} {path} ...")`` if it cannot be read."""
    path = Path(path).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise error(f"{what} {path} is not readable by this user") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def read_operator_text(path: str | Path, what: str, error: type[Exception]) -> str:
    """Like :func:`read_operator_file`, decoded as UTF-8."""
    data = read_operator_file(path, what, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {Path(path).expanduser()} is not UTF-8 text") from None
