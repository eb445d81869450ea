"""Board files: the simulated boards of DESIGN.md (``hints/boards/NAME.json``, or any file).

Schema (these fields at least; anything else is kept as is)::

    {"name": "hikey970", "interconnect_gbs": 3.0, "clusters": [
      {"name": "little", "core_type": "A53", "cores": 4, "freq_mhz": 1800,
       "gflops_per_core": 3.6, "bandwidth_gbs": 4.0}, ...]}
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..errors import HintsError
from ..files import load_json
from ..pipeconfig import ClusterSpec, is_cluster_name

__all__ = ["load_board", "validate_board", "board_clusters", "shipped_boards", "shipped_board_path"]

_CLUSTER_FIELDS = {
    "name": str, "core_type": str, "cores": int, "freq_mhz": float, "gflops_per_core": float,
    "bandwidth_gbs": float,
}


def _number(value: Any, kind: type, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HintsError(f"{where} must be a number, got {value!r}")
    if kind is int and (not float(value).is_integer()):
        raise HintsError(f"{where} must be a whole number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise HintsError(f"{where} must be > 0, got {value!r}")
    return int(value) if kind is int else float(value)


def validate_board(data: Any, source: str = "board") -> dict:
    """A checked copy of a board dict; HintsError names the file and the field that is wrong."""
    if not isinstance(data, Mapping):
        raise HintsError(f"{source}: a board must be a JSON object, got {type(data).__name__}")
    board = dict(data)
    for key in ("name", "clusters", "interconnect_gbs"):
        if key not in board:
            raise HintsError(f"{source}: missing field {key!r}")
    if not isinstance(board["name"], str) or not board["name"]:
        raise HintsError(f"{source}: 'name' must be a non-empty string")
    board["interconnect_gbs"] = _number(board["interconnect_gbs"], float, f"{source}: 'interconnect_gbs'")
    clusters = board["clusters"]
    if not isinstance(clusters, list) or not clusters:
        raise HintsError(f"{source}: 'clusters' must be a non-empty list")
    checked, seen = [], set()
    for i, cluster in enumerate(clusters):
        where = f"{source}: clusters[{i}]"
        if not isinstance(cluster, Mapping):
            raise HintsError(f"{where} must be an object")
        c = dict(cluster)
        for key, kind in _CLUSTER_FIELDS.items():
            if key not in c:
                raise HintsError(f"{where}: missing field {key!r}")
            if kind is str:
                if not isinstance(c[key], str) or not c[key]:
                    raise HintsError(f"{where}: {key!r} must be a non-empty string, got {c[key]!r}")
            else:
                c[key] = _number(c[key], kind, f"{where}: {key!r}")
        if not is_cluster_name(c["name"]):
            raise HintsError(f"{where}: name {c['name']!r} cannot be written in a pipeline config "
                             f"(letters, digits, '_', '.', '-'; not starting with '.' or '-')")
        if c["name"] in seen:
            raise HintsError(f"{where}: duplicate cluster name {c['name']!r}")
        seen.add(c["name"])
        checked.append(c)
    board["clusters"] = checked
    return board


def shipped_board_path(name: str) -> Path:
    return Path(str(resources.files("tunerd.hintfiles"))) / "boards" / f"{name}.json"


def shipped_boards() -> list[str]:
    folder = Path(str(resources.files("tunerd.hintfiles"))) / "boards"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_board(name_or_path: str | Path | Mapping) -> dict:
    """A board from a dict, a file path, or the name of a shipped board (``hikey970``)."""
    if isinstance(name_or_path, Mapping):
        return validate_board(name_or_path)
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix == ".json" or path.exists() or "/" in text):
        path = shipped_board_path(text)
        if not path.exists():
            known = ", ".join(shipped_boards()) or "none installed"
            raise HintsError(f"unknown board {text!r} (shipped boards: {known})")
    return validate_board(load_json(path, "board file"), str(path))


def board_clusters(board: Mapping) -> list[ClusterSpec]:
    """The board's clusters for the search (speed 1.0 = the board's nominal frequency)."""
    return [ClusterSpec(c["name"], c["core_type"], int(c["cores"]), 1.0) for c in board["clusters"]]
