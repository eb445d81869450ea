"""What a pipeline hands back: one ``Outcome`` per submitted frame, its stages' ``StageTiming``, and
the ``PipelineError`` raised when the pipeline cannot go on, and ``clock``, the clock their times
are on.

Plain records with no behaviour, kept apart from the executor so that the readers of outcomes (the
daemon's live evaluation, the benchmarks, tests that build outcomes by hand) need not pull in the
machinery that makes them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TunerdError

clock = time.perf_counter   # the workers' clock too (CLOCK_MONOTONIC)


class PipelineError(TunerdError):
    """The pipeline cannot go on (closed, or its workers keep dying)."""


@dataclass(frozen=True)
class StageTiming:
    """One stage's part of one frame, in ms. ``compute`` (wall) includes the emulated stretch;
    ``wait`` (wall) is time waiting for the input, ``blocked`` (wall) waiting for a free output
    slot; ``handoff`` is the worker's CPU time to receive, release and send, ``profiling`` its CPU
    time reading frequencies for the cost table (the extra clock reads of per-unit timing are
    inside ``compute``). ``freq`` is the effective speed (emulated) or kHz (real; None unknown)."""

    stage: int
    replica: int
    compute_ms: float
    wait_ms: float
    blocked_ms: float
    handoff_ms: float
    profiling_ms: float
    freq: int | float | None
    sampled: bool = False                # per-unit times were taken (run_timed) on this frame
    cpu_share: float | None = None       # CPU time / (wall x cores) while computing: < 1 when other
    #                                      processes held the stage's cores (None: not computed)


@dataclass
class Outcome:
    frame_id: Any
    ok: bool
    output: np.ndarray | None
    epoch: int
    error: str | None = None
    latency: float = 0.0                 # seconds from submit to the output reaching this process
    stages: tuple[StageTiming, ...] = ()
    attempts: int = 1
    done_at: float = 0.0                 # time.perf_counter() when it reached this process
