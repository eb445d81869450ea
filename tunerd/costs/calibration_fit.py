"""The calibration fit: the cost model's coefficients per core type from measured sweep times.

The fit is robust least squares on relative error: on one core, times are linear in the per-kind
overheads, inverse efficiencies and inverse bandwidth (non-negative least squares, reweighted with a
Huber weight, GEMM shape constants on a grid); with more cores the parallel coefficients (alpha per
kind, memory alpha, sync cost, small-layer threshold) are fitted by coordinate search on log error.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import HintsError, PlatformError
from .calibration_file import Calibration
from .calibration_sweep import build_layer


@dataclass(frozen=True)
class Sample:
    """One timing of the sweep: a layer on ``cores`` cores of a core type."""

    layer: int            # index into the sweep
    core_type: str
    cores: int
    ms: float
    clean: bool = True    # at least three runs without waiting for a CPU (or no way to know)


def _nnls(a, b, iters: int = 200):
    """Non-negative least squares (Lawson-Hanson active set), small dense problems."""
    import numpy as np
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    for _ in range(iters):
        if passive.all() or not (w[~passive] > 1e-12).any():
            break
        j = int(np.argmax(np.where(~passive, w, -np.inf)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
        w = a.T @ (b - a @ x)
    return x


def _features(sweep):
    """One FeatureTable row group per sweep layer (unit index = sweep index)."""
    from .costmodel import FeatureTable
    return FeatureTable.from_groups([li for u in build_layer(op, params).units for li in u.layers]
                                    for op, params in sweep)


def _fit_single(table, ms, gflops: float, core_type: str, grid, llc_bytes: float):
    """Fit per-kind overheads and efficiencies and the two bandwidths on 1-core times.

    For fixed shape constants (a grid) the 1-core time is linear in the unknowns: overhead per
    kind, 1 / efficiency per kind, 1 / activation, DRAM and im2col bandwidths. Non-negative
    least squares on relative error, reweighted (Huber) so a few noisy layers cannot pull the fit.

    NOTE: a sweep layer runs again and again, so weights that fit the last-level cache are warm
    here although a network streams them from DRAM: the fit charges DRAM only for the share
    ``w / (w + llc)`` of them, the prediction for all of them. A batch-1 fc is all weight traffic
    (2 FLOPs per 4-byte weight): its time goes to the bandwidth, not to an fc efficiency.
    """
    import numpy as np
    from .costmodel import KINDS, CoreCoeffs, shape_efficiency
    nk = len(KINDS)
    fc = KINDS.index("fc")
    dram = table.wbytes * table.wbytes / (table.wbytes + llc_bytes)
    best = None
    for m0, n0, k0, dw_n0 in grid:
        shape = {"m0": m0, "n0": n0, "k0": k0, "dw_n0": dw_n0}
        g = shape_efficiency(table.kind, table.gemm, shape)
        comp1 = table.flops / (gflops * 1e6 * g)          # ms at eff = 1
        a = np.zeros((table.n_units, 2 * nk + 3))
        for col in range(nk):
            sel = table.kind == col
            np.add.at(a[:, col], table.unit[sel], 1e-3)                # overhead, us
            if col != fc:
                np.add.at(a[:, nk + col], table.unit[sel], comp1[sel])  # 1 / eff
        np.add.at(a[:, 2 * nk], table.unit, table.bytes / 1e6)          # 1 / activation GB/s
        np.add.at(a[:, 2 * nk + 1], table.unit, dram / 1e6)             # 1 / DRAM GB/s
        np.add.at(a[:, 2 * nk + 2], table.unit, table.cols / 1e6)       # 1 / im2col GB/s
        used = a.any(axis=0)
        weights = 1.0 / ms
        x = np.zeros(a.shape[1])
        for _ in range(4):
            x[:] = 0.0
            x[used] = _nnls(a[:, used] * weights[:, None], ms * weights)
            rel = np.abs(a @ x - ms) / ms
            weights = (1.0 / ms) * np.minimum(1.0, 0.1 / np.maximum(rel, 1e-9))
        pred = np.maximum(a @ x, 1e-9)
        score = float(np.mean(np.minimum(np.log(pred / ms) ** 2, 0.25)))
        if best is None or score < best[0]:
            best = (score, x.copy(), shape)
    _, x, shape = best
    eff = {k: float(min(10.0, 1.0 / x[nk + col])) if x[nk + col] > 1e-6 else 10.0 for col, k in enumerate(KINDS)}
    overhead = {k: float(x[col]) for col, k in enumerate(KINDS)}
    gbs = [float(min(1e4, 1.0 / v)) if v > 1e-9 else 1e4 for v in x[2 * nk:]]
    return CoreCoeffs(core_type, gflops, gbs[1], eff=eff, overhead_us=overhead, shape=dict(shape),
                      alpha={k: 1.0 for k in KINDS}, alpha_mem=1.0, overlap=0.0, act_gbs=gbs[0],
                      cols_gbs=gbs[2])


def llc_bytes(cpu: int = 0, sysfs_root: str | os.PathLike = "/sys") -> int:
    """Size of the largest cache CPU ``cpu`` sees (``cpuN/cache/index*/size``), 8 MiB if unknown."""
    best = 0
    base = Path(sysfs_root) / "devices/system/cpu" / f"cpu{cpu}" / "cache"
    try:
        for idx in base.glob("index*"):
            text = (idx / "size").read_text().strip().upper()
            mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or 8 * 1024 ** 2


def _fit_parallel(table, by_n: Mapping[int, Any], coeffs):
    """Fit alpha per kind, alpha_mem, sync_us and par_half_ms on the multi-core times
    (``by_n``: cores -> (ms per layer, mask of the layers to fit on))."""
    import numpy as np
    from .costmodel import KINDS, unit_ms
    if not by_n:
        return coeffs

    def loss(c) -> float:
        # NOTE: absolute log error: a median-like fit that a few stalled timings cannot pull
        total = 0.0
        for n, (ms, use) in by_n.items():
            pred = unit_ms(table, c, n)
            total += float(np.sum(np.abs(np.log(pred[use] / ms[use]))))
        return total

    grid_a = [0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0]
    present = sorted(set(int(k) for k in table.kind))
    cur = coeffs.with_(alpha={k: 0.5 for k in KINDS}, alpha_mem=0.5)
    best = loss(cur)
    for _ in range(3):
        for col in present:
            k = KINDS[col]
            for a in grid_a:
                cand = cur.with_(alpha={**cur.alpha, k: a})
                v = loss(cand)
                if v < best:
                    cur, best = cand, v
        for a in grid_a:
            cand = cur.with_(alpha_mem=a)
            v = loss(cand)
            if v < best:
                cur, best = cand, v
        for s in (0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0):
            cand = cur.with_(sync_us=s)
            v = loss(cand)
            if v < best:
                cur, best = cand, v
        for ph in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0):
            cand = cur.with_(par_half_ms=ph)
            v = loss(cand)
            if v < best:
                cur, best = cand, v
    return cur


def fit(samples: Sequence[Sample], sweep: Sequence[tuple[str, tuple]], *, quick: bool = False,
        llc: Mapping[str, float] | None = None):
    """Coefficients per core type from measured samples; returns (coeffs, fit report).

    ``llc`` maps core types to the last-level cache size in bytes (default 8 MiB)."""
    llc = dict(llc or {})
    import numpy as np
    from .costmodel import unit_ms
    table = _features(sweep)
    coeffs, report = {}, {}
    for core_type in sorted({s.core_type for s in samples}):
        by_n: dict[int, np.ndarray] = {}
        clean: dict[int, np.ndarray] = {}
        for n in sorted({s.cores for s in samples if s.core_type == core_type}):
            arr = np.full(len(sweep), np.nan)
            ok = np.zeros(len(sweep), dtype=bool)
            for s in samples:
                if s.core_type == core_type and s.cores == n:
                    arr[s.layer] = s.ms
                    ok[s.layer] = s.clean
            if np.isnan(arr).any():
                raise PlatformError(f"calibration of {core_type!r} on {n} cores is missing layers")
            by_n[n], clean[n] = arr, ok
        if 1 not in by_n:
            raise PlatformError(f"calibration of {core_type!r} has no 1-core times")
        # the "peak" is the best GEMM rate seen on one core, so efficiencies read as fractions of it
        gemm = np.isin(table.kind, [0, 1, 3])
        rate = np.bincount(table.unit[gemm], weights=table.flops[gemm], minlength=table.n_units) / by_n[1] / 1e6
        gflops = float(np.round(max(1e-3, rate.max()), 3))
        if quick:
            grid = list(itertools.product([0.0, 16.0], [0.0, 64.0], [0.0, 32.0], [0.0]))
        else:
            grid = list(itertools.product([0.0, 8.0, 32.0, 96.0], [0.0, 16.0, 64.0, 256.0],
                                          [0.0, 16.0, 64.0, 192.0], [0.0, 64.0, 256.0]))
        c1 = _fit_single(table, by_n[1], gflops, core_type, grid, float(llc.get(core_type, 8 * 2**20)))
        # NOTE: multi-core timings are the ones a loaded machine spoils: fit on the clean layers
        # when there are enough of them
        multi = {n: (ms, clean[n] if clean[n].sum() >= max(8, len(ms) // 4) else np.ones(len(ms), bool))
                 for n, ms in by_n.items() if n > 1}
        c = _fit_parallel(table, multi, c1)
        c = c.with_(source="calibration")
        coeffs[core_type] = c
        rep = {"layers": len(sweep), "cores": sorted(by_n)}
        for n, ms in by_n.items():
            pred = unit_ms(table, c, n)
            rep[f"median_abs_err_{n}"] = round(float(np.median(np.abs(pred - ms) / ms)), 4)
            rep[f"clean_layers_{n}"] = int(clean[n].sum())
        report[core_type] = rep
    return coeffs, report


def refit(cal: Calibration) -> Calibration:
    """Fit again from the samples stored in a calibration (no measuring)."""
    sweep: list[tuple[str, tuple]] = []
    index: dict[tuple, int] = {}
    samples = []
    for rec in cal.samples:
        key = (rec["op"], tuple(int(v) for v in rec["params"]))
        if key not in index:
            index[key] = len(sweep)
            sweep.append(key)
        samples.append(Sample(index[key], rec["core_type"], int(rec["cores"]), float(rec["ms"]),
                              bool(rec.get("clean", True))))
    if not samples:
        raise HintsError("the calibration holds no samples to refit")
    llc = {c["core_type"]: c.get("llc_bytes", 8 * 2**20) for c in cal.platform.get("clusters", [])}
    coeffs, report = fit(samples, sweep, quick=cal.quick, llc=llc)
    return Calibration(coeffs, cal.platform, cal.date, cal.machine, cal.quick, report, cal.samples,
                       backend=cal.backend)
