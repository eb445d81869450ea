"""A simulated board for the search: true costs that the hints only approximate, noisy measurements,
shared memory bandwidth, and scheduled frequency changes.

- **True unit costs** = predicted x a seeded log-normal error of log-sd ``sigma``: mostly per unit
  (the prediction misjudges a layer, whatever it runs on) plus smaller per (unit, core type) and
  per (unit, core type, cores) parts, so hints guide but never give the answer.
- **Measurements**: fps and each unit's ms carry independent ``noise`` (relative, Gaussian).
- **Interconnect**: a cut between clusters moves the bytes crossing it at ``interconnect_gbs``.
- **Shared bandwidth**: workers (stages x replicas) sharing a cluster slow each other by
  ``contention_alphas(board, contention)`` per extra worker (see :mod:`tunerd.tuning.throughput`).
- **DVFS**: ``dvfs_schedule=[(at_window, cluster, factor)]`` sets the cluster's speed to ``factor``
  of nominal at that measurement window.
- **One core type at several clocks**: a cluster's nominal speed is its clock over its core type's
  reference clock (tunerd.platform.boards), so a Snapdragon's gold and prime clusters share one row
  of costs, the gold one at 0.85; a DVFS factor is relative to that nominal speed.

The **antecedents** a pipeline is compared with (Pipe-it's baselines, no pipelining) are modelled
on the same costs: the whole network as one stage on one cluster with all its cores
(:meth:`SimulatedBoard.single_cluster_fps`), and **all cores kernel-parallel**
(:func:`kernel_parallel_ms`): one stage spanning every core of every cluster, each layer's work
split evenly over all the threads, as ARM-CL's static scheduler does.

:func:`run_simulation` drives the real :class:`~tunerd.tuning.tuner.Tuner` (or any object with the same
ask/tell/best/retune protocol, see :func:`drive`) against it and reports how close it got to the
exhaustive optimum, how fast, and how much throughput it served while searching.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..platform.boards import board_clusters, core_type_references, load_board
from .dse import DseResult, exhaustive_optimum
from ..errors import ConfigError
from ..pipeconfig import ClusterSpec, PipelineConfig, Stage, as_cluster_specs, validate
from ..costs.table import UnitCostTable
from .throughput import PipelineModel, transfer_ms
from .tuner import Tuner

__all__ = ["SimulatedBoard", "run_simulation", "drive", "synthetic_table", "contention_prior", "contention_alphas",
           "kernel_parallel_ms", "kernel_parallel_parts", "kernel_parallel_fps", "DEFAULT_CONTENTION", "DEFAULT_CONTENTION_PRIOR"]

# Slowdown per extra worker on the board's best-connected cluster; a cluster with less memory
# bandwidth suffers in proportion (capped at 4x): relative, so it does not depend on what the
# board file's bandwidth figures measure. On the example board of DESIGN.md: big +5%, little +10%.
DEFAULT_CONTENTION = 0.05
# What the tuner is told to expect (the same law, half as strong): a calibration would give a
# figure of this kind; the tuner learns the true one from what it measures.
DEFAULT_CONTENTION_PRIOR = 0.025


def contention_alphas(board: Mapping, coefficient: float = DEFAULT_CONTENTION) -> dict[str, float]:
    """Per-cluster slowdown per extra worker: ``coefficient`` x (best bandwidth / own, at most 4)."""
    best = max(float(c["bandwidth_gbs"]) for c in board["clusters"])
    return {c["name"]: coefficient * min(4.0, best / float(c["bandwidth_gbs"])) for c in board["clusters"]}


def contention_prior(board: Mapping, coefficient: float = DEFAULT_CONTENTION_PRIOR) -> dict[str, float]:
    """Per-cluster contention prior for the tuner: the simulator's law at ``coefficient``."""
    return contention_alphas(board, coefficient)


def synthetic_table(board: Mapping, n_units: int, *, seed: int = 0) -> UnitCostTable:
    """A CNN-like predicted cost table for ``board`` (used by tests and ``bench_search``).

    Activations shrink and FLOPs vary along the network; parallel efficiency is per unit (big
    layers scale, small ones less) and each extra thread costs a little synchronisation.
    """
    rng = np.random.default_rng(seed)
    pos = np.linspace(0.0, 1.0, n_units)
    flops = rng.lognormal(np.log(120e6), 0.7, n_units)
    out_bytes = 4 * 112 * 112 * 64 * 2.0 ** (-5.0 * pos) * rng.lognormal(0.0, 0.3, n_units)
    out_bytes[-1] = 4000.0
    gamma = np.clip(0.6 + 0.3 * (np.log(flops) - np.log(30e6)) / np.log(20) + rng.normal(0, 0.05, n_units),
                    0.45, 0.97)
    table = {}
    # NOTE: a core type's costs are its reference cluster's (the fastest clocked); the row covers
    # the most cores any cluster of that type has
    for t, ref in core_type_references(board).items():
        cores = max(int(c["cores"]) for c in board["clusters"] if c["core_type"] == t)
        k = np.arange(1, cores + 1, dtype=float)
        table[t] = flops[:, None] / (ref["gflops_per_core"] * 1e6) / k[None, :] ** gamma[:, None] + 0.02 * k[None, :]
    return UnitCostTable(table, out_bytes)


def kernel_parallel_ms(table: UnitCostTable, clusters: Sequence[Any], *, interconnect_gbs: float | None = None,
                       sync_us: float = 0.0) -> np.ndarray:
    """Per-unit ms of the **all-cores kernel-parallel** antecedent (the sum of
    :func:`kernel_parallel_parts`)."""
    return sum(kernel_parallel_parts(table, clusters, interconnect_gbs=interconnect_gbs, sync_us=sync_us).values())


def kernel_parallel_parts(table: UnitCostTable, clusters: Sequence[Any], *, interconnect_gbs: float | None = None,
                          sync_us: float = 0.0) -> dict[str, np.ndarray]:
    """Per-unit ms of the **all-cores kernel-parallel** antecedent, by part (``compute``,
    ``exchange``, ``barrier``): one stage on every core of
    every cluster, one frame at a time, each layer's work split evenly over all N threads (a
    static split, as ARM-CL's scheduler does: every thread gets the same share whatever its core).

    - cluster c runs its ``cores_c / N`` share of unit u on its cores_c cores in
      ``cores_c / N x ms(u, c, cores_c) / speed_c`` (the table's time for the whole unit on those
      cores, scaled to the share: work splits, per-layer fixed costs are taken to split too, which
      flatters the antecedent); the unit ends when the slowest cluster's share ends (the others
      wait at the barrier);
    - then the clusters exchange what they produced: every cluster needs the whole activation for
      the next layer and made only its share, so (clusters - 1) x the bytes crossing the cut after
      u go over the interconnect (``interconnect_gbs``, the figure the pipeline model charges a cut
      between clusters: :func:`tunerd.tuning.throughput.transfer_ms`), plus ``sync_us`` of cross-cluster
      barrier per unit (a board file's optional ``cross_cluster_sync_us``; 0 when it has none). The
      last unit's output goes to the client, not to the other clusters. Activations crossing
      between layers inside a unit are not counted: the cost is a lower bound.

    With one cluster this is that cluster alone with all its cores (nothing to exchange)."""
    specs = as_cluster_specs(clusters)
    if not specs:
        raise ConfigError("kernel parallelism needs at least one cluster")
    total = sum(c.cores for c in specs)
    compute = np.max([(c.cores / total) * table.ms(c.core_type, c.cores) / c.speed for c in specs], axis=0)
    if len(specs) == 1:
        zero = np.zeros(table.n_units)
        return {"compute": compute, "exchange": zero, "barrier": zero}
    exchange = (len(specs) - 1) * np.asarray(transfer_ms(table.out_bytes, interconnect_gbs), dtype=float)
    exchange[-1] = 0.0
    barrier = np.full(table.n_units, float(sync_us) / 1000.0)
    barrier[-1] = 0.0
    return {"compute": compute, "exchange": exchange, "barrier": barrier}


def kernel_parallel_fps(table: UnitCostTable, clusters: Sequence[Any], *, interconnect_gbs: float | None = None,
                        sync_us: float = 0.0) -> float:
    """Frames/s of the all-cores kernel-parallel antecedent (see :func:`kernel_parallel_ms`)."""
    return 1000.0 / float(kernel_parallel_ms(table, clusters, interconnect_gbs=interconnect_gbs,
                                             sync_us=sync_us).sum())


class SimulatedBoard:
    """A board whose true costs deviate from ``table`` (the hints' predictions)."""

    def __init__(self, board: Mapping | str, table: UnitCostTable, *, seed: int = 0, sigma: float = 0.25,
                 noise: float = 0.03, dvfs_schedule: Sequence[tuple[int, str, float]] | None = None,
                 contention: float = DEFAULT_CONTENTION, optimum_cache: dict | None = None) -> None:
        self.board = load_board(board)
        self.clusters = board_clusters(self.board)
        table = UnitCostTable.from_hints(table)
        self.interconnect_gbs = float(self.board["interconnect_gbs"])
        table.check_clusters(self.clusters)
        if sigma < 0 or noise < 0:
            raise ConfigError(f"sigma and noise must be >= 0, got {sigma}, {noise}")
        self.predicted = table
        self.noise = float(noise)
        rng = np.random.default_rng([int(seed), 0x5EED])
        n = table.n_units
        per_unit = rng.standard_normal(n)
        true = {}
        for t, ms in table.predicted_ms.items():
            z = 0.8 * per_unit[:, None] + 0.5 * rng.standard_normal((n, 1)) + 0.3 * rng.standard_normal(ms.shape)
            true[t] = ms * np.exp(sigma * z)
        self.true_table = UnitCostTable(true, table.out_bytes.copy())
        self.contention = contention_alphas(self.board, contention)
        self.nominal = {c.name: c.speed for c in self.clusters}
        self.speeds = dict(self.nominal)
        self.schedule = sorted((int(a), str(c), float(f)) for a, c, f in (dvfs_schedule or []))
        for _at, name, factor in self.schedule:
            if name not in self.speeds:
                raise ConfigError(f"DVFS event for unknown cluster {name!r} (clusters: {', '.join(self.speeds)})")
            if not factor > 0:
                raise ConfigError(f"DVFS factor must be > 0, got {factor}")
        self._applied = 0
        self._noise_rng = np.random.default_rng([int(seed), 0xD1CE])
        self.measurements = 0
        # shareable between boards built alike (same board, table, seed, sigma, contention)
        self._optimum: dict[tuple, DseResult] = optimum_cache if optimum_cache is not None else {}

    def model(self) -> PipelineModel:
        """The true throughput model at the current speeds."""
        return PipelineModel(self.true_table, self.clusters, interconnect_gbs=self.interconnect_gbs,
                             contention=self.contention).with_speeds(self.speeds)

    def true_fps(self, config: PipelineConfig) -> float:
        validate(config, self.true_table.n_units, self.clusters)
        return self.model().fps(config)

    def measure(self, config: PipelineConfig) -> tuple[float, np.ndarray]:
        """One measurement window: (fps, per-unit ms on each unit's stage), both noisy."""
        validate(config, self.true_table.n_units, self.clusters)
        model = self.model()
        rng = self._noise_rng
        fps = model.fps(config) * max(0.05, 1.0 + self.noise * rng.standard_normal())
        units = model.unit_ms(config) * np.maximum(0.05, 1.0 + self.noise * rng.standard_normal(model.n_units))
        self.measurements += 1
        return float(fps), units

    def due_events(self, window: int) -> list[tuple[str, float]]:
        """Apply the DVFS events due at ``window``; return them as (cluster, factor)."""
        fired = []
        while self._applied < len(self.schedule) and self.schedule[self._applied][0] <= window:
            _at, name, factor = self.schedule[self._applied]
            self.speeds[name] = self.nominal[name] * factor
            fired.append((name, factor))
            self._applied += 1
        return fired

    def next_event(self) -> int | None:
        return self.schedule[self._applied][0] if self._applied < len(self.schedule) else None

    def optimum(self, *, replicas: bool = True) -> DseResult:
        """The exhaustive optimum on the true costs at the current speeds (``replicas=False``:
        the best pipeline without replicated stages, Pipe-it's space)."""
        key = tuple(sorted(self.speeds.items())) + (("replicas", bool(replicas)),)
        if key not in self._optimum:
            self._optimum[key] = exhaustive_optimum(self.model(), max_replicas=None if replicas else 1)
        return self._optimum[key]

    def current_clusters(self) -> list[ClusterSpec]:
        return [ClusterSpec(c.name, c.core_type, c.cores, self.speeds[c.name]) for c in self.clusters]

    def single_cluster_fps(self, cluster: str) -> float:
        """True fps of the whole network as one stage on ``cluster`` with all its cores."""
        c = next((c for c in self.clusters if c.name == cluster), None)
        if c is None:
            raise ConfigError(f"unknown cluster {cluster!r} (clusters: {', '.join(self.speeds)})")
        return self.true_fps(PipelineConfig((Stage(0, self.true_table.n_units - 1, c.name, c.cores),)))

    def kernel_parallel_parts(self) -> dict[str, np.ndarray]:
        """True per-unit ms of the all-cores kernel-parallel antecedent by part
        (:func:`kernel_parallel_parts`) at the current speeds, with the board's interconnect and
        its ``cross_cluster_sync_us`` if any."""
        return kernel_parallel_parts(self.true_table, self.current_clusters(), interconnect_gbs=self.interconnect_gbs,
                                     sync_us=float(self.board.get("cross_cluster_sync_us", 0.0)))

    def kernel_parallel_fps(self) -> float:
        """True fps of the all-cores kernel-parallel antecedent (see :meth:`kernel_parallel_parts`)."""
        return 1000.0 / float(sum(self.kernel_parallel_parts().values()).sum())


@dataclass
class _Phase:
    start: int
    optimum: DseResult
    event: tuple[tuple[str, float], ...] = ()         # the DVFS events (cluster, factor) that began it
    records: list = field(default_factory=list)
    final_best_true: float | None = None


def _phase_figures(phase: _Phase, budget: int) -> dict:
    opt = phase.optimum.fps
    recs = phase.records
    true = [r["true_fps"] for r in recs]
    inc = [r["best_true_fps"] for r in recs]

    def reach(share: float) -> int | None:
        for i, v in enumerate(inc):
            if v is not None and v >= share * opt:
                return i + 1
        return None

    found = phase.final_best_true
    served = true[:budget]
    if len(served) < budget:
        served = served + [found or 0.0] * (budget - len(served))
    return {
        "optimum_fps": opt, "optimum_config": str(phase.optimum.config),
        "found_fps": found, "found_ratio": (found / opt) if found else 0.0,
        "evaluations": len(recs),
        "evaluations_to_95": 0 if (not recs and found and found >= 0.95 * opt) else reach(0.95),
        "evaluations_to_99": 0 if (not recs and found and found >= 0.99 * opt) else reach(0.99),
        "within_10pct": (sum(v >= 0.9 * opt for v in true) / len(true)) if true else None,
        "served_share": float(np.mean(served)) / opt if served else None,
    }


def drive(sim: SimulatedBoard, searcher: Any, *, budget: int, max_windows: int | None = None) -> dict:
    """Run ``searcher`` (``ask() -> config|None``, ``tell(config, fps, unit_times=)``, ``best``,
    ``retune(factors)``) against ``sim``: one measurement window per evaluation; a searcher with
    nothing to ask serves its best until the next DVFS event (or the end)."""
    # NOTE: after the last scheduled event, room for every episode (retunes included) to finish
    last_event = sim.schedule[-1][0] if sim.schedule else 0
    limit = max_windows or (last_event + budget * (2 + len(sim.schedule)) + 50)
    phases = [_Phase(0, sim.optimum())]
    window = 0
    while window < limit:
        nxt = sim.next_event()
        if nxt is not None and nxt <= window:
            phases[-1].final_best_true = _best_true(sim, searcher)  # at the old speeds
        fired = sim.due_events(window)
        if fired:
            phases.append(_Phase(window, sim.optimum(), tuple(fired)))
            searcher.retune(dict(fired))
        config = searcher.ask()
        if config is None:
            nxt = sim.next_event()
            if nxt is None:
                break
            window = max(window + 1, nxt)
            continue
        true = sim.model().fps(config)
        fps, units = sim.measure(config)
        searcher.tell(config, fps, unit_times=units)
        best = searcher.best
        phases[-1].records.append({
            "window": window, "config": str(config), "fps": fps, "true_fps": true,
            "best_config": str(best[0]) if best else None,
            "best_true_fps": sim.model().fps(best[0]) if best else None,
            "state": getattr(searcher, "state", None),
            "reason": (searcher.history[-1].get("reason") if getattr(searcher, "history", None) else None),
        })
        window += 1
    phases[-1].final_best_true = _best_true(sim, searcher)
    first = _phase_figures(phases[0], budget)
    best = searcher.best
    result = {
        "board": sim.board["name"], "n_units": sim.true_table.n_units, "budget": budget,
        **first,
        "config": str(phases[0].records[-1]["best_config"]) if phases[0].records else
        (str(best[0]) if best else None),
        "history": [r for p in phases for r in p.records],
    }
    if len(phases) > 1:
        result["retunes"] = []
        for p in phases[1:]:
            figs = _phase_figures(p, budget)
            # "cluster"/"factor": the last event of the window (the older single-event form);
            # "events": every event that fired in it
            figs.update({"at": p.start, "cluster": p.event[-1][0], "factor": p.event[-1][1],
                         "events": [list(e) for e in p.event]})
            result["retunes"].append(figs)
        result["retune"] = result["retunes"][0]
        result["final_config"] = str(best[0]) if best else None
    return result


def _best_true(sim: SimulatedBoard, searcher: Any) -> float | None:
    best = searcher.best
    return sim.model().fps(best[0]) if best else None


def run_simulation(board: Mapping | str, table: UnitCostTable, *, budget: int = 60, seed: int = 0,
                   sigma: float = 0.25, noise: float = 0.03,
                   dvfs_schedule: Sequence[tuple[int, str, float]] | None = None,
                   contention: float = DEFAULT_CONTENTION, prior: float = DEFAULT_CONTENTION_PRIOR,
                   tuner_kwargs: Mapping[str, Any] | None = None) -> dict:
    """Drive the real Tuner against a SimulatedBoard; see :func:`drive` for the figures.

    Returns at least ``found_fps``, ``optimum_fps``, ``evaluations``, ``evaluations_to_95``,
    ``config`` and ``history``; with a DVFS event also ``retune`` (the same figures after it).
    """
    table = UnitCostTable.from_hints(table)
    sim = SimulatedBoard(board, table, seed=seed, sigma=sigma, noise=noise, dvfs_schedule=dvfs_schedule,
                         contention=contention)
    kwargs = {"contention": contention_prior(sim.board, prior), **dict(tuner_kwargs or {})}
    tuner = Tuner(sim.clusters, table, rng_seed=seed, budget=budget, interconnect_gbs=sim.interconnect_gbs,
                  **kwargs)
    result = drive(sim, tuner, budget=budget)
    result["state"] = tuner.state
    result["seed"] = seed
    return result
