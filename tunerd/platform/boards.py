"""Board files: the simulated boards of DESIGN.md (``hints/boards/NAME.json``, or any file).

Schema (these fields at least; anything else is kept as is)::

    {"name": "hikey970", "interconnect_gbs": 3.0, "clusters": [
      {"name": "little", "core_type": "A53", "cores": 4, "freq_mhz": 1800,
       "gflops_per_core": 3.6, "bandwidth_gbs": 4.0}, ...]}

A core type's costs are those of its fastest-clocked cluster (its **reference**), scaled by each
cluster's frequency: a Snapdragon 855's gold (3 x A76-class at 2.42 GHz) and prime (1 at 2.84 GHz)
are one core type, the gold cluster at speed 2420/2840 = 0.85 (board_clusters). So clusters of one
core type must agree on what does not scale with the clock: the FLOPs per cycle
(``gflops_per_core / freq_mhz``, within 1%) and the ``costmodel`` block (absent = the reference's);
a cluster's ``bandwidth_gbs`` sets its share of memory contention in the simulator only.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..errors import HintsError
from ..files import load_json
from ..pipeconfig import ClusterSpec, is_cluster_name

__all__ = ["load_board", "validate_board", "board_clusters", "core_type_references", "cluster_speed",
           "shipped_boards", "shipped_board_path"]

# gflops_per_core / freq_mhz of two clusters of one core type may differ by this share (rounding)
FLOP_PER_CYCLE_SHARE = 0.01

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
    _check_core_types(checked, source)
    return board


def core_type_references(board: Mapping) -> dict[str, dict]:
    """Core type -> its reference cluster: the one of highest ``freq_mhz`` (the first of a tie)."""
    refs: dict[str, dict] = {}
    for c in board["clusters"]:
        ref = refs.get(c["core_type"])
        if ref is None or float(c["freq_mhz"]) > float(ref["freq_mhz"]):
            refs[c["core_type"]] = c
    return refs


def cluster_speed(board: Mapping, cluster: Mapping) -> float:
    """A cluster's nominal speed: its clock over its core type's reference clock (1.0 for that one)."""
    ref = core_type_references(board)[cluster["core_type"]]
    return float(cluster["freq_mhz"]) / float(ref["freq_mhz"])


def _check_core_types(clusters: list[dict], source: str) -> None:
    refs = core_type_references({"clusters": clusters})
    for i, c in enumerate(clusters):
        ref = refs[c["core_type"]]
        if ref is c:
            continue
        where = f"{source}: clusters[{i}] ({c['name']!r})"
        per_cycle, ref_cycle = (float(x["gflops_per_core"]) / float(x["freq_mhz"]) for x in (c, ref))
        if abs(per_cycle - ref_cycle) > FLOP_PER_CYCLE_SHARE * ref_cycle:
            expected = ref_cycle * float(c["freq_mhz"])
            raise HintsError(f"{where}: core type {c['core_type']!r} does {per_cycle * 1000:.2f} FLOP/cycle, "
                             f"its cluster {ref['name']!r} {ref_cycle * 1000:.2f} (gflops_per_core "
                             f"{c['gflops_per_core']:g} at {c['freq_mhz']:g} MHz; the same core would be "
                             f"{expected:.3g}): a core type's costs scale with the clock only; give them "
                             f"distinct core types")
        if "costmodel" in c and c["costmodel"] != ref.get("costmodel"):
            raise HintsError(f"{where}: its costmodel differs from that of cluster {ref['name']!r}, the "
                             f"same core type {c['core_type']!r} at a higher clock: leave it out (it takes "
                             f"the reference's) or give them distinct core types")


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
    """The board's clusters for the search; speed = the cluster's clock over its core type's
    reference clock (1.0 where a core type has one cluster, see the module docstring)."""
    return [ClusterSpec(c["name"], c["core_type"], int(c["cores"]), cluster_speed(board, c))
            for c in board["clusters"]]
