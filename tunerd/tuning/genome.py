"""Pipeline configs as DEAP genomes, with repair, mutations and crossover.

A genome is a list of stage genes ``[end, cluster_index, cores, replicas]`` in pipeline order:
``end`` is the exclusive end unit of the stage (so the cut positions are the ends but the last,
which is always ``n_units``). :meth:`GenomeSpace.repair` makes any such list a valid config
(non-empty in-range stages, at most ``max_stages``, every cluster's cores x replicas within the
cluster); every operator repairs what it touches, mutates in place and invalidates the fitness.
Randomness comes only from the ``random.Random`` passed in (DEAP's own operators use the global
``random`` module, so the ones here are written from scratch).
"""
from __future__ import annotations

import copy
import random
from typing import Any, Callable, Sequence

from deap import base, creator

from ..errors import ConfigError
from ..pipeconfig import ClusterSpec, PipelineConfig, Stage, as_cluster_specs

__all__ = ["Genome", "GenomeSpace", "genome_to_config", "config_to_genome"]

# NOTE: DEAP's creator puts classes in a module-global namespace; create them once, here only.
if not hasattr(creator, "TunerdFitness"):
    creator.create("TunerdFitness", base.Fitness, weights=(1.0,))
if not hasattr(creator, "TunerdGenome"):
    creator.create("TunerdGenome", list, fitness=creator.TunerdFitness)

Genome = creator.TunerdGenome

END, CLUSTER, CORES, REPLICAS = range(4)


def _invalidate(ind: Any) -> None:
    fitness = getattr(ind, "fitness", None)
    if fitness is not None and fitness.valid:
        del fitness.values


class GenomeSpace:
    """The genome layout for one model (``n_units``) and cluster set, with its operators."""

    def __init__(self, clusters: Sequence[Any], n_units: int, max_stages: int | None = None) -> None:
        self.clusters: list[ClusterSpec] = as_cluster_specs(clusters)
        if n_units < 1:
            raise ConfigError(f"n_units must be >= 1, got {n_units}")
        self.n_units = int(n_units)
        total = sum(c.cores for c in self.clusters)
        self.max_stages = min(total, self.n_units, max_stages if max_stages else total)
        self.index = {c.name: i for i, c in enumerate(self.clusters)}
        self.caps = [c.cores for c in self.clusters]
        self.mutations: list[tuple[Callable[[Any, random.Random], Any], float]] = [
            (self.mut_shift_cut, 3.0), (self.mut_split, 1.0), (self.mut_merge, 1.0),
            (self.mut_move_core, 2.0), (self.mut_change_cluster, 1.0), (self.mut_replica, 2.0),
        ]

    # -- conversions -----------------------------------------------------------------------------
    def to_config(self, genome: Sequence[Sequence[int]]) -> PipelineConfig:
        stages, start = [], 0
        for end, ci, cores, reps in genome:
            stages.append(Stage(start, int(end) - 1, self.clusters[ci].name, int(cores), int(reps)))
            start = int(end)
        return PipelineConfig(tuple(stages))

    def from_config(self, config: PipelineConfig) -> Genome:
        try:
            genes = [[s.last + 1, self.index[s.cluster], s.cores, s.replicas] for s in config.stages]
        except KeyError as err:
            raise ConfigError(f"unknown cluster {err.args[0]!r} in {config}") from None
        ind = Genome(genes)
        self.repair(ind)
        return ind

    def key(self, genome: Sequence[Sequence[int]]) -> str:
        return str(self.to_config(genome))

    # -- construction ----------------------------------------------------------------------------
    def random_genome(self, rng: random.Random) -> Genome:
        n_stages = rng.randint(1, min(self.max_stages, 4))
        ends = sorted(rng.sample(range(1, self.n_units), n_stages - 1)) + [self.n_units]
        genes = []
        for end in ends:
            ci = rng.randrange(len(self.clusters))
            cap = self.caps[ci]
            cores = rng.randint(1, cap)
            reps = rng.randint(1, max(1, cap // cores))
            genes.append([end, ci, cores, reps])
        ind = Genome(genes)
        self.repair(ind)
        return ind

    # -- repair ----------------------------------------------------------------------------------
    def repair(self, ind: list) -> list:
        """Make ``ind`` a valid genome in place (and return it)."""
        n, nc = self.n_units, len(self.clusters)
        genes = [[int(g[END]), int(g[CLUSTER]) % nc, int(g[CORES]), int(g[REPLICAS])] for g in ind]
        if not genes:
            genes = [[n, 0, self.caps[0], 1]]
        for g in genes:
            cap = self.caps[g[CLUSTER]]
            g[CORES] = min(max(1, g[CORES]), cap)
            g[REPLICAS] = min(max(1, g[REPLICAS]), cap // g[CORES])
            g[END] = min(max(1, g[END]), n)
        # ends strictly increasing, the last one n: drop stages left empty
        genes.sort(key=lambda g: g[END])
        kept: list[list[int]] = []
        for g in genes:
            if kept and g[END] <= kept[-1][END]:
                continue
            kept.append(g)
        kept[-1][END] = n
        genes = kept
        while len(genes) > self.max_stages:
            self._merge_at(genes, min(range(len(genes) - 1), key=lambda i: self._span(genes, i)))
        self._fit_cores(genes)
        ind[:] = genes
        _invalidate(ind)
        return ind

    @staticmethod
    def _span(genes: list, i: int) -> int:
        start = genes[i - 1][END] if i else 0
        return genes[i][END] - start

    @staticmethod
    def _merge_at(genes: list, i: int) -> None:
        """Merge stage i with stage i+1 (keeping stage i+1's allocation)."""
        del genes[i]

    def _used(self, genes: list) -> list[int]:
        used = [0] * len(self.clusters)
        for g in genes:
            used[g[CLUSTER]] += g[CORES] * g[REPLICAS]
        return used

    def _fit_cores(self, genes: list) -> None:
        while True:
            used = self._used(genes)
            over = [ci for ci in range(len(self.clusters)) if used[ci] > self.caps[ci]]
            if not over:
                return
            ci = over[0]
            on = [g for g in genes if g[CLUSTER] == ci]
            big = max(on, key=lambda g: (g[CORES] * g[REPLICAS], g[CORES]))
            if big[REPLICAS] > 1:
                big[REPLICAS] -= 1
            elif big[CORES] > 1:
                big[CORES] -= 1
            else:
                # every stage here is 1 core x 1: move one elsewhere, or merge it with a neighbour
                free = [c for c in range(len(self.clusters)) if self.caps[c] - used[c] > 0]
                victim = on[-1]
                if free:
                    victim[CLUSTER] = max(free, key=lambda c: self.caps[c] - used[c])
                else:
                    i = genes.index(victim)
                    if i + 1 < len(genes):
                        del genes[i]
                    else:
                        genes[i - 1][END] = genes[i][END]
                        del genes[i]

    # -- mutations (in place; each repairs and invalidates) ---------------------------------------
    def mutate(self, ind: list, rng: random.Random) -> tuple[list]:
        ops, weights = zip(*self.mutations)
        rng.choices(ops, weights=weights)[0](ind, rng)
        return (ind,)

    def mut_shift_cut(self, ind: list, rng: random.Random) -> tuple[list]:
        """Move one cut by a few units (mostly one)."""
        if len(ind) >= 2:
            i = rng.randrange(len(ind) - 1)
            lo = (ind[i - 1][END] if i else 0) + 1
            hi = ind[i + 1][END] - 1
            step = rng.choice((-1, 1)) * (1 if rng.random() < 0.6 else rng.randint(2, 4))
            ind[i][END] = min(max(ind[i][END] + step, lo), hi)
        return (self.repair(ind),)

    def mut_split(self, ind: list, rng: random.Random) -> tuple[list]:
        """Split a stage of 2+ units in two; the new half goes where cores are free."""
        cands = [i for i in range(len(ind)) if self._span(ind, i) >= 2]
        if cands and len(ind) < self.max_stages:
            i = rng.choice(cands)
            start = ind[i - 1][END] if i else 0
            cut = rng.randint(start + 1, ind[i][END] - 1)
            g = ind[i]
            used = self._used(ind)
            free = [c for c in range(len(self.clusters)) if self.caps[c] > used[c]]
            if free:
                ci = rng.choice(free)
                new = [cut, ci, rng.randint(1, self.caps[ci] - used[ci]), 1]
            elif g[CORES] > 1:
                half = g[CORES] // 2
                g[CORES] -= half
                new = [cut, g[CLUSTER], half, g[REPLICAS]]
            elif g[REPLICAS] > 1:
                half = g[REPLICAS] // 2
                g[REPLICAS] -= half
                new = [cut, g[CLUSTER], 1, half]
            else:
                new = [cut, g[CLUSTER], 1, 1]  # repair moves or merges it
            if rng.random() < 0.5:
                ind.insert(i, new)
            else:  # the new allocation takes the second half instead
                new[END], ind[i][END] = ind[i][END], cut
                ind.insert(i + 1, new)
        return (self.repair(ind),)

    def mut_merge(self, ind: list, rng: random.Random) -> tuple[list]:
        """Merge two neighbouring stages; the merged stage keeps one allocation, grown by the
        other's cores when both are on the same cluster."""
        if len(ind) >= 2:
            i = rng.randrange(len(ind) - 1)
            a, b = ind[i], ind[i + 1]
            keep, other = (list(a), b) if rng.random() < 0.5 else (list(b), a)
            if a[CLUSTER] == b[CLUSTER] and keep[REPLICAS] == 1:
                keep[CORES] = min(self.caps[keep[CLUSTER]], keep[CORES] + other[CORES] * other[REPLICAS])
            keep[END] = b[END]
            ind[i:i + 2] = [keep]
        return (self.repair(ind),)

    def mut_move_core(self, ind: list, rng: random.Random) -> tuple[list]:
        """Give a stage one more core (per replica), taken from idle cores or another stage of
        its cluster; or, the other way round, take one from it."""
        i = rng.randrange(len(ind))
        g = ind[i]
        ci, cap = g[CLUSTER], self.caps[g[CLUSTER]]
        if rng.random() < 0.7 and g[CORES] + 1 <= cap // g[REPLICAS]:
            need = g[REPLICAS]
            free = cap - self._used(ind)[ci]
            donors = [d for d in ind if d is not g and d[CLUSTER] == ci]
            rng.shuffle(donors)
            for d in donors:
                while free < need and d[CORES] * d[REPLICAS] > 1:
                    if d[CORES] > 1:
                        d[CORES] -= 1
                        free += d[REPLICAS]
                    else:
                        d[REPLICAS] -= 1
                        free += d[CORES]
            if free >= need:
                g[CORES] += 1
        else:
            if g[CORES] > 1:
                g[CORES] -= 1
            elif g[REPLICAS] > 1:
                g[REPLICAS] -= 1
            others = [d for d in ind if d is not g and d[CLUSTER] == ci and d[REPLICAS] == 1]
            if others:
                rng.choice(others)[CORES] += 1  # repair trims it if that was too much
        return (self.repair(ind),)

    def mut_change_cluster(self, ind: list, rng: random.Random) -> tuple[list]:
        """Move a stage to another cluster, on as many of its free cores as possible."""
        if len(self.clusters) >= 2:
            g = rng.choice(ind)
            ci = rng.choice([c for c in range(len(self.clusters)) if c != g[CLUSTER]])
            g[CLUSTER] = ci
            free = self.caps[ci] - self._used([d for d in ind if d is not g])[ci]
            g[CORES] = max(1, min(free, self.caps[ci]))
            g[REPLICAS] = 1
        return (self.repair(ind),)

    def mut_replica(self, ind: list, rng: random.Random) -> tuple[list]:
        """Add or remove a replica of a stage, or reshape cores x replicas (4x1 <-> 2x2 <-> 1x4)."""
        g = rng.choice(ind)
        ci, cap = g[CLUSTER], self.caps[g[CLUSTER]]
        free = cap - self._used(ind)[ci]
        roll = rng.random()
        if roll < 0.4 and free >= g[CORES]:
            g[REPLICAS] += 1
        elif roll < 0.7 and g[REPLICAS] > 1:
            g[REPLICAS] -= 1
        else:
            total = g[CORES] * g[REPLICAS]
            shapes = [(k, total // k) for k in range(1, total + 1)
                      if total % k == 0 and (k, total // k) != (g[CORES], g[REPLICAS])]
            if shapes:
                g[CORES], g[REPLICAS] = rng.choice(shapes)
            elif free >= g[CORES]:
                g[REPLICAS] += 1
        return (self.repair(ind),)

    # -- crossover -------------------------------------------------------------------------------
    def crossover(self, a: list, b: list, rng: random.Random) -> tuple[list, list]:
        """Cut-point crossover (units before a random boundary from one parent, after it from the
        other) or, half the time, uniform exchange of the allocations of same-index stages."""
        if rng.random() < 0.5 and self.n_units >= 2:
            x = rng.randint(1, self.n_units - 1)
            head_a, tail_a = self._split_at(a, x)
            head_b, tail_b = self._split_at(b, x)
            a[:], b[:] = head_a + tail_b, head_b + tail_a
        else:
            for ga, gb in zip(a, b):
                if rng.random() < 0.5:
                    ga[CLUSTER:], gb[CLUSTER:] = gb[CLUSTER:], ga[CLUSTER:]
        self.repair(a)
        self.repair(b)
        return a, b

    @staticmethod
    def _split_at(ind: list, x: int) -> tuple[list, list]:
        head, tail = [], []
        for g in ind:
            if g[END] <= x:
                head.append(list(g))
            else:
                if not head or head[-1][END] < x:
                    head.append([x] + list(g[1:]))
                tail.append(list(g))
        return head, tail

    def clone(self, ind: list) -> Genome:
        return copy.deepcopy(ind)


def genome_to_config(genome: Sequence[Sequence[int]], clusters: Sequence[Any]) -> PipelineConfig:
    """The config a genome stands for (``clusters`` in the order the genome indexes them)."""
    specs = as_cluster_specs(clusters)
    n_units = int(genome[-1][END]) if genome else 0
    return GenomeSpace(specs, max(n_units, 1)).to_config(genome)


def config_to_genome(config: PipelineConfig, clusters: Sequence[Any]) -> Genome:
    return GenomeSpace(clusters, config.n_units).from_config(config)
