"""The online tuner: a DEAP genetic search seeded with compile-time hints, driven ask/tell.

The daemon (or the simulator) drives it one evaluation at a time, so it never blocks::

    config = tuner.ask()            # None: nothing to evaluate now (converged, pinned, ...)
    ...run config for a measurement window...
    tuner.tell(config, fps, unit_times=per_unit_ms)

What makes it evaluate few, well-chosen configs:

- a **surrogate cost table** (:class:`SurrogateTable`) of running mean/variance of measured ms per (unit, core
  type, cores), starting from the hints' predictions. It is the **surrogate**. Unmeasured cells
  borrow, in log ratio measured/predicted, what was learnt about the same unit at other core
  counts, else about the unit on other core types (shrunk by the correlation of units' errors
  across core types, learnt from the data) plus the core type's overall bias. Measurements are
  kept apart by how many workers shared the cluster, so the bandwidth contention is learnt too;
- each generation re-runs the exact DSE (:mod:`tunerd.tuning.dse`) on the refined table, the strongest
  proposal source, and adds GA offspring (select, crossover, mutate, repair) around the population;
- candidates are ranked by the surrogate; live evaluation goes, in this order, to one expected to
  beat the incumbent by ``promise``; else to a re-measurement of the incumbent or a contender
  within noise of it (measurements are cached per config and averaged, so a lucky noisy one does
  not stick; the incumbent is chosen on its mean measured fps combined with the surrogate's
  figure, which averages many unit timings); else to the best **optimistic** candidate (every
  cell ``explore_kappa`` standard deviations faster; the DSE on that optimistic table proposes
  too) if it could beat the incumbent and its mean estimate is within ``explore_floor`` of it;
  else to a near-tie (see :meth:`Tuner._choose`).

It converges when the incumbent has not improved by ``gain_threshold`` for ``patience``
generations that evaluated a new config (re-measurements do not count), when ``idle_patience``
generations in a row found nothing worth evaluating, or when the episode's budget is spent; but
before it converges (other than on the budget) the **confirmation** must hold: the
``confirm_top_k`` best configs on the refined surrogate (of the DSE's proposals, the population
and the last offspring) and the DSE's best split of each of its ``confirm_top_k`` best layouts,
those it rates within ``confirm_floor`` of the incumbent, have all been evaluated live (a
surrogate whose cells mostly come from measurements can still rank first a config it never saw,
and a prediction is no measurement); and the incumbent has been raced against the contenders
within noise of it (``min_best_samples`` measurements each, more up to ``race_samples`` while
they stay within noise).
``retune(speed_factors)`` warm-starts a new episode from the population and the cost table
scaled to the new frequencies.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import states
from .dse import explore, flops_balanced_split
from ..errors import ConfigError, TunerdError
from .genome import Genome, GenomeSpace
from ..pipeconfig import ClusterSpec, PipelineConfig, Stage, as_cluster_specs, parse_config, validate
from .throughput import PipelineModel, UnitCostTable

__all__ = ["SurrogateTable", "Tuner", "STATE_VERSION"]

STATE_VERSION = 1


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


class Tuner:
    """Ask/tell online tuner (see the module docstring).

    ``table`` is the predicted UnitCostTable (or a hints object with ``.predicted_ms`` and
    ``.out_bytes``); ``contention`` an optional prior of the bandwidth-sharing slowdown per extra
    worker, per cluster name (learnt online); ``budget`` live evaluations per tuning episode and
    ``retune_budget`` per retuning episode.
    """

    def __init__(self, clusters: Sequence[Any], table: UnitCostTable | Any, *, rng_seed: int = 0,
                 budget: int = 60, interconnect_gbs: float | None = None, use_hints: bool = True,
                 population_size: int = 16, offspring_size: int = 24, evals_per_generation: int = 1,
                 promise: float = 1.01, gain_threshold: float = 0.005, patience: int = 5,
                 idle_patience: int = 3, min_best_samples: int = 2, race_samples: int = 3,
                 race_band: float = 0.1,
                 max_stages: int | None = None,
                 dse_top_k: int = 6, random_seeds: int = 4, retune_budget: int | None = None,
                 contention: Mapping[str, float] | None = None, noise_prior: float = 0.03,
                 explore_kappa: float = 1.5, explore_floor: float = 0.8, explore_top_k: int = 3,
                 near_tie: float = 0.97, confirm_top_k: int = 3, confirm_floor: float = 0.85,
                 clock: Callable[[], float] | None = None) -> None:
        self.clusters = as_cluster_specs(clusters)
        if interconnect_gbs is None:  # hints know their board's interconnect
            interconnect_gbs = getattr(table, "interconnect_gbs", None)
        table = UnitCostTable.from_hints(table)
        table.check_clusters(self.clusters)
        if budget < 1:
            raise ConfigError(f"budget must be >= 1, got {budget}")
        self.params = dict(
            rng_seed=int(rng_seed), budget=int(budget), interconnect_gbs=interconnect_gbs,
            use_hints=bool(use_hints), population_size=int(population_size),
            offspring_size=int(offspring_size), evals_per_generation=int(evals_per_generation),
            promise=float(promise), gain_threshold=float(gain_threshold), patience=int(patience),
            idle_patience=int(idle_patience), min_best_samples=int(min_best_samples),
            race_samples=int(race_samples), race_band=float(race_band),
            max_stages=max_stages, dse_top_k=int(dse_top_k), random_seeds=int(random_seeds),
            retune_budget=int(retune_budget) if retune_budget else max(10, budget // 2),
            contention=dict(contention) if contention else None, noise_prior=float(noise_prior),
            explore_kappa=float(explore_kappa), explore_floor=float(explore_floor),
            explore_top_k=int(explore_top_k), near_tie=float(near_tie),
            confirm_top_k=int(confirm_top_k), confirm_floor=float(confirm_floor),
        )
        by_name = {c.name: c for c in self.clusters}
        for name in (contention or {}):
            if name not in by_name:
                raise ConfigError(f"contention for unknown cluster {name!r}")
        self.n_units = table.n_units
        self.space = GenomeSpace(self.clusters, self.n_units, max_stages)
        self.cost = SurrogateTable(table, {by_name[k].core_type: float(v) for k, v in (contention or {}).items()})
        self.rng = random.Random(rng_seed)
        self.clock = clock or time.time
        self.speeds = {c.name: c.speed for c in self.clusters}
        self.state = states.IDLE
        self.population: list[Genome] = []
        self.pending: list[Genome] = []
        self.measured: dict[str, list[float]] = {}
        self.queue: list[str] = []
        self.history: list[dict] = []
        self.evaluations = 0
        self.episode_evaluations = 0
        self.episode_budget = self.params["budget"]
        self.generation = 0
        self.retunes = 0
        self.pinned: str | None = None
        self._verify: tuple[str, float, float] | None = None
        self._before_pin = states.IDLE
        self._ref_best = 0.0
        self._stale = 0
        self._idle = 0
        self._queued_last = False
        self._searched_last = False
        self._model: PipelineModel | None = None
        self._dse_cache: dict[str, tuple[Any, list[PipelineConfig]]] = {}
        self._dse_last: dict[str, list[str]] = {}
        self._reasons: dict[str, str] = {}  # why each queued config is to be evaluated
        self._optimistic_model: PipelineModel | None = None
        self._estimates_cache: tuple[Any, dict[str, float]] | None = None

    # -- public API ------------------------------------------------------------------------------
    @property
    def converged(self) -> bool:
        return self.state == states.CONVERGED

    @property
    def best(self) -> tuple[PipelineConfig, float] | None:
        """The incumbent (best estimate, see :meth:`estimates`) and its mean measured fps."""
        key = self._best_key()
        return None if key is None else (parse_config(key), self._mean(key))

    @property
    def current_clusters(self) -> list[ClusterSpec]:
        return [replace(c, speed=self.speeds[c.name]) for c in self.clusters]

    def surrogate(self) -> PipelineModel:
        """The throughput model on the refined cost table at the current speeds."""
        table = self.cost.estimate()
        if self._model is None or self._model.table is not table:
            self._model = PipelineModel(
                table, self.current_clusters, interconnect_gbs=self.params["interconnect_gbs"],
                contention={c.name: self.cost.alpha[c.core_type] for c in self.clusters})
        return self._model

    def optimistic_surrogate(self) -> PipelineModel:
        """The surrogate with every cell ``explore_kappa`` standard deviations faster."""
        table = self.cost.optimistic(self.params["explore_kappa"])
        if self._optimistic_model is None or self._optimistic_model.table is not table:
            base = self.surrogate()
            self._optimistic_model = PipelineModel(table, self.current_clusters,
                                                   interconnect_gbs=base.interconnect_gbs,
                                                   contention=base.contention)
        return self._optimistic_model

    def ask(self) -> PipelineConfig | None:
        """The next config to evaluate live, or None (converged, pinned or budget spent)."""
        if self.state in (states.PINNED, states.CONVERGED):
            return None
        if self.state == states.IDLE:
            self.state = states.TUNING
            self._seed()
        while not self.queue:
            if self.episode_evaluations >= self.episode_budget:
                self._converge()
                return None
            self._generation()
            if self.state == states.CONVERGED:
                return None
        return parse_config(self.queue[0])

    def tell(self, config: PipelineConfig | str, fps: float, *, unit_times: Any = None) -> None:
        """Record a measurement of ``config``: ``fps`` and optionally per-unit ms on its stages."""
        if isinstance(config, str):
            config = parse_config(config)
        validate(config, self.n_units, self.clusters)
        fps = float(fps)
        if not (math.isfinite(fps) and fps >= 0):
            raise ConfigError(f"measured fps must be finite and >= 0, got {fps}")
        key = str(config)
        predicted = self.surrogate().fps(config)
        if unit_times is not None:
            self.cost.record(config, self._unit_array(unit_times), {c.name: c for c in self.current_clusters})
        self.measured.setdefault(key, []).append(fps)
        if key in self.queue:
            self.queue.remove(key)
        self.evaluations += 1
        if self.state in states.SEARCHING:
            self.episode_evaluations += 1
        self.history.append({"index": self.evaluations, "config": key, "fps": fps,
                             "predicted_fps": predicted, "time": self.clock(), "state": self.state,
                             "generation": self.generation, "reason": self._reasons.pop(key, "told")})
        if self._verify is not None and key == self._verify[0]:
            expected, tolerance = self._verify[1:]
            self._verify = None
            if fps >= (1 - tolerance) * expected:
                self._converge()     # the stored best holds up: no search needed
                return
        if self.state in states.SEARCHING and self.episode_evaluations >= self.episode_budget:
            self._converge()

    def adopt(self, config: PipelineConfig | str, expected_fps: float, *, tolerance: float = 0.15) -> None:
        """Start from a stored best (a restart, or a frequency state seen before): it is evaluated
        first, and if it measures within ``tolerance`` of ``expected_fps`` the search ends there;
        otherwise the search goes on from the hints as usual."""
        if isinstance(config, str):
            config = parse_config(config)
        validate(config, self.n_units, self.clusters)
        key = str(config)
        if self.state == states.PINNED:
            # NOTE: the pin holds; the stored best is verified first when it is lifted
            if self._before_pin == states.IDLE:
                self._before_pin = states.TUNING
                self._seed()
            elif self._before_pin == states.CONVERGED:
                self._before_pin = states.RETUNING
        elif self.state == states.CONVERGED:
            self.state = states.RETUNING
        elif self.state == states.IDLE:
            self.state = states.TUNING
            self._seed()
        if key in self.queue:
            self.queue.remove(key)
        self.queue.insert(0, key)
        self._reasons[key] = "verify the stored best"
        self._verify = (key, float(expected_fps), float(tolerance))

    def retune(self, speed_factors: Mapping[str, float] | None = None) -> None:
        """Search again, warm-started, after a frequency change: ``speed_factors`` maps cluster
        names to their speed relative to nominal (0.6 = 60% of the hints' frequency); clusters
        not named keep theirs. With no factors (throughput drift), just search again. Before the
        first search (idle, or pinned before any) only the speeds change; while pinned the search
        starts on unpin."""
        for name, factor in (speed_factors or {}).items():
            if name not in self.speeds:
                raise ConfigError(f"unknown cluster {name!r} (clusters: {', '.join(self.speeds)})")
            if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
                raise ConfigError(f"speed factor for {name!r} must be > 0, got {factor!r}")
            self.speeds[name] = float(factor)
        self._model = self._optimistic_model = self._estimates_cache = None
        if self.state == states.IDLE or (self.state == states.PINNED and self._before_pin == states.IDLE):
            # NOTE: no search has started: the first one runs at the new speeds with its full budget
            return
        self.cost.soften(1)
        self.measured = {}
        self.queue = []
        self.pending = []
        self._verify = None     # a stored best was expected at the old speeds: not at the new ones
        self.episode_evaluations = 0
        self.episode_budget = self.params["retune_budget"]
        self._ref_best, self._stale, self._idle = 0.0, 0, 0
        self.retunes += 1
        if self.state == states.PINNED:
            self._before_pin = states.RETUNING
        else:
            self.state = states.RETUNING
            if not self.population:
                self._seed()

    def pin(self, config: PipelineConfig | str) -> None:
        if isinstance(config, str):
            config = parse_config(config)
        validate(config, self.n_units, self.clusters)
        if self.state != states.PINNED:
            self._before_pin = self.state
        self.pinned = str(config)
        self.state = states.PINNED

    def unpin(self) -> None:
        if self.state == states.PINNED:
            self.state = self._before_pin
        self.pinned = None

    def status(self) -> dict:
        best = self.best
        serving = self.pinned or (str(best[0]) if best else None)
        return {"state": self.state, "config": serving,
                "best": {"config": str(best[0]) if best else None, "fps": best[1] if best else None},
                "evaluations": self.evaluations, "retunes": self.retunes,
                "generation": self.generation, "speeds": dict(self.speeds)}

    # -- search ----------------------------------------------------------------------------------
    def _unit_array(self, unit_times: Any) -> np.ndarray:
        out = np.full(self.n_units, np.nan)
        if isinstance(unit_times, Mapping):
            for u, ms in unit_times.items():
                out[int(u)] = float(ms)
        else:
            arr = np.asarray(unit_times, dtype=float).reshape(-1)
            if arr.shape[0] != self.n_units:
                raise ConfigError(f"unit_times has {arr.shape[0]} entries, the model has {self.n_units} units")
            out[:] = arr
        return out

    def _mean(self, key: str) -> float:
        return float(np.mean(self.measured[key]))

    def _best_key(self) -> str | None:
        """The incumbent: the measured config with the best :meth:`estimate`."""
        if not self.measured:
            return None
        estimates = self.estimates()
        return max(self.measured, key=lambda k: (estimates[k], len(self.measured[k])))

    def estimates(self) -> dict[str, float]:
        """Best estimate of each measured config's fps: its mean measured fps combined with the
        surrogate's figure for it (which, its cells all measured, averages many unit timings and
        so is less noisy than a few fps measurements), weighted by their variances. The
        surrogate's own error is learnt from how far it lands from the measured means."""
        model = self.surrogate() if self.params["use_hints"] else None
        key = (id(model), self.evaluations, len(self.measured))
        if self._estimates_cache is not None and self._estimates_cache[0] == key:
            return self._estimates_cache[1]
        means = {k: self._mean(k) for k in self.measured}
        if model is None:
            out = means
        else:
            noise = self.noise()
            surr = {k: model.fps(parse_config(k)) for k in self.measured}
            logs = np.array([math.log(means[k] / surr[k]) for k in self.measured if means[k] > 0 and surr[k] > 0])
            bias = float(np.median(logs)) if logs.size else 0.0
            inv_n = np.mean([1.0 / len(v) for v in self.measured.values()])
            excess = float(((logs - bias) ** 2).sum()) - logs.size * noise ** 2 * inv_n if logs.size else 0.0
            prior = 3.0
            model_var = max(1e-4, (excess + prior * 0.03 ** 2) / (logs.size + prior))
            out = {}
            for k, m in means.items():
                w_meas = len(self.measured[k]) / noise ** 2
                w_model = 1.0 / model_var
                s_k = surr[k] * math.exp(bias)
                out[k] = (m * w_meas + s_k * w_model) / (w_meas + w_model) if m > 0 else m
        self._estimates_cache = (key, out)
        return out

    def _converge(self) -> None:
        self.state = states.CONVERGED
        self.queue = []

    def _dse(self, top_k: int, optimistic: bool = False) -> list[Genome]:
        """The DSE's top configs on the surrogate, or on its optimistic twin (recomputed only when
        the surrogate changed)."""
        model = self.optimistic_surrogate() if optimistic else self.surrogate()
        which = "optimistic" if optimistic else "mean"
        hit = self._dse_cache.get(which)
        if hit is None or hit[0] is not model:
            # warm start from the last results (persisted, so a resumed tuner breaks ties alike)
            seeds = [parse_config(c) for c in self._dse_last.get(which, [])]
            results = explore(model, max_stages=self.space.max_stages, top_k=top_k, seeds=seeds)
            hit = self._dse_cache[which] = (model, [r.config for r in results])
            self._dse_last[which] = [str(r.config) for r in results]
        return [self.space.from_config(c) for c in hit[1]]

    def _balanced_seeds(self) -> list[Genome]:
        """One stage per cluster on all its cores, units split in proportion to each cluster's
        capacity (the FLOPs-balanced split of Pipe-it, with predicted 1-core ms as FLOPs), in both
        cluster orders."""
        pred = self.cost.predicted
        ref = pred.predicted_ms[self.clusters[0].core_type][:, 0]
        seeds = []
        by_speed = sorted(self.current_clusters, key=lambda c: self._capacity(c, ref), reverse=True)
        for order in (by_speed, by_speed[::-1]):
            order = order[:self.n_units]
            caps = [self._capacity(c, ref) for c in order]
            ranges = flops_balanced_split(ref, caps)
            config = PipelineConfig(tuple(
                Stage(a, b, c.name, c.cores) for (a, b), c in zip(ranges, order)))
            seeds.append(self.space.from_config(config))
        return seeds

    def _capacity(self, cluster: ClusterSpec, ref: np.ndarray) -> float:
        ms = self.cost.predicted.ms(cluster.core_type, cluster.cores)
        return float(ref.sum() / ms.sum()) * cluster.speed

    def _seed(self) -> None:
        p = self.params
        if p["use_hints"]:
            hinted = self._dedupe(self._dse(p["dse_top_k"]) + self._balanced_seeds())
            randoms = [self.space.random_genome(self.rng) for _ in range(p["random_seeds"])]
            self.population = self._dedupe(hinted + randoms)
            # the first live evaluation: of the DSE's best configs on the predictions, the one
            # expected to do best once the predictions' errors are accounted for
            first = self._robust_choice(hinted)
            self.queue = self._why([self.space.key(first)], "hints")
        else:
            pop = []
            for _ in range(p["population_size"] * 4):
                if len(pop) >= p["population_size"]:
                    break
                pop = self._dedupe(pop + [self.space.random_genome(self.rng)])
            self.population = []
            self.pending = pop
            self.queue = self._why([self.space.key(g) for g in pop], "random")
        self._queued_last = self._searched_last = True

    def _robust_choice(self, genomes: Sequence[Genome], samples: int = 64) -> Genome:
        """The genome with the best mean fps over tables drawn around the current estimate with
        each cell's uncertainty (errors shared by a unit across core counts, correlated across
        core types as learnt). Balanced pipelines whose every stage is near the bottleneck lose
        more to errors than their nominal figure says; this prefers robust ones."""
        if len(genomes) == 1:
            return genomes[0]
        est, sd = self.cost.estimate(), self.cost.uncertainty()
        rho = self.cost.learnt.get("rho", SurrogateTable.RHO_PRIOR)
        rng = np.random.default_rng([self.params["rng_seed"], self.evaluations, self.retunes])
        configs = [self.space.to_config(g) for g in genomes]
        base = self.surrogate()
        totals = np.zeros(len(genomes))
        n = self.n_units
        for _ in range(samples):
            shared = rng.standard_normal(n)
            drawn = {}
            for t, ms in est.predicted_ms.items():
                z = math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.standard_normal(n)
                drawn[t] = ms * np.exp(sd[t] * z[:, None])
            model = PipelineModel(UnitCostTable(drawn, est.out_bytes), self.current_clusters,
                                  interconnect_gbs=base.interconnect_gbs, contention=base.contention)
            totals += [model.fps(c) for c in configs]
        return genomes[int(np.argmax(totals))]

    def _dedupe(self, genomes: Sequence[Genome]) -> list[Genome]:
        seen, out = set(), []
        for g in genomes:
            key = self.space.key(g)
            if key not in seen:
                seen.add(key)
                out.append(g)
        return out

    def _fitness(self, genome: Genome, model: PipelineModel | None) -> float:
        key = self.space.key(genome)
        if key in self.measured:
            return self._mean(key)
        if model is None:
            return -1.0
        return model.fps(self.space.to_config(genome))

    def _tournament(self, pool: Sequence[Genome], k: int = 3) -> Genome:
        return max((self.rng.choice(pool) for _ in range(k)), key=lambda g: g.fitness.values[0])

    def _vary(self, pool: Sequence[Genome], n: int) -> list[Genome]:
        out = []
        while len(out) < n:
            a = self.space.clone(self._tournament(pool))
            b = self.space.clone(self._tournament(pool))
            if self.rng.random() < 0.5:
                self.space.crossover(a, b, self.rng)
            for child in (a, b):
                for _ in range(1 if self.rng.random() < 0.7 else 2):
                    self.space.mutate(child, self.rng)
                out.append(child)
        return out[:n]

    def noise(self) -> float:
        """Relative sd of fps measurements: pooled from repeated ones, the prior until there are."""
        ss, dof = 0.0, 0
        for vals in self.measured.values():
            if len(vals) > 1:
                rel = np.asarray(vals) / np.mean(vals)
                ss += float(((rel - 1.0) ** 2).sum())
                dof += len(vals) - 1
        prior_dof = 3
        return math.sqrt((ss + prior_dof * self.params["noise_prior"] ** 2) / (dof + prior_dof))

    def _elites_to_remeasure(self) -> list[str]:
        """The incumbent until it has ``min_best_samples`` measurements; then a race between it and
        the contenders whose mean is within 1.5 standard errors of its own (so luck does not
        decide; a contender measured once, within ``race_band`` too): each such contender gets
        ``min_best_samples`` measurements, and while still within noise, the one of the pair with
        fewer gets more, up to ``race_samples``."""
        best = self._best_key()
        if best is None:
            return []
        need = self.params["min_best_samples"]
        cap = max(need, self.params["race_samples"])
        n_best = len(self.measured[best])
        if n_best < need:
            return [best]
        top = self._mean(best)
        sd = self.noise()
        for key, vals in sorted(self.measured.items(), key=lambda kv: -np.mean(kv[1])):
            if key == best:
                continue
            gap = sd * math.sqrt(1.0 / len(vals) + 1.0 / n_best)
            # one window is one moment: on a shared machine a config can measure 15-20% off once
            # however steady the repeated ones were, so a single figure near the top is checked
            band = max(1.5 * gap, self.params["race_band"] if len(vals) == 1 else 0.0)
            if np.mean(vals) < top * (1.0 - band):
                continue
            if len(vals) < need:
                return [key]
            if min(len(vals), n_best) < cap:
                return [key] if len(vals) <= n_best else [best]
        return []

    def _generation(self) -> None:
        p = self.params
        self.generation += 1
        model = self.surrogate() if p["use_hints"] else None
        # survivors: population and last generation's candidates, measured fitness where known
        pool = self._dedupe(self.population + self.pending)
        if not p["use_hints"]:
            pool = [g for g in pool if self.space.key(g) in self.measured] or pool
        for g in pool:
            g.fitness.values = (self._fitness(g, model),)
        pool.sort(key=lambda g: g.fitness.values[0], reverse=True)
        self.population = pool[:p["population_size"]]
        confirm = self._bookkeep()
        if self.state == states.CONVERGED:
            return
        if not self.population:
            self.population = [self.space.random_genome(self.rng)]
            self.population[0].fitness.values = (self._fitness(self.population[0], model),)
        if p["use_hints"]:
            candidates = self._dedupe(self._dse(p["dse_top_k"]) + self._vary(self.population, p["offspring_size"]))
            for g in candidates:
                g.fitness.values = (self._fitness(g, model),)
            if confirm:
                chosen = self._why(confirm[:p["evals_per_generation"]], "confirm")
            else:
                chosen = self._choose(candidates, p["evals_per_generation"], model)
        else:
            candidates = self._dedupe(self._vary(self.population, p["offspring_size"]))
            chosen = self._why(self._elites_to_remeasure(), "re-measure")
            chosen += self._why([self.space.key(g) for g in candidates if self.space.key(g) not in self.measured],
                                "offspring")
        self.pending = candidates
        self.queue.extend(k for k in dict.fromkeys(chosen) if k not in self.queue)
        self._queued_last = bool(chosen)
        # re-measurements only firm up what is known: they do not use up the patience
        self._searched_last = any(self._reasons.get(k) != "re-measure" for k in chosen)

    def _choose(self, candidates: Sequence[Genome], room: int, model: PipelineModel) -> list[str]:
        """What to evaluate live, first rule that yields (see the module docstring):

        1. exploit: unmeasured candidates the surrogate expects to beat the incumbent by ``promise``
           (its surrogate estimate and, calibrated, its measured mean);
        2. re-measure the incumbent or a close contender (see _elites_to_remeasure);
        3. explore: of the candidates whose optimistic estimate beats the incumbent's own and
           whose mean estimate is at least ``explore_floor`` of the incumbent's, one that would
           identify a cluster's contention if any, else the best mean;
        4. refine: near-ties, mean estimate within ``near_tie`` of the incumbent's, best first
           (the surrogate cannot tell them apart; the stale patience bounds how many).
        """
        p = self.params
        if room <= 0:
            return []
        best = self._best_key()
        ref = model.fps(parse_config(best)) if best is not None else 0.0
        fresh = [g for g in candidates if self.space.key(g) not in self.measured]
        fresh.sort(key=lambda g: g.fitness.values[0], reverse=True)
        # to be worth it, a candidate must also beat what the incumbent measured (on the
        # surrogate's scale): a lucky measurement is re-measured before the search moves on
        bar = max(ref, self.estimates()[best] * self._calibration(model)) if best is not None else 0.0
        chosen = [self.space.key(g) for g in fresh
                  if g.fitness.values[0] >= p["promise"] * bar][:room]
        if chosen or best is None:
            return self._why(chosen, "exploit" if best is not None else "first")
        chosen = self._elites_to_remeasure()[:room]
        if chosen:
            return self._why(chosen, "re-measure")
        optimistic = self.optimistic_surrogate()
        keys = {self.space.key(g) for g in fresh}
        for g in self._dse(p["explore_top_k"], optimistic=True):
            if self.space.key(g) not in keys and self.space.key(g) not in self.measured:
                g.fitness.values = (self._fitness(g, model),)
                fresh.append(g)
        # optimism that the incumbent shares (its own measured cells) is no reason to explore
        bar = max(ref, optimistic.fps(parse_config(best))) * (1 + p["gain_threshold"])
        scored = []
        for g in fresh:
            if g.fitness.values[0] < p["explore_floor"] * ref:
                continue
            ucb = optimistic.fps(self.space.to_config(g))
            if ucb > bar:
                # first those that would teach the contention of a cluster not yet learnt, then
                # the safest of those that could win: best mean estimate first
                scored.append((self._teaches_contention(g), g.fitness.values[0], ucb, self.space.key(g)))
        scored.sort(reverse=True)
        if scored:
            return self._why([key for _teach, _mean, _ucb, key in scored[:room]], "explore")
        return self._why([self.space.key(g) for g in fresh if g.fitness.values[0] >= p["near_tie"] * ref][:room],
                         "near-tie")

    def _calibration(self, model: PipelineModel) -> float:
        """Median ratio surrogate / measured mean over the measured configs (1 = unbiased)."""
        ratios = [model.fps(parse_config(k)) / self._mean(k) for k in self.measured if self._mean(k) > 0]
        return float(np.median(ratios)) if ratios else 1.0

    def _teaches_contention(self, genome: Genome) -> bool:
        """Whether evaluating this config measures a cluster whose contention is not identified
        yet under a worker count not seen so far."""
        workers: dict[str, int] = {}
        for s in self.space.to_config(genome).stages:
            workers[s.cluster] = workers.get(s.cluster, 0) + s.replicas
        types = {c.name: c.core_type for c in self.clusters}
        return any(not self.cost.contention_identified(types[name]) and self.cost.workers_seen(types[name])
                   and w not in self.cost.workers_seen(types[name]) for name, w in workers.items())

    def _why(self, keys: list[str], reason: str) -> list[str]:
        for key in keys:
            self._reasons[key] = reason
        return keys

    def _unconfirmed(self) -> list[str]:
        """The ``confirm_top_k`` best configs on the surrogate (of the DSE's best, the population
        and the last offspring, measured or not) and the DSE's best of each of its
        ``confirm_top_k`` best layouts (stage structures), those the surrogate rates within
        ``confirm_floor`` of the incumbent and that were never evaluated live, best first."""
        p = self.params
        best = self._best_key()
        k = p["confirm_top_k"]
        if not p["use_hints"] or best is None or k <= 0:
            return []
        model = self.surrogate()
        floor = p["confirm_floor"] * model.fps(parse_config(best))
        dse_best = self._dse(max(p["dse_top_k"], k))
        dse = [self.space.key(g) for g in dse_best]
        rated = {}
        for g in dse_best + self.population + self.pending:
            rated.setdefault(self.space.key(g), model.fps(self.space.to_config(g)))
        top = sorted(rated, key=lambda key: -rated[key])[:k]
        wanted = dict.fromkeys(top + dse[:k])
        return sorted((key for key in wanted if key not in self.measured and rated[key] >= floor),
                      key=lambda key: -rated[key])

    def _bookkeep(self) -> list[str]:
        """Convergence: no gain for `patience` evaluating generations, or `idle_patience` idle ones,
        once the confirmation holds; returns what is left to confirm (see the module docstring)."""
        p = self.params
        best = self._best_key()
        current = self.estimates()[best] if best is not None else 0.0
        if current > self._ref_best * (1 + p["gain_threshold"]):
            self._ref_best = current
            self._stale = 0
        elif self._searched_last:
            self._stale += 1
        self._idle = 0 if self._queued_last else self._idle + 1
        needs_samples = bool(self._elites_to_remeasure())
        if best is not None and not needs_samples and (
                self._stale >= p["patience"] or self._idle >= p["idle_patience"]):
            confirm = self._unconfirmed()
            if confirm:
                return confirm
            self._converge()
        return []

    # -- checkpoint ------------------------------------------------------------------------------
    def to_state(self) -> dict:
        """Everything needed to resume, JSON-serialisable."""
        version, internal, gauss = self.rng.getstate()
        return {
            "version": STATE_VERSION,
            "params": dict(self.params),
            "clusters": [{"name": c.name, "core_type": c.core_type, "cores": c.cores, "speed": c.speed}
                         for c in self.clusters],
            "speeds": dict(self.speeds),
            "cost": self.cost.to_dict(),
            "state": self.state, "before_pin": self._before_pin, "pinned": self.pinned,
            "population": [[list(g) for g in ind] for ind in self.population],
            "pending": [[list(g) for g in ind] for ind in self.pending],
            "measured": {k: list(v) for k, v in self.measured.items()},
            "queue": list(self.queue),
            "history": [dict(h) for h in self.history],
            "evaluations": self.evaluations, "episode_evaluations": self.episode_evaluations,
            "episode_budget": self.episode_budget, "generation": self.generation,
            "retunes": self.retunes, "ref_best": self._ref_best, "stale": self._stale,
            "idle": self._idle, "queued_last": self._queued_last, "searched_last": self._searched_last,
            "dse_last": {k: list(v) for k, v in self._dse_last.items()},
            "reasons": dict(self._reasons),
            "verify": list(self._verify) if self._verify is not None else None,
            "rng": [version, list(internal), gauss],
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any], *, clock: Callable[[], float] | None = None) -> "Tuner":
        if data.get("version") != STATE_VERSION:
            raise TunerdError(f"tuner state version {data.get('version')!r} is not {STATE_VERSION}")
        try:
            cost = SurrogateTable.from_dict(data["cost"])
            clusters = [ClusterSpec(c["name"], c["core_type"], int(c["cores"]), float(c["speed"]))
                        for c in data["clusters"]]
            params = dict(data["params"])
            seed = params.pop("rng_seed")
            tuner = cls(clusters, cost.predicted, rng_seed=seed, clock=clock, **params)
            tuner.cost = cost
            tuner.speeds = {k: float(v) for k, v in data["speeds"].items()}
            tuner.state, tuner._before_pin, tuner.pinned = data["state"], data["before_pin"], data["pinned"]
            tuner.population = [tuner._genome(g) for g in data["population"]]
            tuner.pending = [tuner._genome(g) for g in data["pending"]]
            tuner.measured = {k: [float(x) for x in v] for k, v in data["measured"].items()}
            tuner.queue = list(data["queue"])
            tuner.history = [dict(h) for h in data["history"]]
            for name in ("evaluations", "episode_evaluations", "episode_budget", "generation", "retunes"):
                setattr(tuner, name, int(data[name]))
            tuner._ref_best, tuner._stale, tuner._idle = float(data["ref_best"]), int(data["stale"]), int(data["idle"])
            tuner._queued_last = bool(data["queued_last"])
            tuner._searched_last = bool(data["searched_last"])
            tuner._dse_last = {k: list(v) for k, v in data.get("dse_last", {}).items()}
            tuner._reasons = dict(data.get("reasons", {}))
            verify = data.get("verify")
            tuner._verify = (str(verify[0]), float(verify[1]), float(verify[2])) if verify else None
            version, internal, gauss = data["rng"]
            tuner.rng.setstate((version, tuple(internal), gauss))
        except (KeyError, TypeError, ValueError) as err:
            raise TunerdError(f"bad tuner state: {err!r}") from err
        return tuner

    def _genome(self, genes: Sequence[Sequence[int]]) -> Genome:
        return Genome([list(map(int, g)) for g in genes])
