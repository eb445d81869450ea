"""Design-space exploration (Pipe-it style) on a unit cost table.

A **layout** is the ordered list of stages as (cluster, cores, replicas), with each cluster's
cores x replicas summed over its stages within the cluster. For a layout, the contiguous split of
the units that minimises the bottleneck period is found exactly by dynamic programming:

    g_j[e] = min over s < e of max(g_{j-1}[s], period of stage j over units s..e-1)

one vectorised numpy step per stage. Layouts are enumerated depth first so that layouts sharing a
prefix share its DP steps, with branch and bound: a prefix is dropped when a lower bound on any
completion (its own DP vector combined with a work/capacity bound on the remaining units) cannot
beat the k-th best found so far. The result is exact: nothing that could enter the top k is pruned.
With bandwidth contention (a stage's slowdown depends on how many workers its cluster ends up
with) prefixes are costed with the workers placed so far, a lower bound, and complete layouts
are re-split exactly; ``seeds`` (e.g. the previous results) only make the bound bite sooner.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..costs.table import UnitCostTable
from ..errors import ConfigError
from ..pipeconfig import ClusterSpec, PipelineConfig, Stage, as_cluster_specs
from .throughput import PipelineModel

__all__ = [
    "DseResult", "Layout", "stage_options", "enumerate_layouts", "best_split", "explore",
    "best_config", "exhaustive_optimum", "flops_balanced_split", "min_bottleneck_split",
    "DEFAULT_MAX_STAGES",
]

DEFAULT_MAX_STAGES = 6

# (cluster name, cores, replicas) per stage, in pipeline order.
Layout = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class DseResult:
    config: PipelineConfig
    fps: float

    @property
    def period_ms(self) -> float:
        return 1000.0 / self.fps


def stage_options(cores: int) -> list[tuple[int, int]]:
    """(cores, replicas) pairs fitting ``cores`` cores, largest footprint first."""
    opts = [(k, r) for k in range(1, cores + 1) for r in range(1, cores // k + 1)]
    return sorted(opts, key=lambda kr: (-kr[0] * kr[1], -kr[0]))


def _default_max_stages(clusters: Sequence[ClusterSpec], n_units: int, max_stages: int | None) -> int:
    total = sum(c.cores for c in clusters)
    limit = min(total, DEFAULT_MAX_STAGES) if max_stages is None else int(max_stages)
    if limit < 1:
        raise ConfigError(f"max_stages must be >= 1, got {max_stages}")
    return min(limit, total, n_units)


def enumerate_layouts(clusters: Sequence[Any], max_stages: int) -> Iterator[Layout]:
    """Every layout of 1..max_stages stages (for tests and small boards; the DSE does not use it)."""
    specs = as_cluster_specs(clusters)
    opts = [(c.name, k, r) for c in specs for k, r in stage_options(c.cores)]
    caps = {c.name: c.cores for c in specs}

    def rec(prefix: list, used: dict) -> Iterator[Layout]:
        if prefix:
            yield tuple(prefix)
        if len(prefix) == max_stages:
            return
        for name, k, r in opts:
            if used.get(name, 0) + k * r <= caps[name]:
                used[name] = used.get(name, 0) + k * r
                prefix.append((name, k, r))
                yield from rec(prefix, used)
                prefix.pop()
                used[name] -= k * r

    yield from rec([], {})


def _dp_step(g_prev: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.maximum(g_prev[:, None], cost)
    arg = m.argmin(axis=0)
    return m[arg, np.arange(m.shape[1])], arg


def _config_from_args(layout: Sequence[tuple[str, int, int]], args: Sequence[np.ndarray], n: int) -> PipelineConfig:
    ends = [n]
    for arg in reversed(args[1:]):
        ends.append(int(arg[ends[-1]]))
    ends.reverse()
    starts = [0] + ends[:-1]
    return PipelineConfig(tuple(Stage(s, e - 1, name, k, r)
                                for (name, k, r), s, e in zip(layout, starts, ends)))


def min_bottleneck_split(costs: Sequence[np.ndarray]) -> tuple[float, list[int]]:
    """Exact min-max contiguous split given each stage's cost matrix ``C[s, e]`` (units s..e-1).

    Returns the bottleneck and the stage boundaries ``[0, e1, ..., n]``.
    """
    n1 = costs[0].shape[0]
    g = np.full(n1, np.inf)
    g[0] = 0.0
    args = []
    for cost in costs:
        g, arg = _dp_step(g, cost)
        args.append(arg)
    bounds = [n1 - 1]
    for arg in reversed(args):
        bounds.append(int(arg[bounds[-1]]))
    return float(g[n1 - 1]), bounds[::-1]


def best_split(model: PipelineModel, layout: Layout) -> DseResult | None:
    """The exact min-bottleneck split of the units for one layout (None if it cannot hold them)."""
    n = model.n_units
    if len(layout) > n:
        return None
    workers: dict[str, int] = {}
    for name, _k, r in layout:
        workers[name] = workers.get(name, 0) + r
    factors = {name: 1.0 + model.contention.get(name, 0.0) * (w - 1) for name, w in workers.items()}
    costs = [model.cost_matrix(name, k, r, i + 1 < len(layout) and layout[i + 1][0] != name,
                               factors[name])
             for i, (name, k, r) in enumerate(layout)]
    period, bounds = min_bottleneck_split(costs)
    if not np.isfinite(period):
        return None
    config = PipelineConfig(tuple(Stage(s, e - 1, name, k, r)
                                  for (name, k, r), s, e in zip(layout, bounds[:-1], bounds[1:])))
    return DseResult(config, 1000.0 / period)


class _Search:
    """Depth-first branch and bound over layouts, sharing DP steps between common prefixes.

    With contention, a stage's slowdown depends on the workers its cluster ends up with, which a
    prefix does not know yet: the DFS costs each stage with the workers placed so far (never more
    than the final count, so its DP values are lower bounds), and a complete layout whose bound
    could still enter the top k is re-split exactly with its true factors.
    """

    def __init__(self, model: PipelineModel, max_stages: int, top_k: int, max_replicas: int | None = None) -> None:
        self.model = model
        self.n = model.n_units
        self.specs = list(model.clusters.values())
        self.max_stages = max_stages
        self.top_k = top_k
        self.alpha = {c.name: model.contention.get(c.name, 0.0) for c in self.specs}
        self.max_replicas = max_replicas
        self.opts = {c.name: [(k, r) for k, r in stage_options(c.cores) if max_replicas is None or r <= max_replicas]
                     for c in self.specs}
        self._cost_cache: dict = {}
        self.heap: list = []  # (-period, tiebreak, config): the worst of the top k on top
        self._count = itertools.count()
        self._bounds_cache: dict = {}
        self._placed: list[int] = []  # workers each earlier stage of the prefix was costed with
        self._in_heap: set[PipelineConfig] = set()
        self._threshold = np.inf
        self._children_cache: dict = {}
        self._prepare_bounds()

    def _prepare_bounds(self) -> None:
        # Per cluster: per-unit minimal core-ms (k x ms on k cores) and minimal single-unit period.
        self._core_ms = {}
        self._unit_min = {}
        for c in self.specs:
            ms = self.model.table.predicted_ms[c.core_type][:, :c.cores] / c.speed
            k = np.arange(1, c.cores + 1)
            self._core_ms[c.name] = (ms * k[None, :]).min(axis=1)
            per = np.stack([ms[:, kk - 1] / r for kk, r in self.opts[c.name]], axis=1)
            self._unit_min[c.name] = per.min(axis=1)

    def _suffix_bound(self, mask: tuple[str, ...], free_cores: int) -> np.ndarray:
        """Lower bound on the bottleneck of covering units e..n-1 with clusters ``mask``."""
        key = (mask, free_cores)
        hit = self._bounds_cache.get(key)
        if hit is not None:
            return hit
        n = self.n
        bound = np.full(n + 1, np.inf)
        bound[n] = 0.0
        if mask and free_cores > 0:
            core_ms = np.min([self._core_ms[m] for m in mask], axis=0)
            unit_min = np.min([self._unit_min[m] for m in mask], axis=0)
            work = np.concatenate([np.cumsum(core_ms[::-1])[::-1], [0.0]]) / free_cores
            worst = np.concatenate([np.maximum.accumulate(unit_min[::-1])[::-1], [0.0]])
            bound[:n] = np.maximum(work, worst)[:n]
        self._bounds_cache[key] = bound
        return bound

    def _cost(self, name: str, k: int, r: int, transfer: bool, workers: int) -> np.ndarray:
        factor = 1.0 + self.alpha[name] * (workers - 1)
        key = (name, k, r, transfer, factor)
        hit = self._cost_cache.get(key)
        if hit is None:
            hit = self.model.cost_matrix(name, k, r, transfer, factor)
            self._cost_cache[key] = hit
        return hit

    def threshold(self) -> float:
        return self._threshold

    def _push(self, period: float, config: PipelineConfig) -> None:
        if config in self._in_heap:
            return
        item = (-period, next(self._count), config)
        self._in_heap.add(config)
        if len(self.heap) < self.top_k:
            heapq.heappush(self.heap, item)
        else:
            self._in_heap.discard(heapq.heapreplace(self.heap, item)[2])
        if len(self.heap) >= self.top_k:
            self._threshold = -self.heap[0][0]

    def seed(self, configs: Sequence[PipelineConfig]) -> None:
        """Start from the exact best splits of these configs' layouts (a warm start: a good
        threshold early makes the bound bite at once; exactness does not depend on it)."""
        for config in configs:
            layout = tuple((s.cluster, s.cores, s.replicas) for s in config.stages)
            if len(layout) > self.max_stages or any(name not in self.alpha for name, _k, _r in layout):
                continue
            if self.max_replicas is not None and any(r > self.max_replicas for _n, _k, r in layout):
                continue
            r = best_split(self.model, layout)
            if r is not None:
                self._push(r.period_ms, r.config)

    def _offer(self, bound: float, layout: list, args: list, workers: dict, exact: bool) -> None:
        if not bound < self._threshold:  # also rejects inf and nan
            return
        if exact:
            self._push(bound, _config_from_args(layout, args, self.n))
            return
        costs = [self._cost(name, k, r, i + 1 < len(layout) and layout[i + 1][0] != name, workers[name])
                 for i, (name, k, r) in enumerate(layout)]
        period, bounds = min_bottleneck_split(costs)
        if np.isfinite(period) and period < self.threshold():
            self._push(period, PipelineConfig(tuple(
                Stage(s, e - 1, name, k, r) for (name, k, r), s, e in zip(layout, bounds[:-1], bounds[1:]))))

    def run(self) -> None:
        g0 = np.full(self.n + 1, np.inf)
        g0[0] = 0.0
        free = {c.name: c.cores for c in self.specs}
        workers = {c.name: 0 for c in self.specs}
        for child in self._children(free, 0):
            self._visit(g0, child, [], [], free, workers)

    def _children(self, free: dict, depth: int) -> list[tuple[str, int, int]]:
        if depth >= self.max_stages or depth >= self.n:
            return []
        key = tuple(free.values())
        hit = self._children_cache.get(key)
        if hit is None:
            hit = self._children_cache[key] = [(c.name, k, r) for c in self.specs for k, r in self.opts[c.name]
                                               if k * r <= free[c.name]]
        return hit

    def _visit(self, g_prev: np.ndarray, stage: tuple[str, int, int], layout: list, args: list,
               free: dict, workers: dict) -> None:
        name, k, r = stage
        free[name] -= k * r
        workers[name] += r
        layout.append(stage)
        try:
            w = workers[name]
            g_same, arg_same = _dp_step(g_prev, self._cost(name, k, r, False, w))
            # terminal: this stage is the last one. Exact unless an earlier stage on a cluster
            # got more workers after it was costed.
            exact = all(workers[s[0]] == wk or not self.alpha[s[0]] for s, wk in zip(layout, self._placed))
            if g_same[self.n] < self._threshold:
                args.append(arg_same)
                self._offer(float(g_same[self.n]), layout, args, workers, exact)
                args.pop()
            children = self._children(free, len(layout))
            if not children:
                return
            mask = tuple(m for m, f in free.items() if f > 0)
            bound = self._suffix_bound(mask, sum(free.values()))
            # completions have at least one more stage: g at a cut e < n, then the suffix
            lower = float(np.maximum(g_same[:self.n], bound[:self.n]).min())
            if lower >= self._threshold:
                return
            g_other = arg_other = None
            for child in children:
                if child[0] == name:
                    g, arg = g_same, arg_same
                else:
                    if g_other is None:
                        g_other, arg_other = _dp_step(g_prev, self._cost(name, k, r, True, w))
                    g, arg = g_other, arg_other
                if float(g[:self.n].min()) >= self._threshold:
                    continue
                args.append(arg)
                self._placed.append(w)
                self._visit(g, child, layout, args, free, workers)
                self._placed.pop()
                args.pop()
        finally:
            layout.pop()
            free[name] += k * r
            workers[name] -= r

    def results(self) -> list[DseResult]:
        items = sorted(self.heap, key=lambda it: (-it[0], it[1]))
        return [DseResult(cfg, 1000.0 / -neg) for neg, _i, cfg in items]


def _model(table: UnitCostTable | PipelineModel, clusters: Sequence[Any] | None,
           interconnect_gbs: float | None, contention: Mapping[str, float] | None) -> PipelineModel:
    if isinstance(table, PipelineModel):
        return table
    if clusters is None:
        raise ConfigError("clusters are required with a cost table")
    return PipelineModel(table, clusters, interconnect_gbs=interconnect_gbs, contention=contention)


def explore(table: UnitCostTable | PipelineModel, clusters: Sequence[Any] | None = None, *,
            interconnect_gbs: float | None = None, contention: Mapping[str, float] | None = None,
            max_stages: int | None = None, top_k: int = 1,
            seeds: Sequence[PipelineConfig] = (), max_replicas: int | None = None) -> list[DseResult]:
    """The ``top_k`` best distinct configs (best first), each with its exact best split.

    ``max_stages`` defaults to the total number of cores, capped at DEFAULT_MAX_STAGES. ``seeds``
    (e.g. the previous call's results) only speed the search up. ``max_replicas=1`` leaves out
    replicated stages (Pipe-it's space: stages on disjoint core sets, no frame-level co-execution).
    """
    model = _model(table, clusters, interconnect_gbs, contention)
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    specs = list(model.clusters.values())
    limit = _default_max_stages(specs, model.n_units, max_stages)
    if max_replicas is not None and max_replicas < 1:
        raise ConfigError(f"max_replicas must be >= 1, got {max_replicas}")
    search = _Search(model, limit, top_k, max_replicas)
    search.seed(seeds)
    search.run()
    return search.results()


def best_config(table: UnitCostTable | PipelineModel, clusters: Sequence[Any] | None = None,
                **kwargs: Any) -> DseResult:
    return explore(table, clusters, top_k=1, **kwargs)[0]


def exhaustive_optimum(table: UnitCostTable | PipelineModel, clusters: Sequence[Any] | None = None, *,
                       interconnect_gbs: float | None = None,
                       contention: Mapping[str, float] | None = None,
                       max_stages: int | None = None, max_replicas: int | None = None) -> DseResult:
    """The optimum over all core layouts (up to one stage per core) with exact splits
    (``max_replicas=1``: over those without replicated stages)."""
    model = _model(table, clusters, interconnect_gbs, contention)
    if max_stages is None:
        max_stages = sum(c.cores for c in model.clusters.values())
    return explore(model, max_stages=max_stages, top_k=1, max_replicas=max_replicas)[0]


def flops_balanced_split(flops: Sequence[float], capacities: Sequence[float]) -> list[tuple[int, int]]:
    """Split units into ``len(capacities)`` contiguous non-empty ranges (first, last) so the largest
    flops/capacity ratio is minimal (exact). Capacities are relative speeds of the stages."""
    f = np.asarray(flops, dtype=float)
    n = f.shape[0]
    if len(capacities) > n:
        raise ConfigError(f"cannot split {n} units into {len(capacities)} stages")
    if any(c <= 0 for c in capacities):
        raise ConfigError(f"capacities must be > 0, got {list(capacities)}")
    p = np.concatenate([[0.0], np.cumsum(f)])
    base = p[None, :] - p[:, None]
    base[np.tril_indices(n + 1)] = np.inf
    _period, bounds = min_bottleneck_split([base / c for c in capacities])
    return [(s, e - 1) for s, e in zip(bounds[:-1], bounds[1:])]
