"""The one analytic pipeline model: the throughput of a pipeline config over a unit cost table
(:class:`tunerd.costs.table.UnitCostTable`).

Used by the DSE, the tuner's surrogate and the simulator alike, so they can never disagree on what
a config is worth given the same costs:

- a stage's time is the sum of its units' ms on (core type, cores), stretched by 1/speed of its
  cluster, plus the transfer of the bytes crossing its last cut when the next stage runs on another
  cluster (``interconnect_gbs``; the last stage sends nothing);
- optionally, stages sharing a cluster share its memory bandwidth: each is slowed by
  ``1 + contention[cluster] * (workers on that cluster - 1)`` (workers = stages x replicas);
- a stage with R replicas takes alternate frames: its period is stage time / R;
- throughput (frames/s) = 1000 / the largest period (ms).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..costs.table import UnitCostTable
from ..errors import ConfigError
from ..pipeconfig import PipelineConfig, Stage, as_cluster_specs

__all__ = ["PipelineModel", "pipeline_fps", "table_from_flops", "transfer_ms"]


def transfer_ms(nbytes: np.ndarray | float, interconnect_gbs: float | None) -> np.ndarray | float:
    """Milliseconds to move ``nbytes`` between clusters (0 when no interconnect cost is modelled)."""
    if not interconnect_gbs:
        return np.zeros_like(nbytes, dtype=float) if isinstance(nbytes, np.ndarray) else 0.0
    return nbytes / (float(interconnect_gbs) * 1e6)


class PipelineModel:
    """Throughput of configs for one cost table, cluster set (with speeds) and interconnect.

    Prefix sums per core type make a stage's compute time two lookups, so evaluating a config is a
    handful of Python operations; the DSE uses :meth:`cost_matrix` for whole rows of splits at once.
    """

    def __init__(self, table: UnitCostTable, clusters: Sequence[Any], *,
                 interconnect_gbs: float | None = None,
                 contention: Mapping[str, float] | None = None) -> None:
        self.table = table
        self.clusters = {c.name: c for c in as_cluster_specs(clusters)}
        table.check_clusters(list(self.clusters.values()))
        self.n_units = table.n_units
        self.interconnect_gbs = interconnect_gbs
        self.contention = {k: float(v) for k, v in (contention or {}).items() if v}
        for name, alpha in self.contention.items():
            if name not in self.clusters or not (alpha >= 0 and np.isfinite(alpha)):
                raise ConfigError(f"contention for cluster {name!r} must be a known cluster and >= 0, got {alpha}")
        self._prefix = {t: np.vstack([np.zeros((1, ms.shape[1])), np.cumsum(ms, axis=0)])
                        for t, ms in table.predicted_ms.items()}
        self.transfer = np.asarray(transfer_ms(table.out_bytes, interconnect_gbs), dtype=float)
        self._transfer_row = np.concatenate([[0.0], self.transfer])[None, :]
        self._lower = np.tril_indices(self.n_units + 1)

    def with_speeds(self, speeds: Mapping[str, float]) -> "PipelineModel":
        """The same model with some clusters' speed replaced."""
        clusters = [replace(c, speed=float(speeds.get(c.name, c.speed))) for c in self.clusters.values()]
        return PipelineModel(self.table, clusters, interconnect_gbs=self.interconnect_gbs,
                             contention=self.contention)

    def contention_factors(self, config: PipelineConfig) -> dict[str, float]:
        if not self.contention:
            return {}
        workers: dict[str, int] = {}
        for s in config.stages:
            workers[s.cluster] = workers.get(s.cluster, 0) + s.replicas
        return {name: 1.0 + self.contention.get(name, 0.0) * (w - 1) for name, w in workers.items()}

    def compute_ms(self, stage: Stage, factor: float = 1.0) -> float:
        """Compute time of one frame through ``stage`` (no transfer)."""
        c = self.clusters[stage.cluster]
        p = self._prefix[c.core_type]
        k = stage.cores - 1
        return float(p[stage.last + 1, k] - p[stage.first, k]) * factor / c.speed

    def periods(self, config: PipelineConfig) -> np.ndarray:
        """Per-stage period (ms between frames leaving the stage)."""
        factors = self.contention_factors(config)
        stages = config.stages
        out = np.empty(len(stages))
        for i, s in enumerate(stages):
            ms = self.compute_ms(s, factors.get(s.cluster, 1.0))
            if i + 1 < len(stages) and stages[i + 1].cluster != s.cluster:
                ms += float(self.transfer[s.last])
            out[i] = ms / s.replicas
        return out

    def fps(self, config: PipelineConfig) -> float:
        return 1000.0 / float(np.max(self.periods(config)))

    def unit_ms(self, config: PipelineConfig) -> np.ndarray:
        """Each unit's ms on its stage's (core type, cores, speed), contention included."""
        factors = self.contention_factors(config)
        out = np.empty(self.n_units)
        for s in config.stages:
            c = self.clusters[s.cluster]
            out[s.first:s.last + 1] = (self.table.ms(c.core_type, s.cores)[s.first:s.last + 1]
                                       * factors.get(s.cluster, 1.0) / c.speed)
        return out

    def cost_matrix(self, cluster: str, cores: int, replicas: int, transfer: bool,
                    factor: float = 1.0) -> np.ndarray:
        """``C[s, e]`` = period of a stage covering units s..e-1 (inf where s >= e)."""
        c = self.clusters[cluster]
        p = self._prefix[c.core_type][:, cores - 1]
        mat = (p[None, :] - p[:, None]) * (factor / (c.speed * replicas))
        if transfer:
            mat += self._transfer_row / replicas
        mat[self._lower] = np.inf
        return mat


def pipeline_fps(config: PipelineConfig, table: UnitCostTable, clusters: Sequence[Any], *,
                 interconnect_gbs: float | None = None,
                 contention: Mapping[str, float] | None = None) -> float:
    """Frames/s of ``config`` (convenience wrapper; build a PipelineModel for many calls)."""
    return PipelineModel(table, clusters, interconnect_gbs=interconnect_gbs, contention=contention).fps(config)


def table_from_flops(flops: Sequence[float], out_bytes: Sequence[float], gflops_per_core: Mapping[str, float],
                     max_cores: Mapping[str, int] | int, *, efficiency: float = 0.85,
                     overhead_ms: float = 0.05) -> UnitCostTable:
    """A roofline-free synthetic table: ms = flops / (gflops x cores x efficiency^(cores-1)) + overhead.

    Parallel efficiency decays geometrically with the core count, so more cores always help but
    less and less (as for BLAS on small layers).
    """
    f = np.asarray(flops, dtype=float)
    table = {}
    for core_type, gflops in gflops_per_core.items():
        kmax = max_cores if isinstance(max_cores, int) else max_cores[core_type]
        k = np.arange(1, kmax + 1, dtype=float)
        speedup = k * efficiency ** (k - 1)
        table[core_type] = f[:, None] / (gflops * 1e6) / speedup[None, :] + overhead_ms
    return UnitCostTable(table, np.asarray(out_bytes, dtype=float))
