"""Calibration: time a sweep of synthetic layers on every cluster and core count of this machine,
and fit the cost model's coefficients per core type (:mod:`tunerd.costs.costmodel`).

The pieces: the layers (:mod:`tunerd.costs.calibration_sweep`), the pinned measuring processes
(:mod:`tunerd.costs.calibration_child`), the fit (:mod:`tunerd.costs.calibration_fit`) and the file
(:mod:`tunerd.costs.calibration_file`). Here: measuring the sweep on a platform and the
:func:`calibrate` entry point.

On an emulated cluster the measured times are multiplied by 1 / its nominal speed (what its workers
do to frames at full clock): the costs are nominal, like the core type ``emu@SPEED`` they are filed
under; a throttle in force while calibrating is left out, since the daemon applies the current speed
over the nominal one.

A calibration is of one backend (``numpy`` or ``onnxruntime``, tunerd.backends): the sweep runs
through that backend's runners, because the same layer costs another time on other kernels
(onnxruntime's depthwise convs and pools 2-10x faster than numpy's, its batch-1 fc and LRN slower),
and the file says which.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import time
from typing import Sequence

from ..errors import ConfigError, PlatformError
from ..platform.clusters import core_type_speeds
from .calibration_child import Child
from .calibration_file import Calibration, machine_info
from .calibration_fit import Sample, fit, llc_bytes
from .calibration_sweep import FULL_SWEEP, QUICK_SWEEP

log = logging.getLogger(__name__)


class Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.done = max(1, total), 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self._last_decile = -1

    def step(self, label: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        frac = self.done / self.total
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write(f"\rcalibrate [{bar:<30}] {self.done}/{self.total} {label:<24} "
                              f"{time.monotonic() - self.t0:5.0f}s")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(f"calibrate: {self.done}/{self.total} ({frac:.0%}) {label}\n")
            self.stream.flush()


def measure(platform, sweep: Sequence[tuple[str, tuple]], *, quick: bool = False, progress: bool = True,
            max_cores: int | None = None, backend: str = "numpy") -> list[Sample]:
    """Time every layer of ``sweep`` on every cluster of ``platform`` at 1..cores cores, run by
    ``backend`` (a concrete name: numpy or onnxruntime).

    One child per (cluster, cores), all alive at once and taking turns layer by layer, so every
    configuration is measured under the same machine load.
    """
    jobs = []
    # NOTE: a core type's costs are at its fastest cluster's clock: a slower-clocked cluster of the
    # same type (a phone's gold beside its prime) is timed as it runs, then brought to that clock
    clock = core_type_speeds(platform)
    for cluster in platform.clusters:
        speed = cluster.speed if platform.source == "emulate" else 1.0 / clock[cluster.name]
        if not speed > 0:
            raise PlatformError(f"cluster {cluster.name!r}: speed {speed!r} is not > 0")
        for n in range(1, min(cluster.cores, max_cores or cluster.cores) + 1):
            jobs.append((cluster, n, speed))
    bar = Progress(len(jobs) * len(sweep), enabled=progress)
    # NOTE: several BLAS threads are stalled by any neighbour on any of their cores: multi-core
    # timings need more runs for the fastest tenth to be clean
    base = {"kind": "layers", "backend": backend, "min_time_s": 0.02 if quick else 0.2,
            "min_runs": 5 if quick else 15, "max_runs": 40 if quick else 400}
    multi = {**base, "min_time_s": 0.04 if quick else 0.5, "min_runs": 10 if quick else 40}
    samples: list[Sample] = []
    children: list[Child] = []
    try:
        for cluster, n, _ in jobs:
            children.append(Child(cluster.cpus[:n], n))
        for i, (op, params) in enumerate(sweep):
            for (cluster, n, speed), child in zip(jobs, children):
                if len(children) > 1:
                    # NOTE: idle BLAS threads of the previous child spin for a while before they
                    # sleep; let them settle so they do not steal this child's cores
                    time.sleep(0.02)
                rec = child.request({**(base if n == 1 else multi), "layers": [[op, list(params)]],
                                     "index": [i]})[0]
                samples.append(Sample(i, cluster.core_type, n, float(rec["ms"]) / speed,
                                      int(rec.get("clean", 3)) >= 3))
                bar.step(f"{cluster.name}:{n} {op}")
    finally:
        for child in children:
            child.close()
    return samples


def backend_name(backend) -> str:
    """The concrete backend a calibration is of: ``numpy`` or ``onnxruntime`` (``auto`` and None
    resolve as tunerd.backends.resolve does; a Backend gives its name)."""
    from ..backends import get_backend
    return get_backend(backend).name


def calibrate(platform, *, quick: bool = False, sysfs_root: str | os.PathLike = "/sys",
              progress: bool = True, backend="numpy") -> Calibration:
    """Measure and fit ``platform`` (a Platform, or a spec string; real or emulated only) on
    ``backend`` (numpy, onnxruntime, auto or a Backend)."""
    chosen = backend_name(backend)
    if not hasattr(platform, "clusters"):
        from ..platform.spec import resolve_platform
        platform = resolve_platform(str(platform), sysfs_root=sysfs_root)
    if platform.source == "board":
        raise ConfigError(f"platform {platform.spec!r} is a simulated board: its costs come from the "
                          f"board file; calibrate real or emulated cores")
    sweep = QUICK_SWEEP if quick else FULL_SWEEP
    samples = measure(platform, sweep, quick=quick, progress=progress, backend=chosen)
    # NOTE: the caches are the real machine's, whatever tree --sysfs-root points at
    llc = {c.core_type: llc_bytes(c.cpus[0]) for c in platform.clusters}
    coeffs, report = fit(samples, sweep, quick=quick, llc=llc)
    from ..platform.clusters import effective_speed
    clusters = [{"name": c.name, "core_type": c.core_type, "cpus": list(c.cpus), "speed": c.speed,
                 "effective_speed": round(effective_speed(c, sysfs_root), 4) if platform.source == "emulate" else 1.0,
                 "llc_bytes": llc[c.core_type]}
                for c in platform.clusters]
    return Calibration(
        coefficients=coeffs,
        platform={"spec": platform.spec, "source": platform.source, "clusters": clusters},
        date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        machine=machine_info(chosen), quick=quick, fit=report, backend=chosen,
        samples=[{"op": sweep[s.layer][0], "params": list(sweep[s.layer][1]), "core_type": s.core_type,
                  "cores": s.cores, "ms": float(f"{s.ms:.7g}"), "clean": s.clean} for s in samples])
