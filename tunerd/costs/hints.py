"""Hints: a model's compile-time knowledge for one platform or board (DESIGN.md "hints").

Per unit: FLOPs, weight bytes, bytes crossing the cut after it, and the **predicted ms** on every
(core type, core count) of the platform, from :mod:`tunerd.costs.costmodel` with coefficients from a
calibration (``tunerd calibrate``) or a board file (``hints/boards/``). Stored as versioned JSON::

    {"schema": "tunerd-hints/1",
     "model": {"name", "source", "hash", "input_shape"},
     "producer": {"kind": "board" | "calibration", "name", "date", "backend", ...},
     "clusters": [{"name", "core_type", "cores"}], "interconnect_gbs": float | null,
     "units": [{"index", "first_node", "last_node", "flops", "weight_bytes", "out_bytes",
                "predicted_ms": {CORE_TYPE: [ms on 1 core, 2 cores, ...]}}],
     "coefficients": {CORE_TYPE: {...}}}

Shipped files for the zoo models on the reference boards live in the package data ``tunerd.hintfiles``
(the repo's ``hints/``) as ``<model>.<board>.hints.json``; ``tools/make_hints.py`` regenerates them.

Backends: hints from a calibration are for the backend it was measured on (``producer.backend``;
absent in files made before backends existed, which were numpy's), and :func:`load_hints` with
``backend=`` refuses another backend's. Hints from a board file have no backend: a board's costs are
fitted to published throughput of the board's own library (ARM-CL), neither of tunerd's backends,
and a simulated board runs no kernels, so they load for any backend (:attr:`Hints.backend` None).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .costmodel import CoreCoeffs, FeatureTable, coeffs_from_board, predict_table
from ..errors import ConfigError, HintsError
from ..files import atomic_write_text, load_json
from .table import UnitCostTable, cores_column

log = logging.getLogger(__name__)

SCHEMA = "tunerd-hints/1"
HINTS_SUFFIX = ".hints.json"
DEFAULT_BACKEND = "numpy"      # what calibrated hints without producer.backend were made for

__all__ = ["SCHEMA", "Hints", "HintUnit", "make_hints", "save_hints", "load_hints", "check_backend",
           "predict_for_board", "shipped_hints", "shipped_hints_path", "hints_for_platform"]


@dataclass(frozen=True)
class HintUnit:
    index: int
    first_node: str
    last_node: str
    flops: int
    weight_bytes: int
    out_bytes: int


@dataclass
class Hints:
    """Predicted costs of one model's units on one platform (see the module docstring)."""
    model_name: str
    model_hash: str
    input_shape: tuple[int, ...]
    units: list[HintUnit]
    predicted_ms: dict[str, np.ndarray]          # core type -> (n_units, max_cores)
    clusters: list[dict]                         # [{"name", "core_type", "cores"}]
    producer: dict = field(default_factory=dict)
    interconnect_gbs: float | None = None
    model_source: str = ""
    coefficients: dict[str, dict] = field(default_factory=dict)
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        _check_costs(self.predicted_ms, len(self.units), "hints")
        for c in self.clusters:
            ms = self.predicted_ms.get(c["core_type"])
            if ms is None:
                raise HintsError(f"hints: cluster {c['name']!r} has core type {c['core_type']!r}, "
                                 f"which has no predicted_ms (have {', '.join(self.predicted_ms)})")
            if ms.shape[1] < int(c["cores"]):
                raise HintsError(f"hints: cluster {c['name']!r} has {c['cores']} cores but predicted_ms "
                                 f"for {c['core_type']!r} covers 1-{ms.shape[1]}")

    @property
    def n_units(self) -> int:
        return len(self.units)

    @property
    def backend(self) -> str | None:
        """The backend these costs are for; None for a board's (good for any, module docstring)."""
        if "backend" in self.producer:
            return str(self.producer["backend"])
        return None if self.producer.get("kind") == "board" else DEFAULT_BACKEND

    @property
    def out_bytes(self) -> np.ndarray:
        return np.array([u.out_bytes for u in self.units], dtype=float)

    @property
    def flops(self) -> np.ndarray:
        return np.array([u.flops for u in self.units], dtype=float)

    def ms(self, core_type: str, cores: int) -> np.ndarray:
        """Per-unit predicted ms on ``cores`` cores of ``core_type``."""
        return cores_column(self.predicted_ms, core_type, cores, HintsError, "the hints")

    def fps(self, core_type: str, cores: int) -> float:
        """Whole model on one core set: 1000 / sum of unit ms."""
        return 1000.0 / float(self.ms(core_type, cores).sum())

    def to_table(self) -> UnitCostTable:
        """The ``tunerd.costs.table.UnitCostTable`` the DSE, tuner and simulator use."""
        return UnitCostTable({t: ms.copy() for t, ms in self.predicted_ms.items()}, self.out_bytes)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        units = []
        for i, u in enumerate(self.units):
            units.append({"index": u.index, "first_node": u.first_node, "last_node": u.last_node,
                          "flops": u.flops, "weight_bytes": u.weight_bytes, "out_bytes": u.out_bytes,
                          "predicted_ms": {t: [_round(v) for v in ms[i]] for t, ms in self.predicted_ms.items()}})
        return {"schema": self.schema,
                "model": {"name": self.model_name, "source": self.model_source, "hash": self.model_hash,
                          "input_shape": list(self.input_shape)},
                "producer": dict(self.producer),
                "clusters": [{"name": c["name"], "core_type": c["core_type"], "cores": int(c["cores"])}
                             for c in self.clusters],
                "interconnect_gbs": self.interconnect_gbs,
                "units": units,
                "coefficients": dict(self.coefficients)}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "hints") -> "Hints":
        """Validate and build; every problem is a HintsError naming ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise HintsError(f"{source}: expected a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema is None:
            raise HintsError(f"{source}: missing field 'schema' (expected {SCHEMA!r})")
        if schema != SCHEMA:
            raise HintsError(f"{source}: unsupported schema {schema!r} (this tunerd reads {SCHEMA!r}; "
                             f"regenerate the file with `tunerd hints`)")
        model = _field(data, "model", Mapping, source)
        name = _field(model, "name", str, source, "model.")
        mhash = _field(model, "hash", str, source, "model.")
        shape = _field(model, "input_shape", list, source, "model.")
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise HintsError(f"{source}: model.input_shape must be a list of positive integers, got {shape!r}")
        clusters = []
        for i, c in enumerate(_field(data, "clusters", list, source)):
            where = f"clusters[{i}]."
            if not isinstance(c, Mapping):
                raise HintsError(f"{source}: clusters[{i}] must be an object")
            cores = _field(c, "cores", int, source, where)
            if cores < 1:
                raise HintsError(f"{source}: {where}cores must be >= 1, got {cores}")
            clusters.append({"name": _field(c, "name", str, source, where),
                             "core_type": _field(c, "core_type", str, source, where), "cores": cores})
        names = [c["name"] for c in clusters]
        if len(set(names)) != len(names):
            raise HintsError(f"{source}: clusters has a name twice ({', '.join(names)})")
        raw_units = _field(data, "units", list, source)
        if not raw_units:
            raise HintsError(f"{source}: 'units' is empty")
        units, per_type = [], {}
        for i, u in enumerate(raw_units):
            where = f"units[{i}]."
            if not isinstance(u, Mapping):
                raise HintsError(f"{source}: units[{i}] must be an object")
            index = _field(u, "index", int, source, where)
            if index != i:
                raise HintsError(f"{source}: {where}index is {index}, expected {i} (units in order)")
            ints = {k: _field(u, k, int, source, where) for k in ("flops", "weight_bytes", "out_bytes")}
            for k, v in ints.items():
                if v < 0:
                    raise HintsError(f"{source}: {where}{k} must be >= 0, got {v}")
            units.append(HintUnit(index, _field(u, "first_node", str, source, where),
                                  _field(u, "last_node", str, source, where), **ints))
            pm = _field(u, "predicted_ms", Mapping, source, where)
            if i == 0:
                per_type = {t: [] for t in pm}
            elif set(pm) != set(per_type):
                raise HintsError(f"{source}: {where}predicted_ms has core types {sorted(pm)}, "
                                 f"units[0] has {sorted(per_type)}")
            for t, row in pm.items():
                # NOTE: numpy would coerce "1.5" and true to numbers: only JSON numbers are ms
                if (not isinstance(row, list) or not row
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)):
                    raise HintsError(f"{source}: {where}predicted_ms[{t!r}] must be a non-empty list of ms "
                                     f"(numbers), got {row!r:.60}")
                per_type[t].append(row)
        predicted = {}
        for t, rows in per_type.items():
            if len({len(r) for r in rows}) != 1:
                raise HintsError(f"{source}: predicted_ms[{t!r}] has rows of different lengths")
            try:
                predicted[t] = np.array(rows, dtype=float)
            except (TypeError, ValueError) as err:
                raise HintsError(f"{source}: predicted_ms[{t!r}] holds a non-number ({err})") from err
        _check_costs(predicted, len(units), source)
        ic = data.get("interconnect_gbs")
        if ic is not None and (isinstance(ic, bool) or not isinstance(ic, (int, float))
                               or not math.isfinite(ic) or ic <= 0):
            raise HintsError(f"{source}: interconnect_gbs must be a number > 0 or null, got {ic!r}")
        producer = data.get("producer", {})
        if not isinstance(producer, Mapping):
            raise HintsError(f"{source}: 'producer' must be an object")
        if "backend" in producer and (not isinstance(producer["backend"], str) or not producer["backend"]):
            raise HintsError(f"{source}: producer.backend must be a backend name, got {producer['backend']!r:.40}")
        coefficients = data.get("coefficients") or {}
        if not isinstance(coefficients, Mapping) or not all(isinstance(v, Mapping) for v in coefficients.values()):
            raise HintsError(f"{source}: 'coefficients' must be an object of objects (per core type), "
                             f"got {coefficients!r:.60}")
        try:
            return cls(name, mhash, tuple(shape), units, predicted, clusters, dict(producer),
                       None if ic is None else float(ic), str(model.get("source", "")),
                       dict(coefficients), schema)
        except HintsError as err:
            raise HintsError(f"{source}: {err}") from None


def _round(v: float) -> float:
    return float(f"{float(v):.6g}")


def _field(data: Mapping, key: str, kind: type, source: str, prefix: str = "") -> Any:
    if key not in data:
        raise HintsError(f"{source}: missing field {prefix}{key!r}")
    value = data[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise HintsError(f"{source}: {prefix}{key} must be {kind.__name__}, got {value!r:.60}")
    if kind is str and not value:
        raise HintsError(f"{source}: {prefix}{key} must not be empty")
    return value


def _check_costs(predicted: Mapping[str, np.ndarray], n_units: int, source: str) -> None:
    if not predicted:
        raise HintsError(f"{source}: no predicted_ms (no core types)")
    for t, ms in predicted.items():
        if ms.ndim != 2 or ms.shape[0] != n_units or ms.shape[1] < 1:
            raise HintsError(f"{source}: predicted_ms[{t!r}] has shape {ms.shape}, expected ({n_units}, cores)")
        bad = ~np.isfinite(ms) | (ms <= 0)
        if bad.any():
            u, k = (int(v) for v in np.argwhere(bad)[0])
            raise HintsError(f"{source}: predicted_ms[{t!r}] for unit {u} on {k + 1} core(s) is "
                             f"{ms[u, k]!r}; times must be finite and > 0")


# ------------------------------------------------------------------------------ making hints

def _model(model_or_source, input_size=None):
    if isinstance(model_or_source, (str, os.PathLike)):
        from ..model.loader import load_model
        return load_model(model_or_source, input_size=input_size)
    return model_or_source


def _clusters_for(coeffs: Mapping[str, CoreCoeffs], clusters: Sequence[Mapping]) -> dict[str, int]:
    """Core count per core type to predict for (the largest cluster of that type)."""
    need: dict[str, int] = {}
    for c in clusters:
        if c["core_type"] not in coeffs:
            raise HintsError(f"no cost coefficients for cluster {c['name']!r} (core type {c['core_type']!r}; "
                             f"have {', '.join(coeffs) or 'none'})")
        need[c["core_type"]] = max(need.get(c["core_type"], 0), int(c["cores"]))
    return need


def _build(model, coeffs: Mapping[str, CoreCoeffs], clusters: list[dict], producer: dict,
           interconnect_gbs: float | None) -> Hints:
    table = FeatureTable.from_units(model.units)
    need = _clusters_for(coeffs, clusters)
    predicted = {t: predict_table(table, coeffs[t], n) for t, n in need.items()}
    units = [HintUnit(u.index, u.first_node, u.last_node, int(u.flops), int(u.weight_bytes), int(u.out_bytes))
             for u in model.units]
    return Hints(model.name, model.hash, tuple(int(d) for d in model.input_shape), units, predicted, clusters,
                 producer, interconnect_gbs, str(getattr(model, "source", "") or ""),
                 {t: coeffs[t].to_dict() for t in need})


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def make_hints(model, *, board=None, calibration=None, platform=None, backend: str | None = None) -> Hints:
    """Hints for ``model`` (a Model, or a source for load_model) from exactly one of:

    - ``board``: a shipped board name, a board file path or a board dict;
    - ``calibration``: a :class:`tunerd.costs.calibration_file.Calibration` or a calibration file path, for the
      clusters of ``platform`` (a Platform or spec string; default: the calibrated platform).

    A ``platform`` that is a simulated board (``board:NAME``) stands for ``board``. With ``backend``
    (numpy, onnxruntime) a calibration of another backend is a HintsError naming both; board costs
    serve any backend.
    """
    model = _model(model)
    if platform is not None and not hasattr(platform, "clusters"):
        from ..platform.spec import resolve_platform
        platform = resolve_platform(str(platform))
    if board is None and platform is not None and getattr(platform, "source", "") == "board":
        if calibration is not None:
            raise HintsError("a simulated board platform takes its costs from the board file, not a calibration")
        spec = platform.spec
        board = spec[len("board:"):] if spec.startswith("board:") else spec
    if (board is None) == (calibration is None):
        raise HintsError("hints need either a board or a calibration (with its platform)")
    if board is not None:
        return _board_hints(model, board)
    from .calibration_file import Calibration, load_calibration
    cal = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
    if backend is not None and cal.backend != backend:
        raise HintsError(f"calibration {cal.path or '(in memory)'} was measured on the {cal.backend} backend, "
                         f"hints for the {backend} backend need one of {backend}: run "
                         f"`tunerd calibrate --backend {backend}`")
    if platform is not None:
        clusters = [{"name": c.name, "core_type": c.core_type, "cores": c.cores} for c in platform.clusters]
    else:
        clusters = [{"name": c["name"], "core_type": c["core_type"], "cores": len(c["cpus"])}
                    for c in cal.platform.get("clusters", [])]
    producer = {"kind": "calibration", "name": cal.platform.get("spec", ""), "file": cal.path or "",
                "calibrated": cal.date, "machine": cal.machine.get("cpu", ""), "quick": cal.quick,
                "backend": cal.backend, "date": _now()}
    return _build(model, cal.coefficients, clusters, producer, None)


def _load_board(board) -> tuple[dict, str]:
    from ..platform.boards import load_board
    data = load_board(board)
    where = board if isinstance(board, (str, os.PathLike)) else data.get("name", "board")
    return data, str(where)


def _board_hints(model, board) -> Hints:
    data, where = _load_board(board)
    coeffs = coeffs_from_board(data)
    clusters = [{"name": c["name"], "core_type": c["core_type"], "cores": int(c["cores"])} for c in data["clusters"]]
    producer = {"kind": "board", "name": data["name"], "file": where if where.endswith(".json") else "",
                "board_sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16],
                "date": _now()}
    return _build(model, coeffs, clusters, producer, float(data["interconnect_gbs"]))


def predict_for_board(model_source, board, input_size=None) -> Hints:
    """Hints for a model (source or Model) on a simulated board (name, file or dict)."""
    return _board_hints(_model(model_source, input_size), board)


# ------------------------------------------------------------------------------ files

def dumps(hints: Hints) -> str:
    """The hints as JSON text, one line per unit (readable, diffable)."""
    d = hints.to_dict()
    lines = ["{"]
    items = list(d.items())
    for i, (k, v) in enumerate(items):
        end = "," if i + 1 < len(items) else ""
        if k == "units":
            body = ",\n".join(f"  {json.dumps(u)}" for u in v)
            lines.append(f" {json.dumps(k)}: [\n{body}\n ]{end}")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}{end}")
    return "\n".join(lines) + "\n}\n"


def save_hints(hints: Hints, path: str | os.PathLike) -> Path:
    """Write atomically (a reader never sees half a file)."""
    return atomic_write_text(path, dumps(hints))


def check_model(hints: Hints, model, source: str = "hints") -> None:
    """HintsError unless ``hints`` were made for ``model`` (same units; same content hash)."""
    if len(model.units) != hints.n_units:
        raise HintsError(f"{source}: hints have {hints.n_units} units but model {model.name!r} has "
                         f"{len(model.units)}; regenerate them with `tunerd hints`")
    if tuple(model.input_shape) != tuple(hints.input_shape):
        raise HintsError(f"{source}: hints are for input {list(hints.input_shape)}, the model takes "
                         f"{list(model.input_shape)}; regenerate them with `tunerd hints --input-size`")
    if model.hash != hints.model_hash:
        raise HintsError(f"{source}: hints were made for model hash {hints.model_hash[:12]}, this model is "
                         f"{model.hash[:12]}; regenerate them with `tunerd hints`")


def check_backend(hints: Hints, backend: str, source: str = "hints") -> None:
    """HintsError unless ``hints`` hold costs of ``backend`` (board hints hold costs for any)."""
    have = hints.backend
    if have is not None and have != backend:
        raise HintsError(f"{source}: hints for the {have} backend, the daemon runs {backend}: regenerate "
                         f"with tunerd hints --backend {backend}")


def load_hints(path: str | os.PathLike, *, model=None, backend: str | None = None) -> Hints:
    """Read and validate a hints file; with ``model``, also check that it was made for that model,
    with ``backend`` (numpy, onnxruntime) that its costs are that backend's."""
    path = Path(path)
    hints = Hints.from_dict(load_json(path, "hints file"), source=str(path))
    if model is not None:
        check_model(hints, model, str(path))
    if backend is not None:
        check_backend(hints, backend, str(path))
    return hints


def _hintfiles_dir() -> Path:
    try:
        from importlib.resources import files
        return Path(str(files("tunerd.hintfiles")))
    except ModuleNotFoundError:   # a checkout that is not installed
        return Path(__file__).resolve().parent.parent / "hints"


def shipped_hints_path(model_name: str, board_name: str) -> Path:
    return _hintfiles_dir() / f"{model_name}.{board_name}{HINTS_SUFFIX}"


def shipped_hints(model_name: str, board_name: str) -> Hints | None:
    """The shipped hints of a zoo model on a reference board, or None if none is shipped."""
    path = shipped_hints_path(model_name, board_name)
    if not path.is_file():
        return None
    return load_hints(path)


# ------------------------------------------------------------------------------ the daemon's hints

def hints_for_platform(model, platform, *, cache_dir: str | os.PathLike | None = None,
                       sysfs_root: str | os.PathLike = "/sys", calibration=None,
                       backend: str = DEFAULT_BACKEND) -> Hints:
    """Hints for the platform the daemon runs on, for the backend its stages run (``numpy`` or
    ``onnxruntime``; ``auto`` and a Backend resolve to one).

    A board platform uses its board file (any backend). A real or emulated one uses ``calibration``
    if given, else the calibration of ``backend`` stored for this platform (``tunerd calibrate
    --backend`` writes it in the default place or ``cache_dir``); with none, a quick calibration
    runs now on ``backend`` (seconds) and is kept in ``cache_dir``. A calibration of another backend
    is never used: given or found, it is a HintsError naming both.
    """
    if getattr(platform, "source", "") == "board":
        return make_hints(model, platform=platform)
    from .calibrate import backend_name
    backend = backend_name(backend)
    if calibration is None:
        from .calibrate import calibrate
        from .calibration_file import calibration_file_name, default_calibration_path, save_calibration
        candidates = [default_calibration_path(platform, backend)]
        if cache_dir is not None:
            candidates.insert(0, Path(cache_dir) / calibration_file_name(platform, backend, "calibration-"))
        calibration = next((p for p in candidates if p.is_file()), None)
        if calibration is None:
            log.warning("no %s calibration for platform %s; running a quick one (run `tunerd calibrate "
                        "--backend %s` for better hints)", backend, platform.describe(), backend)
            cal = calibrate(platform, quick=True, sysfs_root=sysfs_root, progress=False, backend=backend)
            target = candidates[0]
            try:
                save_calibration(cal, target)
            except OSError as err:
                log.warning("cannot keep the calibration in %s: %s", target, err)
            calibration = cal
    try:
        return make_hints(model, calibration=calibration, platform=platform, backend=backend)
    except ConfigError as err:
        raise HintsError(str(err)) from err
