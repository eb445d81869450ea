"""The one analytic pipeline model: unit cost tables and the throughput of a pipeline config.

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

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, HintsError
from ..pipeconfig import ClusterSpec, PipelineConfig, Stage, as_cluster_specs

__all__ = ["UnitCostTable", "PipelineModel", "pipeline_fps", "table_from_flops", "transfer_ms"]


def cores_column(predicted_ms: Mapping[str, np.ndarray], core_type: str, cores: int,
                 error: type[Exception], source: str) -> np.ndarray:
    """Column ``cores - 1`` of ``predicted_ms[core_type]`` (units x core counts), a view; ``error``
    names ``source`` when that core type or count is not covered."""
    try:
        arr = predicted_ms[core_type]
    except KeyError:
        raise error(f"{source} has no core type {core_type!r} (have {', '.join(predicted_ms)})") from None
    if not 1 <= cores <= arr.shape[1]:
        raise error(f"{source} covers 1-{arr.shape[1]} cores of {core_type!r}, not {cores}")
    return arr[:, cores - 1]


@dataclass
class UnitCostTable:
    """Per-unit costs: ``predicted_ms[core_type][u, k]`` = ms of unit u on k+1 cores of that type,
    ``out_bytes[u]`` = bytes crossing the cut after unit u (the last one is the output)."""

    predicted_ms: dict[str, np.ndarray]
    out_bytes: np.ndarray

    def __post_init__(self) -> None:
        self.out_bytes = np.asarray(self.out_bytes, dtype=float).reshape(-1)
        n = self.out_bytes.shape[0]
        if n < 1:
            raise HintsError("unit cost table has no units")
        if not self.predicted_ms:
            raise HintsError("unit cost table has no core types")
        table = {}
        for core_type, ms in self.predicted_ms.items():
            arr = np.asarray(ms, dtype=float)
            if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
                raise HintsError(
                    f"predicted ms for core type {core_type!r} has shape {arr.shape}, expected ({n}, cores)")
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise HintsError(f"predicted ms for core type {core_type!r} must be finite and > 0")
            table[str(core_type)] = arr
        if np.any(self.out_bytes < 0) or not np.all(np.isfinite(self.out_bytes)):
            raise HintsError("out_bytes must be finite and >= 0")
        self.predicted_ms = table

    @property
    def n_units(self) -> int:
        return int(self.out_bytes.shape[0])

    @property
    def core_types(self) -> list[str]:
        return list(self.predicted_ms)

    def max_cores(self, core_type: str) -> int:
        return int(self.predicted_ms[core_type].shape[1])

    def ms(self, core_type: str, cores: int) -> np.ndarray:
        """Per-unit ms on ``cores`` cores of ``core_type`` (a view)."""
        return cores_column(self.predicted_ms, core_type, cores, ConfigError, "the unit cost table")

    def scaled(self, factors: Mapping[str, float]) -> "UnitCostTable":
        """A copy with each core type's times multiplied by ``factors.get(core_type, 1)``."""
        return UnitCostTable({t: ms * float(factors.get(t, 1.0)) for t, ms in self.predicted_ms.items()},
                             self.out_bytes.copy())

    def copy(self) -> "UnitCostTable":
        return UnitCostTable({t: ms.copy() for t, ms in self.predicted_ms.items()}, self.out_bytes.copy())

    @classmethod
    def from_hints(cls, hints: Any) -> "UnitCostTable":
        """The table of a hints object (anything with ``.predicted_ms`` and ``.out_bytes``)."""
        if isinstance(hints, UnitCostTable):
            return hints
        try:
            return cls(dict(hints.predicted_ms), hints.out_bytes)
        except AttributeError as err:
            raise HintsError(f"hints have no unit cost table: {err}") from err

    def to_dict(self) -> dict:
        return {"predicted_ms": {t: ms.tolist() for t, ms in self.predicted_ms.items()},
                "out_bytes": self.out_bytes.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UnitCostTable":
        try:
            return cls({t: np.asarray(v, dtype=float) for t, v in data["predicted_ms"].items()},
                       np.asarray(data["out_bytes"], dtype=float))
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise HintsError(f"bad unit cost table: {err}") from err

    def check_clusters(self, clusters: Sequence[ClusterSpec]) -> None:
        for c in clusters:
            if c.core_type not in self.predicted_ms:
                raise HintsError(f"cluster {c.name!r}: no costs for core type {c.core_type!r}"
                                 f" (table has {', '.join(self.predicted_ms)})")
            if self.max_cores(c.core_type) < c.cores:
                raise HintsError(f"cluster {c.name!r} has {c.cores} cores but the table has costs for"
                                 f" 1-{self.max_cores(c.core_type)} cores of {c.core_type!r}")


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
