"""The one cost model: predicted ms of a layer (and a unit) on n cores of one core type, from the
layer's descriptors alone (FLOPs, bytes, op kind, shapes), as Pipe-it's prediction model does.

Per layer (times in ms, ``c`` compute, ``m`` memory)::

    c = flops / (gflops x eff[kind] x shape_eff(gemm dims))      # GEMM-shaped kinds lose to small dims
    m = act_bytes / act_gbs + cols_bytes / cols_gbs + weight_bytes / bandwidth
    c_n = c / S(n_eff, alpha[kind]);  m_n = m / S(n, alpha_mem)   # S(n, a) = n / (1 + a (n - 1))
    n_eff = 1 + (n - 1) x c / (c + par_half_ms)                   # small layers use fewer threads
    t = overhead[kind] + sync x (n_eff - 1) + max(c_n, m_n) + (1 - overlap) x min(c_n, m_n)

Weights are streamed from DRAM at ``bandwidth_gbs``: inside a network a layer's weights were last
touched a frame ago. Activations were just written by the previous layer and go at ``act_gbs``
(cache speed on a machine whose caches hold them); the im2col column matrix of a kxk conv (written
once, read once, a strided gather) at ``cols_gbs``. 0 means "as the one before" (cols -> act -> DRAM).
``overlap`` = 1 is a plain roofline (memory traffic hidden under compute), 0 adds them (im2col copies
then a GEMM, as numpy does). One :class:`CoreCoeffs` per core type holds every coefficient; they come
from a calibration (tunerd.costs.calibrate, fitted on this machine) or from a board file (hints/boards/,
fitted to published throughput by tools/make_hints.py --fit-board). The shape term is
``(M / (M + m0)) (N / (N + n0)) (K / (K + k0))`` over the GEMM a conv or fc lowers to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import HintsError
from ..platform.boards import core_type_references

FLOAT_BYTES = 4

# Cost kinds (finer than ops.OpSpec.kind: a 1x1 conv, a kxk conv and a depthwise conv behave apart).
KINDS = ("conv", "conv1x1", "depthwise", "fc", "pool", "lrn", "elementwise", "memory")
GEMM_KINDS = ("conv", "conv1x1", "fc")
_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
SHAPE_KEYS = ("m0", "n0", "k0", "dw_n0")


# ------------------------------------------------------------------------------ descriptors

@dataclass(frozen=True)
class LayerFeatures:
    """What the model uses of one layer: its cost kind, work, traffic and GEMM dimensions."""
    kind: str
    flops: float
    bytes: float                                          # activations in + out
    wbytes: float = 0.0                                   # weights
    cols: float = 0.0                                     # im2col columns written + read
    gemm: tuple[float, float, float] = (0.0, 0.0, 0.0)   # (M, N, K) per group; 0 when not a GEMM


def _conv_kernel(li) -> tuple[int, int]:
    ks = li.attrs.get("kernel_shape")
    if ks:
        return int(ks[0]), int(ks[-1])
    # NOTE: ONNX makes kernel_shape optional; recover k*k from the weight count (with or without bias).
    cin, m = li.in_shapes[0][1], li.out_shape[1]
    group = int(li.attrs.get("group", 1))
    elems = li.weight_bytes // FLOAT_BYTES
    for w in (elems - m, elems):
        per = m * (cin // group)
        if per and w > 0 and w % per == 0:
            k = math.isqrt(w // per)
            if k * k == w // per:
                return k, k
    return 1, 1


def layer_features(li) -> LayerFeatures | None:
    """Features of a ``tunerd.model.units.LayerInfo``; None for a view (free: no compute, no copy)."""
    if li.kind == "view":
        return None
    act_bytes = float(li.bytes_moved)
    flops = float(li.flops)
    if li.kind == "conv":
        x, y = li.in_shapes[0], li.out_shape
        n, cin, cout = x[0], x[1], y[1]
        spatial = float(n * int(np.prod(y[2:])))
        group = int(li.attrs.get("group", 1))
        kh, kw = _conv_kernel(li)
        strides = tuple(li.attrs.get("strides") or (1, 1))
        pads = tuple(li.attrs.get("pads") or (0, 0, 0, 0))
        if group > 1 and group == cin and cout % cin == 0:
            # depthwise: no GEMM, the taps run over cached channel blocks; the "GEMM" dims record
            # (channels, output plane, taps) for the shape term
            return LayerFeatures("depthwise", flops, act_bytes, float(li.weight_bytes), 0.0,
                                 (float(cout), spatial, float(kh * kw)))
        m, k = cout / group, cin / group * kh * kw
        if kh * kw == 1 and all(s == 1 for s in strides) and not any(pads):
            return LayerFeatures("conv1x1", flops, act_bytes, float(li.weight_bytes), 0.0, (m, spatial, k))
        # im2col: the column matrix is written once and read once
        cols = 2.0 * cin * kh * kw * spatial * FLOAT_BYTES
        return LayerFeatures("conv", flops, act_bytes, float(li.weight_bytes), cols, (m, spatial, k))
    if li.kind == "fc":
        x, y = li.in_shapes[0], li.out_shape
        kdim = float(x[-1])
        mdim = float(y[-1])
        ndim = float(int(np.prod(y)) / max(y[-1], 1))
        return LayerFeatures("fc", flops, act_bytes, float(li.weight_bytes), 0.0, (mdim, ndim, kdim))
    if li.kind in _KIND_INDEX:
        return LayerFeatures(li.kind, flops, act_bytes, float(li.weight_bytes))
    raise ValueError(f"layer {li.name!r}: unknown cost kind {li.kind!r}")


@dataclass
class FeatureTable:
    """Features of many layers as arrays (one row per layer), tagged with the unit each belongs to."""
    kind: np.ndarray       # int index into KINDS
    flops: np.ndarray
    bytes: np.ndarray      # activation bytes
    wbytes: np.ndarray     # weight bytes
    cols: np.ndarray       # im2col bytes
    gemm: np.ndarray       # (n, 3): M, N, K (0 for non-GEMM kinds)
    unit: np.ndarray       # unit index per layer
    n_units: int

    @classmethod
    def from_features(cls, feats: Sequence[LayerFeatures], unit: Sequence[int] | None = None,
                      n_units: int | None = None) -> "FeatureTable":
        unit_arr = np.arange(len(feats)) if unit is None else np.asarray(unit, dtype=int)
        return cls(np.array([_KIND_INDEX[f.kind] for f in feats], dtype=int),
                   np.array([f.flops for f in feats], dtype=float),
                   np.array([f.bytes for f in feats], dtype=float),
                   np.array([f.wbytes for f in feats], dtype=float),
                   np.array([f.cols for f in feats], dtype=float),
                   np.array([f.gemm for f in feats], dtype=float).reshape(-1, 3),
                   unit_arr, int(n_units if n_units is not None else (unit_arr.max() + 1 if len(unit_arr) else 0)))

    @classmethod
    def from_groups(cls, groups: Iterable[Iterable]) -> "FeatureTable":
        """One "unit" per group of layers (a model's unit, a whole network, a calibration layer);
        layers without cost features are left out."""
        feats, owner = [], []
        n = 0
        for n, layers in enumerate(groups, start=1):
            for li in layers:
                f = layer_features(li)
                if f is not None:
                    feats.append(f)
                    owner.append(n - 1)
        return cls.from_features(feats, owner, n)

    @classmethod
    def from_units(cls, units: Iterable) -> "FeatureTable":
        return cls.from_groups(u.layers for u in units)


# ------------------------------------------------------------------------------ coefficients

def _default_map(value: float) -> dict[str, float]:
    return {k: float(value) for k in KINDS}


@dataclass
class CoreCoeffs:
    """Every coefficient of the model for one core type (see the module docstring)."""
    core_type: str
    gflops: float                       # peak GFLOP/s of one core
    bandwidth_gbs: float                # sustained DRAM bandwidth seen by one core (weights)
    eff: dict[str, float] = field(default_factory=lambda: _default_map(0.5))
    overhead_us: dict[str, float] = field(default_factory=lambda: _default_map(0.0))
    alpha: dict[str, float] = field(default_factory=lambda: _default_map(0.1))
    alpha_mem: float = 0.5
    sync_us: float = 0.0
    par_half_ms: float = 0.0
    overlap: float = 0.0
    act_gbs: float = 0.0                # bandwidth for activations (0: bandwidth_gbs)
    cols_gbs: float = 0.0               # bandwidth for im2col columns (0: act_gbs)
    shape: dict[str, float] = field(default_factory=lambda: {"m0": 0.0, "n0": 0.0, "k0": 0.0, "dw_n0": 0.0})
    source: str = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        where = f"cost coefficients for {self.core_type!r}"
        for name in ("gflops", "bandwidth_gbs"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise HintsError(f"{where}: {name} must be a number > 0, got {v!r}")
        for name, lo, hi in (("alpha_mem", 0, 1), ("overlap", 0, 1), ("sync_us", 0, math.inf),
                             ("par_half_ms", 0, math.inf), ("act_gbs", 0, math.inf),
                             ("cols_gbs", 0, math.inf)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise HintsError(f"{where}: {name} must be in [{lo}, {hi}], got {v!r}")
        for name, lo, hi in (("eff", 1e-9, math.inf), ("overhead_us", 0, math.inf), ("alpha", 0, 1)):
            table = getattr(self, name)
            missing = [k for k in KINDS if k not in table]
            if missing:
                raise HintsError(f"{where}: {name} lacks kinds {', '.join(missing)}")
            for k in KINDS:
                v = table[k]
                if not (isinstance(v, (int, float)) and lo <= v <= hi):
                    raise HintsError(f"{where}: {name}[{k}] must be in [{lo}, {hi}], got {v!r}")
        for k in SHAPE_KEYS:
            v = self.shape.get(k, 0.0)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise HintsError(f"{where}: shape[{k}] must be >= 0, got {v!r}")

    def to_dict(self) -> dict:
        r = lambda v: float(f"{v:.6g}")  # noqa: E731  (keep files readable)
        return {"core_type": self.core_type, "gflops": r(self.gflops), "bandwidth_gbs": r(self.bandwidth_gbs),
                "eff": {k: r(v) for k, v in self.eff.items()},
                "overhead_us": {k: r(v) for k, v in self.overhead_us.items()},
                "alpha": {k: r(v) for k, v in self.alpha.items()}, "alpha_mem": r(self.alpha_mem),
                "sync_us": r(self.sync_us), "par_half_ms": r(self.par_half_ms), "overlap": r(self.overlap),
                "act_gbs": r(self.act_gbs), "cols_gbs": r(self.cols_gbs),
                "shape": {k: r(self.shape.get(k, 0.0)) for k in SHAPE_KEYS}, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, core_type: str | None = None) -> "CoreCoeffs":
        if not isinstance(data, Mapping):
            raise HintsError(f"cost coefficients must be an object, got {type(data).__name__}")
        try:
            kw = {"core_type": str(core_type or data["core_type"]), "gflops": float(data["gflops"]),
                  "bandwidth_gbs": float(data["bandwidth_gbs"])}
        except KeyError as err:
            raise HintsError(f"cost coefficients lack field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise HintsError(f"cost coefficients: {err}") from err
        for name in ("eff", "overhead_us", "alpha"):
            if name in data:
                base = getattr(cls(kw["core_type"], 1.0, 1.0), name)
                given = data[name]
                if not isinstance(given, Mapping):
                    raise HintsError(f"cost coefficients: {name} must be an object of kind -> number")
                unknown = set(given) - set(KINDS)
                if unknown:
                    raise HintsError(f"cost coefficients: {name} has unknown kinds {', '.join(sorted(unknown))}"
                                     f" (kinds: {', '.join(KINDS)})")
                kw[name] = {**base, **{k: _num(name, v) for k, v in given.items()}}
        for name in ("alpha_mem", "sync_us", "par_half_ms", "overlap", "act_gbs", "cols_gbs"):
            if name in data:
                kw[name] = _num(name, data[name])
        if "shape" in data:
            kw["shape"] = {"m0": 0.0, "n0": 0.0, "k0": 0.0, "dw_n0": 0.0,
                           **{k: _num(f"shape.{k}", v) for k, v in dict(data["shape"]).items()}}
        kw["source"] = str(data.get("source", ""))
        return cls(**kw)

    def with_(self, **changes) -> "CoreCoeffs":
        return replace(self, **changes)


def _num(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise HintsError(f"cost coefficients: {name} must be a finite number, got {v!r}")
    return float(v)


# ------------------------------------------------------------------------------ the model

def speedup(n: np.ndarray | float, alpha: np.ndarray | float) -> np.ndarray:
    """Amdahl-style speedup ``n / (1 + alpha (n - 1))``: 1 at n = 1, flat at alpha = 1."""
    n = np.asarray(n, dtype=float)
    return n / (1.0 + np.asarray(alpha, dtype=float) * (n - 1.0))


def shape_efficiency(kind: np.ndarray, gemm: np.ndarray, shape: Mapping[str, float]) -> np.ndarray:
    """Fraction of a kind's efficiency a layer reaches given its dims (1 for big GEMMs)."""
    g = np.ones(len(kind))
    is_gemm = np.isin(kind, [_KIND_INDEX[k] for k in GEMM_KINDS])
    if is_gemm.any():
        dims = gemm[is_gemm]
        sat = np.ones(len(dims))
        for col, key in enumerate(("m0", "n0", "k0")):
            d0 = float(shape.get(key, 0.0))
            if d0 > 0:
                sat *= dims[:, col] / (dims[:, col] + d0)
        g[is_gemm] = sat
    dw_n0 = float(shape.get("dw_n0", 0.0))
    if dw_n0 > 0:
        # NOTE: a depthwise tap is one vector op per channel over the output plane: small planes
        # vectorise badly
        dw = kind == _KIND_INDEX["depthwise"]
        plane = gemm[:, 1]
        g = np.where(dw, plane / (plane + dw_n0), g)
    return g


def terms(table: FeatureTable, coeffs: CoreCoeffs) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer (compute ms, memory ms) on one core."""
    eff = np.array([coeffs.eff[k] for k in KINDS])[table.kind]
    g = shape_efficiency(table.kind, table.gemm, coeffs.shape)
    compute = table.flops / (coeffs.gflops * 1e6 * eff * g)
    act_gbs = coeffs.act_gbs or coeffs.bandwidth_gbs
    cols_gbs = coeffs.cols_gbs or act_gbs
    memory = (table.bytes / act_gbs + table.cols / cols_gbs + table.wbytes / coeffs.bandwidth_gbs) / 1e6
    return compute, memory


def layer_ms(table: FeatureTable, coeffs: CoreCoeffs, cores: int) -> np.ndarray:
    """Predicted ms of every layer of ``table`` on ``cores`` cores of ``coeffs.core_type``."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    compute, memory = terms(table, coeffs)
    alpha = np.array([coeffs.alpha[k] for k in KINDS])[table.kind]
    overhead = np.array([coeffs.overhead_us[k] for k in KINDS])[table.kind] * 1e-3
    if cores > 1:
        ph = coeffs.par_half_ms
        n_eff = 1.0 + (cores - 1) * (compute / (compute + ph) if ph > 0 else 1.0)
        compute = compute / speedup(n_eff, alpha)
        memory = memory / speedup(cores, coeffs.alpha_mem)
        overhead = overhead + coeffs.sync_us * 1e-3 * (n_eff - 1.0)
    hi, lo = np.maximum(compute, memory), np.minimum(compute, memory)
    return overhead + hi + (1.0 - coeffs.overlap) * lo


def unit_ms(table: FeatureTable, coeffs: CoreCoeffs, cores: int) -> np.ndarray:
    """Predicted ms per unit (sum over its layers)."""
    return np.bincount(table.unit, weights=layer_ms(table, coeffs, cores), minlength=table.n_units)


def predict_table(table: FeatureTable, coeffs: CoreCoeffs, max_cores: int) -> np.ndarray:
    """``(n_units, max_cores)``: column k = predicted ms on k + 1 cores; never slower with more cores."""
    cols = np.stack([unit_ms(table, coeffs, k) for k in range(1, max_cores + 1)], axis=1)
    cols = np.maximum(cols, 1e-6)     # a unit of free layers still costs a call
    # NOTE: a runtime never has to use an extra core it is given: the best of fewer cores bounds it
    return np.minimum.accumulate(cols, axis=1)


def predict_units(units: Sequence, coeffs: CoreCoeffs, max_cores: int) -> np.ndarray:
    return predict_table(FeatureTable.from_units(units), coeffs, max_cores)


# ------------------------------------------------------------------------------ board files

# What a board cluster without a "costmodel" block gets: the shared values of the reference boards'
# fit (docs/COSTMODEL.md) with the A15's conv efficiency (a middling ARM core).
BOARD_DEFAULTS: dict[str, Any] = {
    "eff": {"conv": 0.3, "conv1x1": 0.15, "depthwise": 0.17, "fc": 0.3, "pool": 0.26, "lrn": 0.13,
            "elementwise": 0.0023, "memory": 0.0023},
    "overhead_us": 50.0,
    "alpha": {"conv": 0.1, "conv1x1": 0.1, "depthwise": 0.2, "fc": 0.3, "pool": 0.3, "lrn": 0.3,
              "elementwise": 0.3, "memory": 0.3},
    "alpha_mem": 0.6,
    "overlap": 0.9,
    "shape": {"m0": 8.8, "n0": 14.5, "k0": 2.1, "dw_n0": 0.0},
}


def cluster_coeffs(cluster: Mapping[str, Any], *, source: str = "board") -> CoreCoeffs:
    """Coefficients of one board cluster (DESIGN.md schema + an optional ``costmodel`` block).

    ``gflops_per_core`` is the core's peak and ``bandwidth_gbs`` the sustained bandwidth of the whole
    cluster (all its cores); one core sees ``bandwidth_gbs / S(cores, alpha_mem)``. The block may set
    ``eff``, ``alpha`` (per kind; missing kinds keep the defaults), ``overhead_us`` (a number or per
    kind), ``alpha_mem``, ``sync_us``, ``par_half_ms``, ``overlap`` and ``shape``.
    """
    where = f"{source}: cluster {cluster.get('name')!r}"
    block = cluster.get("costmodel", {}) or {}
    if not isinstance(block, Mapping):
        raise HintsError(f"{where}: 'costmodel' must be an object")
    merged: dict[str, Any] = {}
    for key, default in BOARD_DEFAULTS.items():
        given = block.get(key)
        if isinstance(default, dict):
            if given is not None and not isinstance(given, Mapping):
                raise HintsError(f"{where}: costmodel.{key} must be an object, got {given!r:.40}")
            merged[key] = {**default, **(given or {})}
        else:
            merged[key] = default if given is None else given
    for key in ("sync_us", "par_half_ms"):
        if key in block:
            merged[key] = block[key]
    if not isinstance(merged["overhead_us"], Mapping):
        merged["overhead_us"] = {k: merged["overhead_us"] for k in KINDS}
    unknown = set(block) - set(BOARD_DEFAULTS) - {"sync_us", "par_half_ms", "note"}
    if unknown:
        raise HintsError(f"{where}: unknown costmodel fields {', '.join(sorted(unknown))}")
    try:
        cores = int(cluster["cores"])
        alpha_mem = float(merged["alpha_mem"])
        per_core_bw = float(cluster["bandwidth_gbs"]) / float(speedup(cores, alpha_mem))
        merged.update(core_type=str(cluster["core_type"]), gflops=float(cluster["gflops_per_core"]),
                      bandwidth_gbs=per_core_bw, source=source)
    except (KeyError, TypeError, ValueError) as err:
        raise HintsError(f"{where}: {err}") from err
    try:
        return CoreCoeffs.from_dict(merged)
    except HintsError as err:
        raise HintsError(f"{where}: {err}") from None


def coeffs_from_board(board: Mapping[str, Any]) -> dict[str, CoreCoeffs]:
    """Core type -> coefficients for a validated board dict (tunerd.platform.boards.load_board):
    those of the core type's reference cluster, its fastest-clocked; a cluster of that type at a
    lower clock costs the same times / its speed (tunerd.platform.boards.board_clusters), which is
    what validate_board checks the board's figures agree with."""
    name = str(board.get("name", "board"))
    return {t: cluster_coeffs(ref, source=f"board {name}") for t, ref in core_type_references(board).items()}
