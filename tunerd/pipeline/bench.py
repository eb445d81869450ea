"""`tunerd bench --pipeline`: throughput of one pipeline config, in-process, no sockets.

Frames stream through a ``Pipeline`` with the pipeline kept full; fps is measured in steady state,
from the outcome of the last warm-up frame to the outcome of the last timed one. Besides fps and
latency it reports, per stage, the mean compute / wait-for-input / blocked-on-output times, the
bottleneck (largest compute / replicas), and the overheads as shares of the bottleneck period:

- hand-off: the bottleneck worker's own time per frame to receive, release and send headers;
- profiling: the worker's CPU time reading the frequency, plus the clock reads per-unit timing
  adds on sampled frames (counted, at a per-read cost the worker measures when it starts);
- main: the main process's CPU time per frame (copy in, copy out, messages, books, cost table).

Like the daemon, the process moves its own threads off the bottleneck stage's cores while it
streams (``Pipeline.place_host``), so the two measure the same arrangement.

Hand-off and profiling are CPU times of the worker's thread (see tunerd.pipeline.worker), so other
processes holding the core do not count as overhead.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..platform.spec import resolve_platform


def stream(pipe, x: np.ndarray, count: int, *, first_id: int = 0, poll_s: float = 0.05,
           on_submit=None) -> list:
    """Keep ``pipe`` full with ``count`` copies of ``x``; return the outcomes (``received``: when
    each reached the main process, its ``done_at``). ``on_submit(i)`` runs before frame i."""
    outcomes: list = []
    sent = 0
    while len(outcomes) < count:
        while sent < count:
            if on_submit is not None:
                on_submit(sent)
            if not pipe.submit(first_id + sent, x):
                break
            sent += 1
        got = pipe.poll(poll_s)
        for o in got:
            o.received = o.done_at
            if not o.ok:
                raise ConfigError(f"frame {o.frame_id} failed: {o.error}")
        outcomes += got
    return outcomes


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def summarize(config, outcomes: list) -> dict[str, Any]:
    """Per-stage means, bottleneck and overhead shares from the outcomes of timed frames."""
    stages = []
    for i, st in enumerate(config.stages):
        rows = [t for o in outcomes for t in o.stages if t.stage == i]
        compute = _mean(t.compute_ms for t in rows) or 0.0
        stages.append({"stage": i, "config": str(st), "replicas": st.replicas, "compute_ms": compute,
                       "wait_ms": _mean(t.wait_ms for t in rows), "blocked_ms": _mean(t.blocked_ms for t in rows),
                       "handoff_ms": _mean(t.handoff_ms for t in rows),
                       "profiling_ms": _mean(t.profiling_ms for t in rows) or 0.0,
                       "cpu_share": _mean(t.cpu_share for t in rows if t.cpu_share is not None),
                       "period_ms": compute / st.replicas})
    b = int(np.argmax([s["period_ms"] for s in stages]))
    period = stages[b]["period_ms"]
    return {"stages": stages, "bottleneck_stage": b, "bottleneck_config": stages[b]["config"],
            "bottleneck_period_ms": period,
            "handoff_overhead_pct": 100 * stages[b]["handoff_ms"] / period if period else None,
            "profiling_overhead_pct": 100 * stages[b]["profiling_ms"] / period if period else None}


PLACE_EVERY = 8     # frames between two Pipeline.place_host() calls while streaming


def measure(pipe, x: np.ndarray, frames: int, warmup: int, *, first_id: int = 0,
            place_host: bool = False) -> dict[str, Any]:
    """Stream ``warmup + frames`` frames through ``pipe`` on its current config and summarise the
    timed ones (fps in steady state, latency, per-stage figures, overheads). ``place_host``:
    move this process off the bottleneck's cores as the daemon does (``Pipeline.place_host``)."""
    if frames < 1 or warmup < 0 or frames + warmup < 2:
        raise ConfigError(f"need --frames >= 1, --warmup >= 0 and two frames in all (got {frames} and {warmup})")
    main_before, done_before = pipe.main_seconds, pipe.frames_done
    place = (lambda i: pipe.place_host() if i % PLACE_EVERY == 0 else None) if place_host else None
    outcomes = stream(pipe, x, warmup + frames, first_id=first_id, on_submit=place)
    timed = outcomes[warmup:]
    t0 = outcomes[warmup - 1].received if warmup else outcomes[0].received
    n = frames if warmup else frames - 1
    span = timed[-1].received - t0
    # latency in steady state: frames submitted after the first outcome (not queued behind startup)
    steady = [o for o in timed if o.received - o.latency >= outcomes[0].received] or timed
    latencies = [1000 * o.latency for o in steady]
    config = pipe.config
    result = {"config": str(config), "frames": frames, "fps": n / span if span > 0 else float("inf"),
              "latency_ms_median": float(np.median(latencies)),
              "latency_ms_p90": float(np.percentile(latencies, 90)),
              "first_out": outcomes[0].received}
    result.update(summarize(config, timed))
    done = pipe.frames_done - done_before
    main_ms = 1000 * (pipe.main_seconds - main_before) / done if done else None
    period = result["bottleneck_period_ms"]
    result["main_ms_per_frame"] = main_ms
    result["main_overhead_pct"] = 100 * main_ms / period if main_ms is not None and period else None
    return result


def bench_pipeline(model, config_text: str, *, platform_spec: str = "auto", sysfs_root: str = "/sys",
                   frames: int = 20, warmup: int = 3, ring_slots: int = 4, profile_every: int | None = None,
                   place_host: bool = True, backend: str | None = "numpy") -> dict:
    from .executor import Pipeline
    platform = resolve_platform(platform_spec, sysfs_root=sysfs_root)
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    t_start = time.perf_counter()
    with Pipeline(model, config_text, platform, sysfs_root=sysfs_root, ring_slots=ring_slots,
                  profile_every=profile_every, backend=backend) as pipe:
        measured = measure(pipe, x, frames, warmup, place_host=place_host)
        measured["host_cpus"] = list(pipe.host_placement) or None
    result = {"model": model.name, "input_shape": list(model.input_shape), "mode": "pipeline",
              "backend": measured.get("backend") or str(backend),
              "platform": platform.describe(), "startup_s": measured.pop("first_out") - t_start}
    result.update(measured)
    return result
