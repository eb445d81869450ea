"""Where the tuner's candidates come from: the seeds, the DSE's proposals and the GA's offspring.

:class:`ProposalsMixin` gives :class:`tunerd.tuning.tuner.Tuner` its proposal sources: the first
population (the DSE on the predictions, FLOPs-balanced splits and random genomes, or random ones
alone without hints), the exact DSE re-run on the refined surrogate or its optimistic twin, and
tournament selection, crossover and mutation around the population, with the fitness they are
ranked by. Which of them get a live evaluation is :mod:`tunerd.tuning.choice`'s business.

A mixin rather than functions taking the tuner: these methods read and write much of the tuner's
state (its rng, whose draws must stay in the same order, its genome space, cost table, queue and
population) and the tuner and the choice call them as its own methods.
"""
from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np

from ..costs.table import UnitCostTable
from ..pipeconfig import ClusterSpec, PipelineConfig, Stage, parse_config
from .dse import explore, flops_balanced_split
from .genome import Genome, GenomeSpace
from .surrogate import SurrogateTable
from .throughput import PipelineModel

__all__ = ["ProposalsMixin"]


class ProposalsMixin:
    """The tuner's proposal sources (see the module docstring). Mixed into the Tuner, which also
    provides ``surrogate()``, ``optimistic_surrogate()``, ``current_clusters``, ``_mean()`` and
    ``_why()`` (from the choice)."""

    params: dict[str, Any]
    clusters: list[ClusterSpec]
    n_units: int
    space: GenomeSpace
    cost: SurrogateTable
    rng: random.Random
    population: list[Genome]
    pending: list[Genome]
    measured: dict[str, list[float]]
    queue: list[str]
    evaluations: int
    retunes: int

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

    def baseline(self) -> PipelineConfig:
        """The config without a pipeline across clusters a user would run: the whole model on the
        cluster the surrogate expects most of at the current speeds, on all its cores.

        NOTE: the surrogate, not the hints: after a retune it prices each cluster by the unit times
        its stages measured, scaled to the new speeds; on the hints alone a quick calibration's error
        once picked the slower cluster, and the gain was reported over the wrong baseline."""
        model = self.surrogate()
        singles = [PipelineConfig((Stage(0, self.n_units - 1, c.name, c.cores),)) for c in self.current_clusters]
        return max(singles, key=model.fps)

    def _queue_baseline(self) -> None:
        """Queue the baseline once per episode (after what is queued already), so that what tuning
        earned over it (Tuner.gain) is measured, not guessed; ``measure_baseline=False`` skips it."""
        if not self.params.get("measure_baseline", True) or self.n_units < 1:
            return
        key = self.space.key(self.space.from_config(self.baseline()))
        if key not in self.queue and key not in self.measured:
            self.queue.append(key)
            self._why([key], "baseline")

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
            self._queue_baseline()
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
