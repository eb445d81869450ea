"""The tuner's surrogate: its learned cost table, measured unit ms on top of the hints' predictions.

:class:`SurrogateTable` keeps a running mean/variance of the measured ms per (unit, core type, cores),
kept apart by how many workers shared the cluster so the memory-bandwidth contention is learnt too,
and estimates every cell, measured or not, with its uncertainty. The tuner ranks configs on the
throughput model (:mod:`tunerd.tuning.throughput`) over this estimate, and explores on its optimistic
twin; it lives apart from the tuner because it is pure statistics over a cost table and knows nothing
of genomes, queues or states.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..costs.table import UnitCostTable
from ..pipeconfig import ClusterSpec, PipelineConfig

__all__ = ["SurrogateTable"]


class SurrogateTable:
    """Running mean/variance of measured unit ms per (unit, core type, cores), on top of the
    predictions, and the learnt memory-bandwidth contention per core type.

    Times are normalised to speed 1.0 (ms x the cluster's speed). They are kept apart by the
    number of workers that shared the cluster when measured, so the contention slowdown
    ``1 + alpha * (workers - 1)`` (the model of :mod:`tunerd.tuning.throughput`) can be learnt from cells
    seen under different worker counts and divided out: the cells themselves are contention-free.
    """

    ALPHA_GRID = np.linspace(0.0, 0.4, 41)
    # Priors of the empirical-Bayes back-off (see estimate()), each worth PRIOR_WEIGHT observations:
    # log-sd of a cell around its unit and core type at other core counts; log-sd of the
    # predictions' error per unit; correlation of a unit's error across core types.
    SD_OTHER_CORES = 0.08
    SD_CELL = 0.03       # relative sd of one measurement of a cell (learnt from cells measured twice)
    SD_PRIOR = 0.25
    RHO_PRIOR = 0.5
    PRIOR_WEIGHT = 5.0

    def __init__(self, predicted: UnitCostTable, contention_prior: Mapping[str, float] | None = None) -> None:
        self.predicted = predicted
        shape = {t: (ms.shape[1],) + ms.shape for t, ms in predicted.predicted_ms.items()}
        self.count = {t: np.zeros(s) for t, s in shape.items()}  # [workers-1, unit, cores-1]
        self.mean = {t: np.zeros(s) for t, s in shape.items()}
        self.m2 = {t: np.zeros(s) for t, s in shape.items()}
        self.prior = {t: float((contention_prior or {}).get(t, 0.0)) for t in predicted.predicted_ms}
        self.alpha = dict(self.prior)
        self._estimate: UnitCostTable | None = None
        self.learnt: dict[str, float] = {}
        self._sd: dict[str, np.ndarray] = {}
        self._optimistic: dict[float, UnitCostTable] = {}

    @property
    def n_units(self) -> int:
        return self.predicted.n_units

    def add(self, core_type: str, cores: int, units: np.ndarray, ms: np.ndarray, workers: int = 1) -> None:
        """Welford update of cells (units, core_type, cores) measured with ``workers`` workers on
        the cluster, with times ``ms`` normalised to speed 1."""
        k = cores - 1
        w = min(max(int(workers), 1), self.count[core_type].shape[0]) - 1
        cnt, mean, m2 = self.count[core_type][w], self.mean[core_type][w], self.m2[core_type][w]
        for u, x in zip(units, ms):
            if not (math.isfinite(x) and x > 0):
                continue
            cnt[u, k] += 1
            delta = x - mean[u, k]
            mean[u, k] += delta / cnt[u, k]
            m2[u, k] += delta * (x - mean[u, k])
        self._estimate = None
        self._optimistic = {}

    def record(self, config: PipelineConfig, unit_ms: np.ndarray, clusters: Mapping[str, ClusterSpec]) -> None:
        """Add per-unit ms measured while running ``config`` on ``clusters`` (with their speeds)."""
        workers: dict[str, int] = {}
        for s in config.stages:
            workers[s.cluster] = workers.get(s.cluster, 0) + s.replicas
        for s in config.stages:
            c = clusters[s.cluster]
            units = np.arange(s.first, s.last + 1)
            ms = np.asarray(unit_ms[s.first:s.last + 1], dtype=float) * c.speed
            self.add(c.core_type, s.cores, units, ms, workers[s.cluster])

    def soften(self, max_count: int = 1) -> None:
        """Cap every cell's weight so new measurements dominate (after a frequency change)."""
        for t in self.count:
            cnt = self.count[t]
            self.m2[t] *= np.where(cnt > max_count, max_count / np.maximum(cnt, 1), 1.0)
            np.minimum(cnt, max_count, out=cnt)
        self._estimate = None
        self._optimistic = {}

    def measured_cells(self) -> int:
        return int(sum(int(np.count_nonzero(c.sum(axis=0))) for c in self.count.values()))

    def _factors(self, core_type: str, alpha: float) -> np.ndarray:
        return 1.0 + alpha * np.arange(self.count[core_type].shape[0])

    def cells(self, core_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contention-free (count, mean, variance) per (unit, cores) under the learnt alpha."""
        f = self._factors(core_type, self.alpha[core_type])[:, None, None]
        cnt = self.count[core_type]
        total = cnt.sum(axis=0)
        mean_w = self.mean[core_type] / f
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(total > 0, (cnt * mean_w).sum(axis=0) / np.maximum(total, 1), np.nan)
            ss = (self.m2[core_type] / f ** 2 + cnt * (mean_w - np.nan_to_num(mean)[None]) ** 2).sum(axis=0)
            var = np.where(total > 1, ss / np.maximum(total - 1, 1), np.nan)
        return total, mean, var

    def variance(self, core_type: str) -> np.ndarray:
        return self.cells(core_type)[2]

    def workers_seen(self, core_type: str) -> set[int]:
        """Worker counts measurements of this core type were taken under."""
        return {w + 1 for w in range(self.count[core_type].shape[0]) if self.count[core_type][w].any()}

    def contention_identified(self, core_type: str) -> bool:
        """Whether some cell was measured under two worker counts (so alpha is learnt, not assumed)."""
        return bool(((self.count[core_type] > 0).sum(axis=0) >= 2).any())

    def learn_contention(self) -> dict[str, float]:
        """Fit alpha per core type on cells measured under two or more worker counts (least
        squares in log time, a weak pull towards the prior); the prior where none are."""
        for t in self.count:
            cnt = self.count[t]
            multi = (cnt > 0).sum(axis=0) >= 2
            if not multi.any():
                self.alpha[t] = self.prior[t]
                continue
            n = cnt[:, multi]                                  # (W, cells)
            logs = np.log(np.where(n > 0, self.mean[t][:, multi], 1.0))
            wk = np.arange(cnt.shape[0])[None, :, None]
            adj = logs[None] - np.log1p(self.ALPHA_GRID[:, None, None] * wk)   # (A, W, cells)
            c = (n[None] * adj).sum(axis=1, keepdims=True) / n.sum(axis=0)[None, None]
            loss = (n[None] * (adj - c) ** 2).sum(axis=(1, 2)) + 0.05 * (self.ALPHA_GRID - self.prior[t]) ** 2
            self.alpha[t] = float(self.ALPHA_GRID[int(np.argmin(loss))])
        return dict(self.alpha)

    def estimate(self) -> UnitCostTable:
        """Best contention-free estimate of every cell (cached until the next measurement).

        Measured cells are their mean; the others take the prediction times the log ratio
        measured/predicted learnt, most specific first: the same unit and core type at other core
        counts; else the unit on other core types plus this core type's overall bias; else that bias.
        """
        if self._estimate is not None:
            return self._estimate
        self.learn_contention()
        pred = self.predicted.predicted_ms
        n = self.n_units
        log_ratio, measured = {}, {}
        for t, ms in pred.items():
            total, mean, _var = self.cells(t)
            measured[t] = total > 0
            log_ratio[t] = np.where(measured[t], np.log(np.where(measured[t], mean, 1.0) / ms), 0.0)
        type_bias = {t: float(log_ratio[t][measured[t]].mean()) if measured[t].any() else 0.0 for t in pred}
        # per (unit, core type): mean log ratio over the core counts measured, and the residual
        # of the unit on that core type once the core type's bias is taken out
        n_ut = {t: measured[t].sum(axis=1) for t in pred}
        r_ut = {t: np.where(n_ut[t] > 0, log_ratio[t].sum(axis=1) / np.maximum(n_ut[t], 1), 0.0) for t in pred}
        resid = {t: np.where(n_ut[t] > 0, r_ut[t] - type_bias[t], np.nan) for t in pred}
        # how much of a unit's error carries over to the other core types (empirical Bayes:
        # correlation of the residuals of units measured on two types, pulled towards a prior)
        num = den_a = den_b = 0.0
        pairs = 0
        types = list(pred)
        for i, a in enumerate(types):
            for b in types[i + 1:]:
                both = ~np.isnan(resid[a]) & ~np.isnan(resid[b])
                num += float((resid[a][both] * resid[b][both]).sum())
                den_a += float((resid[a][both] ** 2).sum())
                den_b += float((resid[b][both] ** 2).sum())
                pairs += int(both.sum())
        rho_hat = num / math.sqrt(den_a * den_b) if den_a > 0 and den_b > 0 else self.RHO_PRIOR
        rho = float(np.clip((pairs * rho_hat + self.PRIOR_WEIGHT * self.RHO_PRIOR) / (pairs + self.PRIOR_WEIGHT), 0.0, 1.0))
        all_resid = np.concatenate([r[~np.isnan(r)] for r in resid.values()])
        spread = math.sqrt((float((all_resid ** 2).sum()) + self.PRIOR_WEIGHT * self.SD_PRIOR ** 2)
                           / (all_resid.size + self.PRIOR_WEIGHT))
        # the spread of a cell around its unit and core type's mean, over cells measured at 2+ counts
        # (a deviation from the mean of m cells has variance s^2 (1 - 1/m): count it so)
        dev2, dof = 0.0, 0.0
        for t in pred:
            multi = measured[t] & (n_ut[t] >= 2)[:, None]
            dev2 += float(((log_ratio[t] - r_ut[t][:, None])[multi] ** 2).sum())
            dof += float((1.0 - 1.0 / np.broadcast_to(n_ut[t][:, None], multi.shape)[multi]).sum())
        k_spread = math.sqrt((dev2 + self.PRIOR_WEIGHT * self.SD_OTHER_CORES ** 2) / (dof + self.PRIOR_WEIGHT))
        # how far one measurement of a cell lands from the cell's mean (relative), pooled over the
        # cells measured twice or more, weighted by their size (a stage's time is a sum: a tiny
        # unit's jitter hardly moves it): a few % on a quiet board, more on a shared machine
        ss, norm, dof = 0.0, 0.0, 0.0
        for t in pred:
            total, mean, var = self.cells(t)
            multi = (total >= 2) & (mean > 0)
            ss += float((var[multi] * (total[multi] - 1)).sum())
            norm += float((mean[multi] ** 2 * (total[multi] - 1)).sum())
            dof += float((total[multi] - 1).sum())
        rel_var = ss / norm if norm > 0 else 0.0
        cell_sd = math.sqrt((dof * rel_var + self.PRIOR_WEIGHT * self.SD_CELL ** 2) / (dof + self.PRIOR_WEIGHT))
        self.learnt = {"rho": rho, "spread": spread, "k_spread": k_spread, "cell_sd": cell_sd}
        out, self._sd = {}, {}
        for t, ms in pred.items():
            others = [resid[o] for o in pred if o != t]
            if others:
                stack = np.vstack(others)
                seen = ~np.isnan(stack)
                other_mean = np.where(seen.any(axis=0), np.nansum(stack, axis=0) / np.maximum(seen.sum(axis=0), 1), np.nan)
            else:
                other_mean = np.full(n, np.nan)
            has_other = ~np.isnan(other_mean)
            fallback = np.where(n_ut[t] > 0, r_ut[t], type_bias[t] + rho * np.nan_to_num(other_mean))
            out[t] = ms * np.exp(np.where(measured[t], log_ratio[t], fallback[:, None]))
            fallback_sd = np.where(n_ut[t] > 0, k_spread,
                                   np.where(has_other, math.hypot(spread * math.sqrt(1 - rho ** 2), k_spread),
                                            math.hypot(spread, k_spread)))
            total = self.count[t].sum(axis=0)
            self._sd[t] = np.where(measured[t], cell_sd / np.sqrt(np.maximum(total, 1)), fallback_sd[:, None])
        self._estimate = UnitCostTable(out, self.predicted.out_bytes)
        self._optimistic = {}
        return self._estimate

    def uncertainty(self) -> dict[str, np.ndarray]:
        """Log-sd of every cell's estimate."""
        self.estimate()
        return self._sd

    def optimistic(self, kappa: float) -> UnitCostTable:
        """Every cell ``kappa`` standard deviations faster than its estimate (for exploration)."""
        est = self.estimate()
        if kappa not in self._optimistic:
            self._optimistic[kappa] = UnitCostTable(
                {t: ms * np.exp(-kappa * self._sd[t]) for t, ms in est.predicted_ms.items()},
                est.out_bytes)
        return self._optimistic[kappa]

    def to_dict(self) -> dict:
        return {"predicted": self.predicted.to_dict(), "prior": dict(self.prior),
                "count": {t: a.tolist() for t, a in self.count.items()},
                "mean": {t: a.tolist() for t, a in self.mean.items()},
                "m2": {t: a.tolist() for t, a in self.m2.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SurrogateTable":
        table = cls(UnitCostTable.from_dict(data["predicted"]), data.get("prior"))
        for name in ("count", "mean", "m2"):
            getattr(table, name).update({t: np.asarray(v, dtype=float) for t, v in data[name].items()})
        return table
