"""The online tuner: a DEAP genetic search seeded with compile-time hints, driven ask/tell.

The daemon (or the simulator) drives it one evaluation at a time, so it never blocks::

    config = tuner.ask()            # None: nothing to evaluate now (converged, pinned, ...)
    ...run config for a measurement window...
    tuner.tell(config, fps, unit_times=per_unit_ms)

What makes it evaluate few, well-chosen configs:

- a **surrogate cost table** (:class:`~tunerd.tuning.surrogate.SurrogateTable`) of running
  mean/variance of measured ms per (unit, core type, cores), starting from the hints' predictions.
  It is the **surrogate**. Unmeasured cells borrow, in log ratio measured/predicted, what was
  learnt about the same unit at other core counts, else about the unit on other core types (shrunk
  by the correlation of units' errors across core types, learnt from the data) plus the core
  type's overall bias. Measurements are kept apart by how many workers shared the cluster, so the
  bandwidth contention is learnt too;
- each generation re-runs the exact DSE (:mod:`tunerd.tuning.dse`) on the refined table, the strongest
  proposal source, and adds GA offspring (select, crossover, mutate, repair) around the population;
- candidates are ranked by the surrogate; live evaluation goes, in this order, to one expected to
  beat the incumbent by ``promise``; else to a re-measurement of the incumbent or a contender
  within noise of it (measurements are cached per config and averaged, so a lucky noisy one does
  not stick; the incumbent is chosen on its mean measured fps combined with the surrogate's
  figure, which averages many unit timings); else to the best **optimistic** candidate (every
  cell ``explore_kappa`` standard deviations faster; the DSE on that optimistic table proposes
  too) if it could beat the incumbent and its mean estimate is within ``explore_floor`` of it;
  else to a near-tie (see :meth:`~tunerd.tuning.choice.ChoiceMixin._choose`).

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

This module holds the Tuner's state, its ask/tell protocol, the generation loop and the checkpoint
(``to_state``/``from_state``, next to ``__init__`` because both must name every attribute). The
surrogate is :mod:`tunerd.tuning.surrogate`; where candidates come from (seeds, DSE, GA offspring),
:mod:`tunerd.tuning.proposals`; which are evaluated live and when the search stops,
:mod:`tunerd.tuning.choice`.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import states
from ..costs.table import UnitCostTable
from ..errors import ConfigError, TunerdError
from .choice import ChoiceMixin
from .genome import Genome, GenomeSpace
from ..pipeconfig import ClusterSpec, PipelineConfig, as_cluster_specs, parse_config, validate
from .proposals import ProposalsMixin
from .surrogate import SurrogateTable
from .throughput import PipelineModel

__all__ = ["Tuner", "STATE_VERSION"]

STATE_VERSION = 1
HISTORY_KEPT = 5000     # evaluations the history (and the state file) keeps: the last ones


class Tuner(ProposalsMixin, ChoiceMixin):
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
                 measure_baseline: bool = True,
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
            measure_baseline=bool(measure_baseline),
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

    def gain(self, config: PipelineConfig | str | None = None) -> dict | None:
        """What tuning earned: ``config``'s mean measured fps (default: the incumbent) over the best
        measured single-cluster config (every stage on one cluster: what a user gets without a
        pipeline across clusters). None until both are measured; like every measured figure, the
        baseline is forgotten on a retune (it was measured at the old speeds) until measured again."""
        key = str(parse_config(config) if isinstance(config, str) else config) if config is not None \
            else self._best_key()
        if key is None or key not in self.measured:
            return None
        single = [k for k in self.measured if len({s.cluster for s in parse_config(k).stages}) == 1]
        if not single:
            return None
        base = max(single, key=lambda k: (self._mean(k), len(self.measured[k])))
        fps, base_fps = self._mean(key), self._mean(base)
        return {"config": key, "fps": fps, "single_cluster": {"config": base, "fps": base_fps},
                "ratio": fps / base_fps if base_fps > 0 else None}

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
        del self.history[:-HISTORY_KEPT]        # a daemon that retunes for months keeps the recent ones
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
        names to their speed relative to nominal (0.6 = 60% of the cluster's own clock); clusters
        not named keep theirs. With no factors (throughput drift), just search again. Before the
        first search (idle, or pinned before any) only the speeds change; while pinned the search
        starts on unpin."""
        for name, factor in (speed_factors or {}).items():
            if name not in self.speeds:
                raise ConfigError(f"unknown cluster {name!r} (clusters: {', '.join(self.speeds)})")
            if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
                raise ConfigError(f"speed factor for {name!r} must be > 0, got {factor!r}")
            self.speeds[name] = float(factor) * next(c.speed for c in self.clusters if c.name == name)
        self._model = self._optimistic_model = self._estimates_cache = None
        if self.state == states.IDLE or (self.state == states.PINNED and self._before_pin == states.IDLE):
            # NOTE: no search has started: the first one runs at the new speeds with its full budget
            return
        self.cost.soften(1)
        self.measured, self.queue, self.pending = {}, [], []
        self._reasons.clear()       # why each queued config was queued: the queue is gone
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
        self._queue_baseline()

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

    def _converge(self) -> None:
        self.state = states.CONVERGED
        self.queue = []

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
