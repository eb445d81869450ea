"""Live evaluation: the tuner's candidates measured on the frames being served.

``LiveTuning`` sits between a Tuner (ask/tell) and a Pipeline. When the tuner has a candidate it
switches the pipeline to it (a new epoch), skips the first ``warmup`` frames of that epoch, then
measures until the bottleneck estimate is precise enough: the fitness is the throughput the config
sustains, 1000 / max over stages of (median compute ms / replicas), from the stages' own timings,
so it does not depend on how fast clients happen to send. Two things keep it robust on a machine
shared with other work:

- medians, not means (a few slow frames move nothing), of periods with the time other processes
  held the stage's cores taken out (a frame's ``cpu_share`` against the stage's typical share, see
  ``_Window.corrected``): a preempted frame measures the other processes, not the config, and on
  a shared machine most of a window's spread is that;
- the per-unit times told to the tuner (they refine its cost table, the surrogate) add up, stage
  by stage, to the stage's robust compute time measured in the window; the units' shares of it
  are medians over recent windows of their sampled times after the warmup (so no cold first
  frames of an epoch, no preempted sample). The surrogate then agrees with what was measured for
  every stage it has seen, and the units' shares only decide how a stage's time splits when a cut
  moves.

When the tuner has converged, the pipeline runs its best.

Everything here is driven by the caller's poll loop: ``on_outcomes`` with every batch of outcomes,
``step`` once per tick. Nothing blocks.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..tuning import states
from ..errors import TunerdError
from ..pipeconfig import PipelineConfig, parse_config

log = logging.getLogger(__name__)


SERVE_RETRY_S = 5.0     # a pin or best whose stages could not start is tried again after this


@dataclass
class WindowPolicy:
    warmup: int = 2            # frames of a new epoch not measured (caches, first-touch, switch)
    min_frames: int = 6
    max_frames: int = 40
    rel_precision: float = 0.03  # stop when the bottleneck's standard error is within this share
    max_seconds: float = 20.0  # a window never lasts longer (slow boards, sparse traffic)
    # a window measures for at least this long, max_frames notwithstanding: on a machine whose speed
    # drifts over fractions of a second (other processes, a host's other guests) a window of a few
    # fast frames samples one moment, and its figure moves with it
    min_seconds: float = 0.0


@dataclass
class _Window:
    config: PipelineConfig
    epoch: int
    started: float
    seen: int = 0
    periods: list[list[float]] = field(default_factory=list)   # per stage: compute_ms / replicas
    shares: list[list[float]] = field(default_factory=list)    # per stage: cpu_share (nan: unknown)
    base: dict[int, tuple[int, float]] | None = None  # per unit: (n, mean) of the pipeline's table when measuring began
    since: float | None = None   # when the first measured frame (after the warmup) came back

    def corrected(self, i: int) -> np.ndarray:
        """Stage ``i``'s periods with the time other processes held its cores taken out.

        A frame's ``cpu_share`` (CPU time / (wall x cores) while computing) is below the stage's
        own typical share when other processes preempted it; its period is scaled by share /
        typical (at most 1). The typical share is the window's 90th percentile (capped at 1):
        a single-threaded stage that had its core computes at share 1, a multi-threaded one may
        never reach it (threads waiting at a barrier), which is the config's own cost and stays."""
        p = np.asarray(self.periods[i], dtype=float)
        s = np.asarray(self.shares[i], dtype=float) if self.shares else np.full(len(p), np.nan)
        known = ~np.isnan(s) & (s > 0)
        if not known.any():
            return p
        typical = min(1.0, float(np.percentile(s[known], 90)))
        return p * np.where(known, np.minimum(1.0, s / typical), 1.0)

    def bottleneck(self) -> tuple[float, float]:
        """Median bottleneck period (ms) and its relative standard error.

        NOTE: medians, because on a shared machine a few frames preempted by other processes (or
        one lucky quiet stretch) would otherwise move the fitness; the error uses the MAD."""
        kept = [self.corrected(i) for i in range(len(self.periods))]
        medians = [float(np.median(p)) for p in kept]
        i = int(np.argmax(medians))
        p = kept[i]
        if len(p) < 2:
            return medians[i], math.inf
        sigma = 1.4826 * float(np.median(np.abs(p - medians[i])))
        return medians[i], 1.2533 * sigma / math.sqrt(len(p)) / medians[i]

    def stage_ms(self, i: int, replicas: int) -> float:
        """Robust compute ms of one frame through stage ``i`` (one replica)."""
        return float(np.median(self.corrected(i))) * replicas


class LiveTuning:
    UNIT_HISTORY = 15   # windows a unit's share of its stage is the median over

    def __init__(self, tuner, pipeline, *, policy: WindowPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic, on_converged: Callable | None = None):
        self.tuner = tuner
        self.pipeline = pipeline
        self.policy = policy or WindowPolicy()
        self.clock = clock
        self.on_converged = on_converged
        self._window: _Window | None = None
        self._serving_best = False
        self._serve_failed: tuple[str, float] | None = None   # (config, when) a switch to serve it failed
        # per (unit, core type, cores): its mean sampled ms in recent windows (the units' shares)
        self._unit_history: dict[tuple[int, str, int], list[float]] = {}

    @property
    def evaluating(self) -> str | None:
        return str(self._window.config) if self._window else None

    def on_outcomes(self, outcomes) -> None:
        w = self._window
        if w is None:
            return
        for o in outcomes:
            if o.epoch != w.epoch or not o.ok:
                continue
            w.seen += 1
            if w.seen <= self.policy.warmup:
                if w.seen == self.policy.warmup:
                    w.base = self._unit_stats(w.config)
                continue
            n_stages = len(w.config.stages)
            if not w.periods:
                w.since = self.clock()
                w.periods = [[] for _ in range(n_stages)]
                w.shares = [[] for _ in range(n_stages)]
                if w.base is None:
                    w.base = self._unit_stats(w.config)
            for t in o.stages:
                w.periods[t.stage].append(t.compute_ms / w.config.stages[t.stage].replicas)
                share = getattr(t, "cpu_share", None)
                w.shares[t.stage].append(float(share) if share is not None else math.nan)

    def _window_done(self, w: _Window) -> bool:
        measured = w.seen - self.policy.warmup
        if self.clock() - w.started > self.policy.max_seconds and measured >= 2:
            return True
        if measured < self.policy.min_frames or not w.periods or any(len(p) == 0 for p in w.periods):
            return False
        if w.since is None or self.clock() - w.since < self.policy.min_seconds:
            return False
        if measured >= self.policy.max_frames:
            return True
        return w.bottleneck()[1] <= self.policy.rel_precision

    def _unit_stats(self, config: PipelineConfig) -> dict[int, tuple[int, float]]:
        """(samples, mean ms) of each unit of ``config`` on its stage's core type and count in the
        pipeline's cost table (every frequency pooled: only the units' shares are used)."""
        table = getattr(self.pipeline, "cost_table", None)
        out = {}
        if table is None:
            return out
        for stage in config.stages:
            core_type = self.pipeline.platform.cluster(stage.cluster).core_type
            for unit in range(stage.first, stage.last + 1):
                stat = table.stat(unit, core_type, stage.cores)
                if stat is not None and stat.n:
                    out[unit] = (stat.n, stat.mean)
        return out

    def _unit_times(self, w: _Window) -> dict[int, float]:
        """Per-unit ms of the window's config, each stage's adding up to its robust compute time.

        A unit's share of its stage is the median, over the windows that sampled it on this core
        type and count, of its mean sampled time in the window (after the warmup): one frame
        preempted in the middle of a unit, or the cold first frames of an epoch, move nothing.
        Units never sampled after a warmup take their mean over all samples; a stage with a unit
        never sampled at all is left out."""
        now = self._unit_stats(w.config)
        base = w.base or {}
        out = {}
        for i, stage in enumerate(w.config.stages):
            units = range(stage.first, stage.last + 1)
            core_type = self.pipeline.platform.cluster(stage.cluster).core_type
            if not w.periods or not w.periods[i] or any(u not in now for u in units):
                continue
            shares = {}
            for u in units:
                n1, m1 = now[u]
                n0, m0 = base.get(u, (0, 0.0))
                history = self._unit_history.setdefault((u, core_type, stage.cores), [])
                if n1 > n0:
                    window_mean = (n1 * m1 - n0 * m0) / (n1 - n0)
                    if math.isfinite(window_mean) and window_mean > 0:
                        history.append(window_mean)
                        del history[:-self.UNIT_HISTORY]
                shares[u] = float(np.median(history)) if history else m1
            total = sum(shares.values())
            if not (total > 0 and math.isfinite(total)):
                continue
            scale = w.stage_ms(i, stage.replicas) / total
            out.update({u: v * scale for u, v in shares.items()})
        return out

    def step(self) -> None:
        """Finish a measurement window that is complete; start the next evaluation if any."""
        w = self._window
        if w is not None and self.tuner.state == states.PINNED:
            # NOTE: a pin takes effect now, not after the window (which may wait long for frames)
            self._window = w = None
        if w is not None and getattr(self.pipeline, "epoch", w.epoch) != w.epoch:
            # NOTE: the pipeline moved on under the window (a stage worker died and it restarted, on
            # the same config, as a new epoch): no more frames of the window's epoch will come, and
            # the new workers start cold, so the config is measured again from its warm-up
            epoch = (self.pipeline.epoch if str(self.pipeline.config) == str(w.config)
                     else self._switch(w.config, force=True))
            log.info("measuring %s again: the pipeline restarted during its window", w.config)
            self._window = w = _Window(w.config, epoch, self.clock())
        if w is not None and str(w.config) in getattr(self.pipeline, "unbuildable", {}):
            # NOTE: a stage of the candidate cannot be built (the pipeline fails its frames, each
            # with the reason): it scores 0 and the search goes on, the best config serving again
            log.warning("cannot evaluate %s: %s", w.config, self.pipeline.unbuildable[str(w.config)])
            self.tuner.tell(w.config, 0.0)
            self._window = w = None
        if w is not None:
            if not self._window_done(w):
                return
            if w.periods and all(w.periods):
                period, rse = w.bottleneck()
                fps = 1000.0 / period
                log.info("evaluated %s: %.2f fps (±%.1f%%, %d frames)", w.config, fps, 100 * rse, w.seen)
                self.tuner.tell(w.config, fps, unit_times=self._unit_times(w) or None)
            self._window = None
        if self.tuner.state == states.PINNED:
            # NOTE: the pin replaced the best in the pipeline: on unpin the best is switched to again
            self._serving_best = False
            if self.tuner.pinned != str(self.pipeline.config):     # (no parse per tick when it is)
                self._serve(parse_config(self.tuner.pinned))
            return
        candidate = self.tuner.ask()
        if candidate is not None:
            self._serving_best = False
            try:
                epoch = self._switch(candidate, force=True)
            except TunerdError as err:
                # NOTE: a config whose stages cannot start (out of processes, memory, descriptors)
                # serves no frame: it scores 0 fps, and the running config goes on serving
                log.warning("cannot evaluate %s: %s", candidate, err)
                self.tuner.tell(candidate, 0.0)
                return
            self._window = _Window(candidate, epoch, self.clock())
            return
        best = self.tuner.best
        if best is not None and not self._serving_best and self._serve(best[0]):
            self._serving_best = True
            if self.on_converged:
                self.on_converged(best[0], best[1])

    def _switch(self, config: PipelineConfig, force: bool = False) -> int:
        if force or str(config) != str(self.pipeline.config):
            return self.pipeline.reconfigure(config)
        return self.pipeline.epoch

    def _serve(self, config: PipelineConfig) -> bool:
        """Switch to ``config`` to serve it (a pin, the best); False when its stages cannot start,
        tried again after SERVE_RETRY_S (the running config serves meanwhile)."""
        now = self.clock()
        failed = self._serve_failed
        if failed is not None and failed[0] == str(config) and now - failed[1] < SERVE_RETRY_S:
            return False
        try:
            self._switch(config)
        except TunerdError as err:
            log.warning("cannot serve %s: %s; trying again in %.0f s", config, err, SERVE_RETRY_S)
            self._serve_failed = (str(config), now)
            return False
        self._serve_failed = None
        return True

    def retune(self, speed_factors: dict[str, float] | None) -> None:
        self._window = None
        self._serving_best = False
        self.tuner.retune(speed_factors)
