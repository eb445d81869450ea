"""The pipeline's stage workers and epochs, main-process side: the handles on the worker processes,
the epochs they serve, and ``EpochKeeping``, the part of ``Pipeline`` that starts an epoch (picking or
spawning a worker for every replica, taking rings from the pool, linking neighbouring stages and
giving each worker its role) and retires a drained one (its rings back to the pool).

The frame path (tunerd.pipeline.executor) keeps these books up to date from what the workers say:
the input slots stage 0 has released, the roles a worker has finished, a worker's death.
"""
from __future__ import annotations

import logging
import os
import select
import socket
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.reduction import send_handle
from typing import Any

from . import worker as worker_mod
from ..pipeconfig import PipelineConfig, assign_cpus
from .shm import Ring

log = logging.getLogger(__name__)


@dataclass(eq=False)   # identity: a worker is itself, not its field values
class WorkerHandle:
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
class Epoch:
    number: int
    config: PipelineConfig
    start: int
    rings: list[Ring]
    roles: list[list[WorkerHandle]]
    requested_at: float
    end: int | None = None
    pending: set = field(default_factory=set)    # worker ids that have not finished their role
    released: set = field(default_factory=set)   # input-ring frame indices stage 0 has released
    first_out: float | None = None


class Resources:
    """What must be released however the pipeline goes away (close, garbage, interpreter exit)."""

    def __init__(self) -> None:
        self.workers: list[WorkerHandle] = []
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


def boundary_shapes(model) -> list[tuple[int, ...]]:
    """Shape of the tensor entering unit u (index u) and leaving the last unit (index n)."""
    units = model.units
    shapes = [tuple(model.shapes[u.input]) for u in units]
    return shapes + [tuple(model.shapes[units[-1].output])]


class EpochKeeping:
    """Starting and retiring epochs, and the workers and rings they use: a base of ``Pipeline``.

    It keeps no state of its own; it works on the attributes ``Pipeline.__init__`` sets: the
    settings (``platform``, ``model``, ``sysfs_root``, ``ring_slots``, ``slot_bytes``,
    ``profile_every``, ``window``, ``_shapes``, ``_emulated``, ``_opener``, ``_ctx``) and the books
    (``_res``, ``_free_rings``, ``_poll_set``, ``_epochs``, ``_current``, ``_next_epoch``,
    ``_next_wid``, ``_next_seq``, ``_recent``, ``_closed``).
    """

    def _ring(self) -> Ring:
        if self._free_rings:
            return self._free_rings.pop()
        ring = Ring.create(len(self._res.rings), self.ring_slots, self.slot_bytes)
        self._res.rings.append(ring)
        return ring

    def _start_epoch(self, config: PipelineConfig, requested_at: float) -> Epoch:
        stages = config.stages
        cpu_sets = assign_cpus(config, self.platform.clusters)
        number = self._next_epoch
        self._next_epoch += 1
        free = [w for w in self._res.workers if not w.retiring and not w.dead]
        roles: list[list[WorkerHandle]] = []
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
        ep = Epoch(number, config, self._next_seq, rings, roles, requested_at)
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

    def _pick(self, free: list[WorkerHandle], cpus: tuple[int, ...],
              units: tuple[int, int]) -> WorkerHandle | None:
        """The free worker that can take this role most cheaply: same cores and units, same cores,
        overlapping cores, any."""
        def score(w: WorkerHandle) -> tuple:
            same = set(w.cpus) == set(cpus)
            return (same and w.units == units, same, bool(set(w.cpus) & set(cpus)), -len(w.epochs))
        return max(free, key=score, default=None)

    def _link_and_give_roles(self, ep: Epoch, cpu_sets) -> None:
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

    def _spawn(self, cpus: tuple[int, ...], threads: int) -> WorkerHandle:
        wid = self._next_wid
        self._next_wid += 1
        parent, child = self._ctx.Pipe(duplex=True)
        init = {"wid": wid, "cpus": cpus, "threads": threads, "model_path": os.fspath(self.model.path),
                "opener": self._opener, "sysfs_root": self.sysfs_root, "backend": self.backend.name}
        proc = self._ctx.Process(target=worker_mod.main, args=(child, init), daemon=True,
                                 name=f"tunerd-stage-{wid}")
        proc.start()
        child.close()
        w = WorkerHandle(wid, proc, parent, cpus, threads, proc.pid)
        self._res.workers.append(w)
        log.debug("spawned stage worker %d (pid %d) on CPUs %s", wid, proc.pid, cpus)
        return w

    def _give_role(self, w: WorkerHandle, ep: Epoch, i: int, a: int, cpus: tuple[int, ...], prev: list,
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

    def _maybe_retire(self, ep: Epoch) -> None:
        """Return a drained, superseded epoch's rings to the pool."""
        if ep is self._current or ep.pending or ep.number not in self._epochs:
            return
        del self._epochs[ep.number]
        self._free_rings.extend(ep.rings)
        self._recent.pop(ep.number, None)
        for w in {w.wid: w for stage in ep.roles for w in stage}.values():
            self._send(w, ("close", ep.number))

    def _send(self, w: WorkerHandle, msg: tuple, quiet: bool = False) -> None:
        if w.dead:
            return
        try:
            w.ctl.send(msg)
        except OSError as err:
            # NOTE: a dead worker's socket: its sentinel tells _service, which restarts the pipeline
            if not quiet:
                log.debug("send to stage worker %d failed: %s", w.wid, err)

    # ------------------------------------------------------------------ the live workers
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

    def handles(self) -> list:
        """Objects (connections and process sentinels) a poll loop can wait on with
        ``multiprocessing.connection.wait``: one becomes ready when ``poll`` has something to do."""
        if self._closed:
            return []
        return [w.ctl for w in self._res.workers] + [w.process.sentinel for w in self._res.workers]

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._res.workers if not w.dead]
