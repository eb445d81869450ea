"""Live evaluation: the tuner's candidates measured on the frames being served.

``LiveTuning`` sits between a Tuner (ask/tell) and a Pipeline. When the tuner has a candidate it
switches the pipeline to it (a new epoch), skips the first ``warmup`` frames of that epoch, then
measures until the bottleneck estimate is precise enough: the fitness is the throughput the config
sustains, 1000 / max over stages of (mean compute ms / replicas), from the stages' own timings, so
it does not depend on how fast clients happen to send. Per-unit times measured on the way go to the
tuner too (they refine its cost table). When the tuner has converged, the pipeline runs its best.

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

from . import tuner_states as states
from .pipeconfig import PipelineConfig, parse_config

log = logging.getLogger(__name__)


@dataclass
class WindowPolicy:
    warmup: int = 2            # frames of a new epoch not measured (caches, first-touch, switch)
    min_frames: int = 6
    max_frames: int = 40
    rel_precision: float = 0.03  # stop when the bottleneck's standard error is within this share
    max_seconds: float = 20.0  # a window never lasts longer (slow boards, sparse traffic)


@dataclass
class _Window:
    config: PipelineConfig
    epoch: int
    started: float
    seen: int = 0
    periods: list[list[float]] = field(default_factory=list)   # per stage: compute_ms / replicas

    def bottleneck(self) -> tuple[float, float]:
        """Median bottleneck period (ms) and its relative standard error.

        NOTE: medians, because on a shared machine a few frames preempted by other processes (or
        one lucky quiet stretch) would otherwise move the fitness; the error uses the MAD."""
        medians = [float(np.median(p)) for p in self.periods]
        i = int(np.argmax(medians))
        p = np.asarray(self.periods[i])
        if len(p) < 2:
            return medians[i], math.inf
        sigma = 1.4826 * float(np.median(np.abs(p - medians[i])))
        return medians[i], 1.2533 * sigma / math.sqrt(len(p)) / medians[i]


class LiveTuning:
    def __init__(self, tuner, pipeline, *, policy: WindowPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic, on_converged: Callable | None = None):
        self.tuner = tuner
        self.pipeline = pipeline
        self.policy = policy or WindowPolicy()
        self.clock = clock
        self.on_converged = on_converged
        self._window: _Window | None = None
        self._serving_best = False

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
                continue
            n_stages = len(w.config.stages)
            if not w.periods:
                w.periods = [[] for _ in range(n_stages)]
            for t in o.stages:
                w.periods[t.stage].append(t.compute_ms / w.config.stages[t.stage].replicas)

    def _window_done(self, w: _Window) -> bool:
        measured = w.seen - self.policy.warmup
        if self.clock() - w.started > self.policy.max_seconds and measured >= 2:
            return True
        if measured < self.policy.min_frames or not w.periods or any(len(p) == 0 for p in w.periods):
            return False
        if measured >= self.policy.max_frames:
            return True
        return w.bottleneck()[1] <= self.policy.rel_precision

    def _unit_times(self, config: PipelineConfig) -> dict[int, float]:
        """Mean measured ms per unit of ``config``'s stages at the current frequencies."""
        table = self.pipeline.cost_table
        out = {}
        for stage in config.stages:
            core_type = self.pipeline.platform.cluster(stage.cluster).core_type
            for unit in range(stage.first, stage.last + 1):
                stat = table.stat(unit, core_type, stage.cores, self._freq_of(stage.cluster))
                if stat is not None and stat.n:
                    out[unit] = stat.mean
        return out

    def _freq_of(self, cluster: str):
        from .platform import effective_speed
        c = self.pipeline.platform.cluster(cluster)
        if self.pipeline.platform.source == "emulate":
            return round(effective_speed(c, self.pipeline.sysfs_root), 4)
        return None

    def step(self) -> None:
        """Finish a measurement window that is complete; start the next evaluation if any."""
        w = self._window
        if w is not None:
            if not self._window_done(w):
                return
            if w.periods and all(w.periods):
                period, rse = w.bottleneck()
                fps = 1000.0 / period
                log.info("evaluated %s: %.2f fps (±%.1f%%, %d frames)", w.config, fps, 100 * rse, w.seen)
                self.tuner.tell(w.config, fps, unit_times=self._unit_times(w.config) or None)
            self._window = None
        if self.tuner.state == states.PINNED:
            self._switch(parse_config(self.tuner.pinned))
            return
        candidate = self.tuner.ask()
        if candidate is not None:
            self._serving_best = False
            epoch = self._switch(candidate, force=True)
            self._window = _Window(candidate, epoch, self.clock())
            return
        best = self.tuner.best
        if best is not None and not self._serving_best:
            self._switch(best[0])
            self._serving_best = True
            if self.on_converged:
                self.on_converged(best[0], best[1])

    def _switch(self, config: PipelineConfig, force: bool = False) -> int:
        if force or str(config) != str(self.pipeline.config):
            return self.pipeline.reconfigure(config)
        return self.pipeline.epoch

    def retune(self, speed_factors: dict[str, float] | None) -> None:
        self._window = None
        self._serving_best = False
        self.tuner.retune(speed_factors)
