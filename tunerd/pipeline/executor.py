"""The pipeline executor, main-process side: stage workers, rings, epochs, outcomes.

``Pipeline(model, config, platform)`` runs a model as a pipeline of stage worker processes
(tunerd.pipeline.worker), each pinned to a core set of one cluster, handing tensors over through
shared-memory slot rings (tunerd.pipeline.shm). The main process does no compute: it copies each submitted
frame into a slot of the first ring, passes small headers, copies each output out of the last ring
and keeps the books. It is driven by a poll loop and never blocks longer than asked::

    with Pipeline(model, "0-3@big:1 | 4-7@little:1", "emulate:big=0@1.0,little=1@0.5") as pipe:
        pipe.submit(0, frame)            # False when full: poll, then try again
        for outcome in pipe.poll(0.1):   # in submission order, exactly one per frame
            ...

Epochs. Every config in force has an epoch number; ``reconfigure`` starts a new epoch at once:
frames submitted from then on enter it, frames already inside finish on the old one (each worker
finishes its old role before taking its new one), and workers are reused wherever one can take a
new role (same core set first), so a switch costs a re-pin and maybe a new plan, not a process.
Each epoch has its own rings and links; rings return to a pool when their epoch has drained.

Outcomes. For every submitted frame exactly one ``Outcome`` comes out of ``poll``, in submission
order: a result (``ok``, ``output``: a new array owned by the caller) or an error. A worker that
dies is noticed by its process sentinel the next time ``poll``/``submit`` looks (a poll loop that
calls ``poll`` at least every second notices within a second); all workers are then restarted on
the current config and the frames that were inside run once more (``max_retries``) or fail; a
re-run frame carries the epoch it re-entered with. Workers that keep dying without a frame done in
between break the pipeline for good (every frame fails, ``submit`` raises PipelineError).
The pipeline keeps a reference to each submitted array until its outcome is out (to re-run it);
don't modify it meanwhile. One thread drives a pipeline; it is not thread-safe.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import select
import socket
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from multiprocessing.reduction import send_handle
from typing import Any, Callable

import numpy as np

from . import worker as worker_mod
from .measured_costs import CostTable
from ..errors import ConfigError, ModelError, TunerdError
from ..model.loader import check_frame
from ..pipeconfig import PipelineConfig, assign_cpus, host_cpus, parse_config, validate
from ..platform.clusters import Platform, resolve_platform
from .shm import Ring, slot_size

log = logging.getLogger(__name__)
clock = time.perf_counter   # the workers' clock too (CLOCK_MONOTONIC)
cpu_clock = time.thread_time  # for this process's own cost per frame

STOP_GRACE_S = 2.0          # how long close() lets workers finish before killing them
MAX_FRUITLESS_RESTARTS = 3  # restarts in a row without a frame done: the pipeline is broken


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


@dataclass(eq=False)
class _Record:
    frame_id: Any
    array: np.ndarray
    t_submit: float
    seq: int | None = None               # None: waiting in the backlog (not inside the pipeline)
    epoch: int = -1
    attempts: int = 0
    outcome: Outcome | None = None


@dataclass(eq=False)   # identity: a worker is itself, not its field values
class _Worker:
    wid: int
    process: Any
    ctl: Any
    cpus: tuple[int, ...]
    threads: int
    pid: int
    units: tuple[int, int] | None = None     # unit range of its latest role
    epochs: set = field(default_factory=set)  # epochs it still has a role in
    rings: set = field(default_factory=set)   # ring ids it has mapped
    retiring: bool = False
    dead: bool = False
    error: str | None = None                  # what it said before it died
    poller: Any = None                        # select.poll on ctl alone (cheap "anything more?")

    def __post_init__(self) -> None:
        self.poller = select.poll()
        self.poller.register(self.ctl.fileno(), select.POLLIN)

    def readable(self) -> bool:
        return bool(self.poller.poll(0))


@dataclass(eq=False)
class _Epoch:
    number: int
    config: PipelineConfig
    start: int
    rings: list[Ring]
    roles: list[list[_Worker]]
    requested_at: float
    end: int | None = None
    pending: set = field(default_factory=set)    # worker ids that have not finished their role
    released: set = field(default_factory=set)   # input-ring frame indices stage 0 has released
    first_out: float | None = None


class _Resources:
    """What must be released however the pipeline goes away (close, garbage, interpreter exit)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []
        self.rings: list[Ring] = []

    def shutdown(self) -> None:
        for w in self.workers:
            if w.process.is_alive():
                w.process.kill()
        for w in self.workers:
            w.process.join(1.0)
            w.ctl.close()
        self.workers.clear()
        for ring in self.rings:
            ring.close()
        self.rings.clear()


def _boundary_shapes(model) -> list[tuple[int, ...]]:
    """Shape of the tensor entering unit u (index u) and leaving the last unit (index n)."""
    units = model.units
    shapes = [tuple(model.shapes[u.input]) for u in units]
    return shapes + [tuple(model.shapes[units[-1].output])]


class Pipeline:
    """Runs ``model`` as the pipeline ``config`` on ``platform`` (a Platform or a spec string).

    ``ring_slots``: slots per ring (frames a cut can hold; >= replicas on both sides + 1 keeps every
    replica busy). ``profile_every``: per-unit times every k-th frame (0: never). ``max_inflight``:
    frames submitted and not yet polled (default: no bound beyond the rings). ``opener``: a picklable
    ``opener(path) -> model`` the workers use to open ``model.path`` (default ``Model.open``).
    """

    def __init__(self, model, config: PipelineConfig | str, platform: Platform | str | None = None, *,
                 sysfs_root: str | os.PathLike | None = None, ring_slots: int = 4, profile_every: int = 8,
                 max_inflight: int | None = None, max_retries: int = 1, window: int = 64,
                 opener: Callable | None = None, start_method: str = "spawn"):
        self._closed = True   # until constructed: close() and __del__ are safe on a half-built one
        if ring_slots < 2:
            raise ConfigError(f"ring_slots must be >= 2, got {ring_slots}")
        if profile_every < 0:
            raise ConfigError(f"profile_every must be >= 0, got {profile_every}")
        if start_method == "fork":
            raise ConfigError("start method 'fork' is refused: use 'spawn' or 'forkserver'")
        self.sysfs_root = os.fspath(sysfs_root) if sysfs_root is not None else "/sys"
        if platform is None or isinstance(platform, str):
            platform = resolve_platform(platform or "auto", sysfs_root=self.sysfs_root)
        if platform.source == "board":
            raise ConfigError(f"platform {platform.spec or 'board'} is simulated: it cannot run frames")
        self.platform = platform
        self.model = model
        if getattr(model, "path", None) is None:
            raise ModelError("the model has no stored copy to map (load it with load_model(..., store=True))")
        self.n_units = len(model.units)
        self._shapes = _boundary_shapes(model)
        self.input_shape = self._shapes[0]
        self.output_shape = self._shapes[-1]
        self.ring_slots = int(ring_slots)
        self.slot_bytes = slot_size(max(int(np.prod(s)) * 4 for s in self._shapes))
        self.profile_every = int(profile_every)
        self.max_inflight = max_inflight
        self._allowed_host_cpus = frozenset(os.sched_getaffinity(0))
        self.host_placement: tuple[int, ...] = ()   # where place_host() put this process (() = nowhere)
        self.max_retries = int(max_retries)
        self.window = int(window)
        self._opener = opener
        self._ctx = multiprocessing.get_context(start_method)
        self._emulated = platform.source == "emulate"
        config = self._check_config(config)

        self._res = _Resources()
        self._finalizer = weakref.finalize(self, _Resources.shutdown, self._res)
        self._free_rings: list[Ring] = []
        self._poll_set = None
        self._epochs: dict[int, _Epoch] = {}
        self._next_epoch = 0
        self._next_wid = 0
        self._next_seq = 0
        self._order: deque[_Record] = deque()      # submitted, outcome not yet polled
        self._inflight: dict[int, _Record] = {}    # seq -> record
        self._backlog: deque[_Record] = deque()    # to (re)enter the pipeline
        self._recent: dict[int, deque] = {}        # epoch -> (t_out, latency, timings) of recent frames
        self._last_out: float | None = None
        self._switches: deque[dict] = deque(maxlen=16)
        self._fruitless = 0
        self._broken: str | None = None
        self.frames_done = 0
        self.frames_failed = 0
        self.restarts = 0
        self.cost_table = CostTable()
        self._main_s = 0.0                         # this process's CPU time handling frames
        self._infos: dict[int, dict] = {}          # worker id -> its answer to "info"
        self._closed = False
        try:
            self._current = self._start_epoch(config, clock())
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> PipelineConfig:
        return self._current.config

    @property
    def epoch(self) -> int:
        return self._current.number

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:   # NOTE: never raise from a finalizer; the weakref finalizer still runs
            pass

    def submit(self, frame_id: Any, array: np.ndarray) -> bool:
        """Put a frame in; False (nothing done) when the pipeline is full: poll, then retry."""
        self._check_open()
        arr = self._check_input(array)
        if self._backlog or not self._input_free():
            # NOTE: only now hear from the workers: a slot may have been released meanwhile (asking
            # first would cost a poll of every worker per frame for nothing when there is room)
            self._service(0.0)
            self._check_open()
        if self._backlog or (self.max_inflight is not None and len(self._order) >= self.max_inflight):
            return False
        if not self._input_free():
            return False
        u0 = cpu_clock()
        rec = _Record(frame_id, arr, clock())
        self._order.append(rec)
        self._enter(rec)
        self._main_s += cpu_clock() - u0
        return True

    def poll(self, timeout: float = 0.0) -> list[Outcome]:
        """Outcomes ready now, in submission order; waits up to ``timeout`` s for the first one."""
        deadline = clock() + max(0.0, timeout)
        while True:
            idle = self._closed or self._broken is not None    # no workers: nothing will come
            if not idle:
                self._service(max(0.0, deadline - clock()) if not self._front_done() else 0.0)
            if idle or self._front_done() or clock() >= deadline:
                break
        out = []
        while self._order and self._order[0].outcome is not None:
            out.append(self._order.popleft().outcome)
        return out

    def drain(self, timeout: float = 30.0) -> list[Outcome]:
        """Poll until every submitted frame has its outcome (or ``timeout`` s pass)."""
        deadline = clock() + timeout
        out = []
        while self._order and clock() < deadline:
            out += self.poll(min(0.2, max(0.0, deadline - clock())))
        return out

    @property
    def main_seconds(self) -> float:
        """CPU seconds this process has spent on frames: copies in and out, messages, books."""
        return self._main_s

    @property
    def pending(self) -> int:
        """Frames submitted whose outcome has not been polled yet."""
        return len(self._order)

    def reconfigure(self, config: PipelineConfig | str) -> int:
        """Switch to ``config`` at an epoch boundary (now); returns the new epoch number."""
        self._check_open()
        config = self._check_config(config)
        t0 = clock()
        self._service(0.0)
        self._check_open()              # that service may have found the pipeline broken
        old = self._current
        # NOTE: the new epoch first: if it cannot start (a spawn, socket or shared memory fails),
        # the old one is still open and current, and frames keep flowing through it
        try:
            new = self._start_epoch(config, t0)
        except OSError as err:
            raise PipelineError(f"cannot start {config} ({type(err).__name__}: {err}); still running "
                                f"{old.config}") from err
        old.end = new.start
        for w in {id(w): w for stage in old.roles for w in stage}.values():
            self._send(w, ("end", old.number, old.end))
        self._current = new
        self._maybe_retire(old)
        return new.number

    def handles(self) -> list:
        """Objects (connections and process sentinels) a poll loop can wait on with
        ``multiprocessing.connection.wait``: one becomes ready when ``poll`` has something to do."""
        if self._closed:
            return []
        return [w.ctl for w in self._res.workers] + [w.process.sentinel for w in self._res.workers]

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until there is something for ``poll`` (or ``timeout``); True if there is."""
        if self._front_done():
            return True
        return bool(mp_wait(self.handles(), timeout))

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._res.workers if not w.dead]

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

    def close(self) -> None:
        """Stop the workers (killing those that do not stop within a grace period), free the
        shared memory, fail every frame still inside (its outcome comes from ``poll``), and give
        this process back the CPUs ``place_host`` took from it."""
        if self._closed:
            return
        self._closed = True
        if self.host_placement:
            try:
                worker_mod.pin_all_threads(self._allowed_host_cpus)
            except OSError as err:
                log.warning("cannot give this process back CPUs %s: %s", sorted(self._allowed_host_cpus), err)
            self.host_placement = ()
        for w in self._res.workers:
            if not w.dead:
                self._send(w, ("stop",), quiet=True)
        deadline = clock() + STOP_GRACE_S
        for w in self._res.workers:
            w.process.join(max(0.0, deadline - clock()))
        self._finalizer()
        self._free_rings.clear()
        self._epochs.clear()
        for rec in self._order:
            if rec.outcome is None:
                self._fail(rec, "the pipeline was closed before the frame finished")

    # ------------------------------------------------------------------ checks
    def _check_open(self) -> None:
        if self._closed:
            raise PipelineError("the pipeline is closed")
        if self._broken:
            raise PipelineError(self._broken)

    def _check_config(self, config) -> PipelineConfig:
        if isinstance(config, str):
            config = parse_config(config)
        elif not isinstance(config, PipelineConfig):
            raise ConfigError(f"pipeline config must be text or a PipelineConfig, not {type(config).__name__}")
        return validate(config, self.n_units, self.platform.clusters)

    def _check_input(self, array) -> np.ndarray:
        return check_frame(array, self.input_shape)

    # ------------------------------------------------------------------ epochs and workers
    def _ring(self) -> Ring:
        if self._free_rings:
            return self._free_rings.pop()
        ring = Ring.create(len(self._res.rings), self.ring_slots, self.slot_bytes)
        self._res.rings.append(ring)
        return ring

    def _start_epoch(self, config: PipelineConfig, requested_at: float) -> _Epoch:
        stages = config.stages
        cpu_sets = assign_cpus(config, self.platform.clusters)
        number = self._next_epoch
        self._next_epoch += 1
        free = [w for w in self._res.workers if not w.retiring and not w.dead]
        roles: list[list[_Worker]] = []
        for i, stage in enumerate(stages):
            row = []
            for cpus in cpu_sets[i]:
                w = self._pick(free, tuple(cpus), (stage.first, stage.last))
                if w is None:
                    w = self._spawn(tuple(cpus), stage.cores)
                else:
                    free.remove(w)
                row.append(w)
            roles.append(row)
        rings = []
        try:
            for _ in range(len(stages) + 1):
                rings.append(self._ring())
        except BaseException:
            self._free_rings.extend(rings)
            raise
        ep = _Epoch(number, config, self._next_seq, rings, roles, requested_at)
        self._epochs[number] = ep
        self._recent[number] = deque(maxlen=self.window)
        try:
            self._link_and_give_roles(ep, cpu_sets)
        except BaseException:
            # NOTE: a half-started epoch must not linger: it ends before its first frame, so the
            # workers that got a role drop it, and the usual retirement returns its rings
            ep.end = ep.start
            for w in {w.wid: w for stage in roles for w in stage}.values():
                self._send(w, ("end", number, ep.start), quiet=True)
            self._maybe_retire(ep)
            raise
        # workers without a role: keep a few idle ones for reuse, let the others go
        keep = len(self.platform.cpus)
        active = sum(1 for w in self._res.workers if not w.retiring and not w.dead)
        for w in free:
            if active <= keep:
                break
            w.retiring = True
            active -= 1
            self._send(w, ("exit",))
        return ep

    def _pick(self, free: list[_Worker], cpus: tuple[int, ...], units: tuple[int, int]) -> _Worker | None:
        """The free worker that can take this role most cheaply: same cores and units, same cores,
        overlapping cores, any."""
        def score(w: _Worker) -> tuple:
            same = set(w.cpus) == set(cpus)
            return (same and w.units == units, same, bool(set(w.cpus) & set(cpus)), -len(w.epochs))
        return max(free, key=score, default=None)

    def _link_and_give_roles(self, ep: _Epoch, cpu_sets) -> None:
        """Links (a socketpair for every producer replica x consumer replica of each inner cut),
        then every worker's role in ``ep``."""
        roles, stages = ep.roles, ep.config.stages
        links: list = []
        try:
            for i in range(len(stages) - 1):
                links.append([])
                for _ in roles[i]:
                    links[i].append([])
                    for _ in roles[i + 1]:
                        links[i][-1].append(socket.socketpair())
            for i in range(len(stages)):
                for a, w in enumerate(roles[i]):
                    prev = [links[i - 1][p][a][1] for p in range(len(roles[i - 1]))] if i > 0 else []
                    nxt = [links[i][a][c][0] for c in range(len(roles[i + 1]))] if i < len(stages) - 1 else []
                    self._give_role(w, ep, i, a, tuple(cpu_sets[i][a]), prev, nxt)
        finally:
            for per_cut in links:
                for per_prod in per_cut:
                    for s1, s2 in per_prod:
                        s1.close()
                        s2.close()

    def _spawn(self, cpus: tuple[int, ...], threads: int) -> _Worker:
        wid = self._next_wid
        self._next_wid += 1
        parent, child = self._ctx.Pipe(duplex=True)
        init = {"wid": wid, "cpus": cpus, "threads": threads, "model_path": os.fspath(self.model.path),
                "opener": self._opener, "sysfs_root": self.sysfs_root}
        proc = self._ctx.Process(target=worker_mod.main, args=(child, init), daemon=True,
                                 name=f"tunerd-stage-{wid}")
        proc.start()
        child.close()
        w = _Worker(wid, proc, parent, cpus, threads, proc.pid)
        self._res.workers.append(w)
        log.debug("spawned stage worker %d (pid %d) on CPUs %s", wid, proc.pid, cpus)
        return w

    def _give_role(self, w: _Worker, ep: _Epoch, i: int, a: int, cpus: tuple[int, ...], prev: list,
                   nxt: list) -> None:
        config = ep.config
        stage = config.stages[i]
        cluster = self.platform.cluster(stage.cluster)
        new_rings = [r for r in (ep.rings[i], ep.rings[i + 1]) if r.ring_id not in w.rings]
        new_rings = list({r.ring_id: r for r in new_rings}.values())
        spec = {"epoch": ep.number, "stage": i, "n_stages": len(config.stages), "replica": a,
                "replicas": stage.replicas, "start": ep.start, "first": stage.first, "last": stage.last,
                "cpus": cpus, "threads": stage.cores, "n_slots": self.ring_slots,
                "in_ring": ep.rings[i].ring_id, "out_ring": ep.rings[i + 1].ring_id,
                "in_shape": self._shapes[stage.first], "out_shape": self._shapes[stage.last + 1],
                "cluster": cluster, "emulated": self._emulated, "profile_every": self.profile_every,
                "freq_path": None if self._emulated else cluster.policy_path(self.sysfs_root, "scaling_cur_freq"),
                "new_rings": [(r.ring_id, r.n_slots, r.slot_bytes) for r in new_rings],
                "prev_links": len(prev), "next_links": len(nxt)}
        ep.pending.add(w.wid)
        w.epochs.add(ep.number)
        w.cpus, w.threads, w.units = cpus, stage.cores, (stage.first, stage.last)
        try:
            w.ctl.send(("role", spec))
            for r in new_rings:
                send_handle(w.ctl, r.fileno(), w.pid)
                w.rings.add(r.ring_id)
            for s in prev + nxt:
                send_handle(w.ctl, s.fileno(), w.pid)
        except OSError as err:
            # NOTE: it is dead or dying: its sentinel tells _service, which restarts the pipeline
            log.warning("stage worker %d (pid %d) cannot take a role: %s", w.wid, w.pid, err)

    def _maybe_retire(self, ep: _Epoch) -> None:
        """Return a drained, superseded epoch's rings to the pool."""
        if ep is self._current or ep.pending or ep.number not in self._epochs:
            return
        del self._epochs[ep.number]
        self._free_rings.extend(ep.rings)
        self._recent.pop(ep.number, None)
        for w in {w.wid: w for stage in ep.roles for w in stage}.values():
            self._send(w, ("close", ep.number))

    # ------------------------------------------------------------------ frames in
    def _input_free(self) -> bool:
        ep = self._current
        k = self._next_seq - ep.start
        return k < self.ring_slots or (k - self.ring_slots) in ep.released

    def _enter(self, rec: _Record) -> None:
        """Write ``rec`` into the current epoch's input ring and send its header to stage 0."""
        ep = self._current
        seq = self._next_seq
        k = seq - ep.start
        self._next_seq += 1
        ep.released.discard(k - self.ring_slots)
        np.copyto(ep.rings[0].view(k % self.ring_slots, self.input_shape), rec.array, casting="no")
        rec.seq, rec.epoch = seq, ep.number
        rec.attempts += 1
        self._inflight[seq] = rec
        w = ep.roles[0][k % len(ep.roles[0])]
        self._send(w, ("F", ep.number, seq, None, ()))

    def _feed(self) -> None:
        while self._backlog and not self._closed and self._input_free():
            self._enter(self._backlog.popleft())

    def _send(self, w: _Worker, msg: tuple, quiet: bool = False) -> None:
        if w.dead:
            return
        try:
            w.ctl.send(msg)
        except OSError as err:
            # NOTE: a dead worker's socket: its sentinel tells _service, which restarts the pipeline
            if not quiet:
                log.debug("send to stage worker %d failed: %s", w.wid, err)

    # ------------------------------------------------------------------ messages out
    def _front_done(self) -> bool:
        return bool(self._order) and self._order[0].outcome is not None

    def _poller(self):
        """One select.poll over every live worker's connection and sentinel, rebuilt on change."""
        live = tuple(w for w in self._res.workers if not w.dead)
        if self._poll_set is None or self._poll_set[0] != live:
            poller, by_fd = select.poll(), {}
            for w in live:
                for fd, is_ctl in ((w.ctl.fileno(), True), (w.process.sentinel, False)):
                    poller.register(fd, select.POLLIN)
                    by_fd[fd] = (w, is_ctl)
            self._poll_set = (live, poller, by_fd)
        return self._poll_set

    def _service(self, timeout: float) -> None:
        """Handle every message and death that is ready (waiting up to ``timeout`` s for one)."""
        live, poller, by_fd = self._poller()
        if not live:
            return
        events = poller.poll(math.ceil(timeout * 1000) if timeout > 0 else 0)
        u0 = cpu_clock()
        died = []
        for fd, _ in sorted(events, key=lambda e: not by_fd[e[0]][1]):   # messages before deaths
            w, is_ctl = by_fd[fd]
            if w in died:
                continue
            if is_ctl:
                if not self._drain(w):
                    died.append(w)
            else:
                self._drain(w)     # it may have said why before it went
                died.append(w)
        self._main_s += cpu_clock() - u0
        faults = []
        for w in died:
            w.process.join(0.5)
            w.dead = True
            if w.retiring and not w.epochs:
                self._res.workers.remove(w)
                w.ctl.close()
            else:
                faults.append(w)
        if faults:
            self._recover(faults)
        elif self._backlog:
            self._feed()

    def _drain(self, w: _Worker) -> bool:
        """Handle all messages from ``w``; False if its connection is gone."""
        try:
            while w.readable():
                self._handle(w, w.ctl.recv())
        except (EOFError, OSError):
            return False
        return True

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "F":
            self._output(*msg[1:])
        elif kind == "R":
            ep = self._epochs.get(msg[1])
            if ep is not None:
                ep.released.add(msg[2] - ep.start)
        elif kind == "done":
            w.epochs.discard(msg[1])
            ep = self._epochs.get(msg[1])
            if ep is not None:
                ep.pending.discard(w.wid)
                self._maybe_retire(ep)
        elif kind == "ready":
            pass
        elif kind == "info":
            self._infos[w.wid] = msg[1]
        elif kind == "error":
            w.error = msg[1]
            log.warning("stage worker %d (pid %d): %s", w.wid, w.pid, msg[1])
        else:
            log.warning("stage worker %d sent an unknown message %r", w.wid, kind)

    def _output(self, epoch: int, seq: int, err: str | None, timings: tuple) -> None:
        ep = self._epochs[epoch]
        k = seq - ep.start
        rec = self._inflight.pop(seq)
        now = clock()
        out = None
        if err is None:
            out = ep.rings[-1].view(k % self.ring_slots, self.output_shape).copy()
        if ep.end is None or seq + self.ring_slots < ep.end:
            last = ep.roles[-1]
            self._send(last[(k + self.ring_slots) % len(last)], ("R", epoch, seq))
        stages = tuple(StageTiming(s, r, 1000 * c, 1000 * wt, 1000 * b, 1000 * h, 1000 * p, f, u is not None, q)
                       for s, r, c, wt, b, h, p, f, u, q in timings)
        latency = now - rec.t_submit
        rec.outcome = Outcome(rec.frame_id, err is None, out, epoch, err, latency, stages, rec.attempts, now)
        rec.array = None
        if err is None:
            self.frames_done += 1
            self._fruitless = 0
        else:
            self.frames_failed += 1
        self._learn(ep, timings)
        self._recent[epoch].append((now, latency, stages))
        if ep.first_out is None:
            ep.first_out = now
            if ep.number > 0:
                self._switches.append({
                    "epoch": epoch, "config": str(ep.config),
                    "request_to_first_out_ms": 1000 * (now - ep.requested_at),
                    "output_gap_ms": 1000 * (now - self._last_out) if self._last_out is not None else None})
        self._last_out = now

    def _learn(self, ep: _Epoch, timings: tuple) -> None:
        """Per-unit times of a sampled frame into the cost table."""
        for s, _, _, _, _, _, _, freq, unit_s, _ in timings:
            if unit_s:
                stage = ep.config.stages[s]
                core_type = self.platform.cluster(stage.cluster).core_type
                for j, t in enumerate(unit_s):
                    self.cost_table.add(stage.first + j, core_type, stage.cores, freq, 1000 * t)

    def _fail(self, rec: _Record, error: str) -> None:
        now = clock()
        rec.outcome = Outcome(rec.frame_id, False, None, rec.epoch, error, now - rec.t_submit, (),
                              rec.attempts, now)
        rec.array = None
        self.frames_failed += 1

    # ------------------------------------------------------------------ faults
    def _recover(self, faults: list[_Worker]) -> None:
        """Some worker died: restart every worker on the current config, re-run what was inside."""
        reason = "; ".join(
            w.error or f"stage worker {w.wid} (pid {w.pid}) died "
            f"(exit code {w.process.exitcode})" for w in faults)
        log.warning("%s: restarting the pipeline", reason)
        self.restarts += 1
        self._fruitless += 1
        config = self._current.config
        self._finalizer.detach()
        self._res.shutdown()
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, _Resources.shutdown, self._res)
        self._free_rings.clear()
        self._epochs.clear()
        self._inflight.clear()
        self._backlog.clear()
        for rec in self._order:
            if rec.outcome is not None:
                continue
            if rec.seq is not None and rec.attempts > self.max_retries:
                self._fail(rec, f"{reason} (the frame was run {rec.attempts} times)")
            else:
                rec.seq = None
                self._backlog.append(rec)
        if self._fruitless > MAX_FRUITLESS_RESTARTS:
            self._break(f"the pipeline was restarted {MAX_FRUITLESS_RESTARTS} times without a frame done: {reason}")
            return
        try:
            self._current = self._start_epoch(config, clock())
        except (OSError, TunerdError) as err:
            # NOTE: with no epoch to run them, the frames waiting would never get an outcome
            self._break(f"cannot restart the pipeline ({type(err).__name__}: {err}) after: {reason}")
            return
        self._feed()

    def _break(self, why: str) -> None:
        """No more frames: every frame waiting fails with ``why``; later calls raise it."""
        log.error("%s", why)
        self._broken = why
        for rec in self._backlog:
            self._fail(rec, why)
        self._backlog.clear()
