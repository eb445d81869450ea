"""What a running pipeline tells about itself, and where the process feeding it should run.

``PipelineReports`` is a base of ``Pipeline`` (tunerd.pipeline.executor): the stats over the recent
window of the current epoch (per-stage means, the bottleneck, fps, latency, switches), the workers'
own account of themselves (``worker_info``), this process's CPU time on frames, and the advice drawn
from the measured stage periods: the CPUs where the feeding process takes least from the stages
(``host_cpus``), acted on by ``place_host`` and undone by ``close``.
"""
from __future__ import annotations

import logging

import numpy as np

from . import worker as worker_mod
from .outcomes import clock
from ..pipeconfig import host_cpus

log = logging.getLogger(__name__)


class PipelineReports:
    """The reports and host placement of ``Pipeline``; it keeps no state of its own.

    It reads the books ``Pipeline.__init__`` sets and the frame path keeps (``_current``,
    ``_recent``, ``_switches``, ``frames_done``, ``frames_failed``, ``restarts``, ``_main_s``,
    ``_infos``, ``_res``), the settings ``platform`` and ``_allowed_host_cpus``, and writes
    ``host_placement``; ``worker_info`` waits on the frame path's ``_service``.
    """

    @property
    def main_seconds(self) -> float:
        """CPU seconds this process has spent on frames: copies in and out, messages, books."""
        return self._main_s

    def worker_info(self, timeout: float = 5.0) -> list[dict]:
        """Ask every worker for its pid, thread affinities, BLAS threads, cached plans."""
        self._check_open()
        want = [w for w in self._res.workers if not w.dead]
        self._infos.clear()
        for w in want:
            self._send(w, ("info",))
        deadline = clock() + timeout
        while len(self._infos) < len(want) and clock() < deadline:
            self._service(min(0.1, deadline - clock()))
        return [self._infos[w.wid] for w in want if w.wid in self._infos]

    def stats(self) -> dict:
        """Per-stage means over the recent window of the current epoch, the bottleneck, fps."""
        ep = self._current
        recent = list(self._recent.get(ep.number, ()))
        stages = []
        for i, st in enumerate(ep.config.stages):
            rows = [t for _, _, timings in recent for t in timings if t.stage == i]
            mean = (lambda f: float(np.mean([f(r) for r in rows])) if rows else None)
            compute = mean(lambda r: r.compute_ms)
            stages.append({"stage": i, "config": str(st), "frames": len(rows), "compute_ms": compute,
                           "wait_ms": mean(lambda r: r.wait_ms), "blocked_ms": mean(lambda r: r.blocked_ms),
                           "handoff_ms": mean(lambda r: r.handoff_ms),
                           "profiling_ms": mean(lambda r: r.profiling_ms),
                           "period_ms": compute / st.replicas if compute is not None else None})
        periods = [s["period_ms"] for s in stages]
        bottleneck = (int(np.argmax(periods)) if all(p is not None for p in periods) else None)
        fps = None
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            fps = (len(recent) - 1) / (recent[-1][0] - recent[0][0])
        return {"epoch": ep.number, "config": str(ep.config), "frames_done": self.frames_done,
                "frames_failed": self.frames_failed, "restarts": self.restarts, "window": len(recent),
                "fps": fps, "latency_ms": (float(np.median([lat for _, lat, _ in recent])) * 1000
                                          if recent else None),
                "backend": self.backend.name,
                "stages": stages, "bottleneck": bottleneck, "switches": list(self._switches),
                "main_ms_per_frame": (1000 * self._main_s / self.frames_done if self.frames_done else None)}

    def host_cpus(self, min_frames: int = 4) -> tuple[int, ...]:
        """CPUs where the process feeding this pipeline takes the least from its stages
        (``pipeconfig.host_cpus``), from the current epoch's measured stage periods once every
        stage has ``min_frames`` in the window; () when there is no advice yet. CPUs this process
        may use outside the platform (an emulated board on part of a machine) come first."""
        outside = tuple(sorted(self._allowed_host_cpus - set(self.platform.cpus)))
        if outside:
            return outside
        stages = self.stats()["stages"]
        periods = None
        if all(st["frames"] >= min_frames for st in stages):
            periods = [st["period_ms"] for st in stages]
        return host_cpus(self._current.config, self.platform.clusters, periods)

    def place_host(self) -> tuple[int, ...]:
        """Move every thread of the calling process to ``host_cpus()`` (within the CPUs it was
        allowed when the pipeline started); returns where its threads run now (() = never moved).

        For a process whose job is feeding this pipeline (the daemon, ``tunerd bench``): its
        sockets and frame copies then come out of a stage's slack, not the bottleneck's time.
        Call it now and then (a few times a second at most); it moves the threads only when the
        advice changes, and ``close`` gives the process its CPUs back.
        """
        cpus = tuple(c for c in self.host_cpus() if c in self._allowed_host_cpus)
        if cpus and cpus != self.host_placement:
            try:
                worker_mod.pin_all_threads(cpus)
            except OSError as err:
                log.debug("cannot move this process's threads to CPUs %s: %s", cpus, err)
            else:
                log.debug("feeding process moved to CPUs %s (pipeline %s)", cpus, self._current.config)
                self.host_placement = cpus
        return self.host_placement

    def _give_host_cpus_back(self) -> None:
        """Undo ``place_host``: this process's threads back on every CPU it was allowed at the start."""
        if self.host_placement:
            try:
                worker_mod.pin_all_threads(self._allowed_host_cpus)
            except OSError as err:
                log.warning("cannot give this process back CPUs %s: %s", sorted(self._allowed_host_cpus), err)
            self.host_placement = ()
