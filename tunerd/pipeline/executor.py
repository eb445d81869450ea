"""The pipeline executor, main-process side: ``Pipeline``, its construction, and the frame path
(frames in, messages out, outcomes, recovery from a dead worker).

Its other parts live beside it: the worker handles and the starting and retiring of epochs in
tunerd.pipeline.epochs, the stats and host placement in tunerd.pipeline.reports (both bases of
``Pipeline``), and the records it hands out (``Outcome``, ``StageTiming``, ``PipelineError``) in
tunerd.pipeline.outcomes.

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
import time
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait
from typing import Any, Callable

import numpy as np

from ..backends import get_backend
from .epochs import Epoch, EpochKeeping, Resources, WorkerHandle, boundary_shapes
from .measured_costs import CostTable
from .outcomes import Outcome, PipelineError, StageTiming, clock
from .reports import PipelineReports
from ..errors import ConfigError, ModelError, TunerdError
from ..model.loader import check_frame
from ..pipeconfig import PipelineConfig, parse_config, validate
from ..platform.clusters import Platform
from ..platform.spec import resolve_platform
from .shm import Ring, slot_size

log = logging.getLogger(__name__)
cpu_clock = time.thread_time  # for this process's own cost per frame

STOP_GRACE_S = 2.0          # how long close() lets workers finish before killing them
MAX_FRUITLESS_RESTARTS = 3  # restarts in a row without a frame done: the pipeline is broken


@dataclass(eq=False)
class _Record:
    frame_id: Any
    array: np.ndarray
    t_submit: float
    seq: int | None = None               # None: waiting in the backlog (not inside the pipeline)
    epoch: int = -1
    attempts: int = 0
    outcome: Outcome | None = None


class Pipeline(EpochKeeping, PipelineReports):
    """Runs ``model`` as the pipeline ``config`` on ``platform`` (a Platform or a spec string).

    ``ring_slots``: slots per ring (frames a cut can hold; >= replicas on both sides + 1 keeps every
    replica busy). ``backend``: what runs the stages' units, ``numpy`` (the default here: the
    dependency-free reference), ``onnxruntime`` or ``auto`` (tunerd.backends; the daemon and the
    commands default to ``auto``). ``profile_every``: per-unit times every k-th frame (0: never;
    None: the backend's default, 8 for numpy, 16 for onnxruntime). ``max_inflight``:
    frames submitted and not yet polled (default: no bound beyond the rings). ``opener``: a picklable
    ``opener(path) -> model`` the workers use to open ``model.path`` (default ``Model.open``).
    """

    def __init__(self, model, config: PipelineConfig | str, platform: Platform | str | None = None, *,
                 sysfs_root: str | os.PathLike | None = None, ring_slots: int = 4, profile_every: int | None = None,
                 max_inflight: int | None = None, max_retries: int = 1, window: int = 64,
                 opener: Callable | None = None, start_method: str = "spawn", backend: str | None = "numpy"):
        self._closed = True   # until constructed: close() and __del__ are safe on a half-built one
        if ring_slots < 2:
            raise ConfigError(f"ring_slots must be >= 2, got {ring_slots}")
        self.backend = get_backend(backend)   # resolved here: a missing onnxruntime fails before any spawn
        if profile_every is None:
            profile_every = self.backend.profile_every
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
        self._shapes = boundary_shapes(model)
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

        self._res = Resources()
        self._finalizer = weakref.finalize(self, Resources.shutdown, self._res)
        self._free_rings: list[Ring] = []
        self._poll_set = None
        self._epochs: dict[int, Epoch] = {}
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
        # config text -> why a stage of it cannot be built (a worker said "unbuildable"); its frames
        # fail with that reason, and whoever chose the config switches away (LiveTuning scores it 0)
        self.unbuildable: dict[str, str] = {}
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

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until there is something for ``poll`` (or ``timeout``); True if there is."""
        if self._front_done():
            return True
        return bool(mp_wait(self.handles(), timeout))

    def close(self) -> None:
        """Stop the workers (killing those that do not stop within a grace period), free the
        shared memory, fail every frame still inside (its outcome comes from ``poll``), and give
        this process back the CPUs ``place_host`` took from it."""
        if self._closed:
            return
        self._closed = True
        self._give_host_cpus_back()
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

    # ------------------------------------------------------------------ messages out
    def _front_done(self) -> bool:
        return bool(self._order) and self._order[0].outcome is not None

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

    def _drain(self, w: WorkerHandle) -> bool:
        """Handle all messages from ``w``; False if its connection is gone."""
        try:
            while w.readable():
                self._handle(w, w.ctl.recv())
        except (EOFError, OSError):
            return False
        return True

    def _handle(self, w: WorkerHandle, msg: tuple) -> None:
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
        elif kind == "unbuildable":
            ep = self._epochs.get(msg[1])
            if ep is not None and str(ep.config) not in self.unbuildable:
                self.unbuildable[str(ep.config)] = msg[2]
                log.warning("config %s cannot run: %s", ep.config, msg[2])
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

    def _learn(self, ep: Epoch, timings: tuple) -> None:
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
    def _recover(self, faults: list[WorkerHandle]) -> None:
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
        self._res = Resources()
        self._finalizer = weakref.finalize(self, Resources.shutdown, self._res)
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
