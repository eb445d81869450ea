"""Files tunerd writes whole or not at all, and JSON files read with errors that name them.

A writer that dies mid-write (power cut, SIGKILL) leaves the old file, never half a new one: the
text goes to ``.NAME.PID.tmp`` beside the target, is flushed to disk, and replaces the target by
one rename (``tunerd.daemon.state.sweep_temp_files`` removes temp files of writers that died).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import HintsError


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # NOTE: the rename itself is durable only once the directory is
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON in ``path``; a HintsError that says ``what`` the file is when it is missing,
    unreadable or not JSON."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HintsError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise HintsError(f"cannot read {what} {path}: {err}") from err
    try:
        return json.loads(text)
    except ValueError as err:
        raise HintsError(f"cannot read {what} {path}: not JSON ({err})") from err
