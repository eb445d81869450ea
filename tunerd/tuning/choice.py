"""Which candidates the tuner evaluates live, what it re-measures, and when the search has converged.

:class:`ChoiceMixin` gives :class:`tunerd.tuning.tuner.Tuner` the rules of its module docstring: exploit
a candidate expected to beat the incumbent, else race the incumbent against the contenders within
noise of it, else explore on the optimistic surrogate, else refine a near-tie; and the bookkeeping
of convergence (patience, idleness and the confirmation of the surrogate's best configs). Each chosen
config is recorded with the reason it was chosen, which the history shows.

A mixin rather than functions taking the tuner: the rules read the tuner's measurements, params and
proposals throughout and the tuner's generation loop calls them as its own methods.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..pipeconfig import ClusterSpec, parse_config
from .genome import Genome, GenomeSpace
from .surrogate import SurrogateTable
from .throughput import PipelineModel

__all__ = ["ChoiceMixin"]


class ChoiceMixin:
    """The tuner's choice of live evaluations and its convergence test (see the module docstring).
    Mixed into the Tuner, which also provides ``surrogate()``, ``optimistic_surrogate()``,
    ``estimates()``, ``noise()``, ``_best_key()``, ``_mean()``, ``_converge()``, and ``_dse()`` and
    ``_fitness()`` (from the proposals)."""

    params: dict[str, Any]
    clusters: list[ClusterSpec]
    space: GenomeSpace
    cost: SurrogateTable
    population: list[Genome]
    pending: list[Genome]
    measured: dict[str, list[float]]
    _reasons: dict[str, str]
    _ref_best: float
    _stale: int
    _idle: int
    _queued_last: bool
    _searched_last: bool

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
