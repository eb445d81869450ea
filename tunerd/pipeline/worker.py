"""A stage worker: one process running a range of units, pinned to a core set of one cluster.

NOTE: this module is the entry point of a spawned process and imports nothing heavy at import time.
CPU affinity is per thread and BLAS starts its thread pool when numpy is imported, so ``main`` first
sets the thread-count variables and pins every thread of the process, and only then imports numpy
(threads made before that, e.g. by a parent ``__main__`` that spawn re-imports, are re-pinned too).

Protocol (tunerd.pipeline.executor and tunerd.pipeline.epochs are the other side). The worker holds one control connection to the main
process and, per epoch, duplex links to the replicas of the stages before and after it. A *role* is
what the worker does in one epoch: stage ``i`` replica ``a`` of ``R`` takes the frames whose index
``k`` in the epoch has ``k % R == a``, in order. Frame ``k`` of a cut lives in slot ``k % N`` of that
cut's ring; it comes from producer replica ``k % R_prev`` and goes to consumer replica
``k % R_next``, so order needs no sorting. Before writing slot ``k % N`` the producer waits for the
release of frame ``k - N`` (flow control); the consumer releases frame ``k`` once it has computed.
The main process is the producer of the first cut and the consumer of the last one, over the
control connection. Messages are small tuples; tensors never leave the rings:

  main -> worker   ("role", spec) + file descriptors, ("end", epoch, end_seq), ("F", epoch, seq,
                   err, timings) for stage 0, ("R", epoch, seq) for the last stage, ("close", epoch)
                   when every role of the epoch is done, ("info",), ("exit",) after the queued
                   roles, ("stop",) now
  worker -> main   ("ready", pid), ("R", epoch, seq), ("F", epoch, seq, err, timings),
                   ("done", epoch), ("info", dict), ("error", message)
  link             producer -> consumer ("F", seq, err, timings); consumer -> producer ("R", seq)

A worker keeps its roles in epoch order: it finishes every frame of an epoch (those below the end
sequence number the main process announces) before it switches to its next role, re-pinning its
threads and changing its BLAS thread count in place. A stage runs its units through a backend
(tunerd.backends: numpy plans or onnxruntime sessions, chosen by ``init["backend"]``); runners are
cached per (unit range, threads), so a reconfiguration that reuses a range builds nothing.

Emulated clusters: after computing a frame the worker sleeps ``compute * (1/speed - 1)``, with
``speed`` re-read from the emulated cpufreq files (``effective_speed``) after every frame. Sleeping
rather than spinning leaves the core idle as a slower core would be busy: throughput and latency
are those of the slower core, and the cores' real contention (memory bandwidth) is not inflated.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections import OrderedDict, deque
from multiprocessing.connection import Connection

from .affinity import THREAD_ENV_VARS, pin_all_threads, thread_affinities  # noqa: F401 (tools import them here)

MAX_RUNNERS = 4
clock = time.perf_counter  # CLOCK_MONOTONIC on Linux: comparable between processes
cpu_clock = time.thread_time
# NOTE: hand-off and profiling are measured in this thread's CPU time: they are what this worker
# spends, and a wall clock would also count the time other processes hold the core (on a busy
# machine a woken worker often gets a short slice and then waits a whole one for the core again).


def _readable(fd: int) -> bool:
    # NOTE: select on one fd; Connection.poll() builds a selector object per call (10x slower)
    return bool(select.select((fd,), (), (), 0)[0])


class _Stop(Exception):
    """Unwinds the worker loop: the main process said stop, or went away."""


class _Broken(Exception):
    """A link to another worker broke (it died): this worker cannot go on with its epoch."""


class _Role:
    """This worker's part in one epoch (see the module docstring)."""

    def __init__(self, spec: dict, prev: list[Connection] | None, nxt: list[Connection] | None):
        self.spec = spec
        self.epoch = spec["epoch"]
        self.stage = spec["stage"]
        self.replica = spec["replica"]
        self.replicas = spec["replicas"]
        self.start = spec["start"]
        self.end: int | None = None
        self.n_slots = spec["n_slots"]
        self.prev = prev            # None: the main process produces this stage's input
        self.next = nxt             # None: the main process consumes its output
        self.k = self.replica       # index in the epoch of the next frame to run
        self.active = False
        self.untimed_s: float | None = None   # compute of the last frame run without timing
        self.failed: str | None = None        # why its units cannot be built (StageWorker._build)

    def finished(self) -> bool:
        return self.end is not None and self.start + self.k >= self.end

    def close(self) -> None:
        for link in (self.prev or []) + (self.next or []):
            link.close()


class StageWorker:
    def __init__(self, ctl: Connection, init: dict):
        from threadpoolctl import threadpool_limits

        from ..backends import get_backend
        from ..platform.clusters import effective_speed
        from .shm import Ring
        self._limits = threadpool_limits
        self._effective_speed = effective_speed
        self._ring_cls = Ring
        self.ctl = ctl
        self.ctl_fd = ctl.fileno()
        self.wid = init["wid"]
        self.cpus = tuple(init["cpus"])
        self.threads = int(init["threads"])
        self.sysfs_root = init["sysfs_root"]
        opener = init.get("opener")
        if opener is None:
            from ..model.loader import Model
            opener = Model.open
        self.model = opener(init["model_path"])
        # NOTE: made here, after main() pinned every thread: a backend's thread pools (onnxruntime's
        # intra-op threads) start inside the stage's CPU mask and inherit it
        self.backend = get_backend(init.get("backend", "numpy"))
        self.rings: dict[int, object] = {}
        self.runners: OrderedDict = OrderedDict()
        self.roles: dict[int, _Role] = {}
        self.done_roles: dict[int, _Role] = {}   # finished, links not closed yet (see _finish)
        self.inbox: dict[int, tuple[deque, deque]] = {}   # epoch -> (frames, releases) from main
        self.exiting = False
        self.waited = 0.0       # seconds spent blocked in wait(), cumulative
        self.ctl_cpu = 0.0      # CPU seconds spent handling control messages, cumulative
        self._carry = 0.0       # CPU seconds the last output took to send (see _frame)
        self.clock_cost = _clock_cost()   # seconds per clock read: what run_timed adds per unit

    # ------------------------------------------------------------------ control
    def _wait(self, links: list[Connection]) -> None:
        t0 = clock()
        ready = select.select([self.ctl_fd, *(link.fileno() for link in links)], (), ())[0]
        self.waited += clock() - t0
        if self.ctl_fd in ready:
            self._drain_ctl()

    def _drain_ctl(self) -> None:
        u0 = cpu_clock()
        try:
            while _readable(self.ctl_fd):
                self._handle(self.ctl.recv())
        except (EOFError, OSError) as err:
            raise _Stop("main process went away") from err
        finally:
            self.ctl_cpu += cpu_clock() - u0

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "F":
            self._box(msg[1])[0].append(msg)
        elif kind == "R":
            self._box(msg[1])[1].append(msg[2])
        elif kind == "role":
            self._add_role(msg[1])
        elif kind == "end":
            role = self.roles.get(msg[1])
            if role is not None:
                role.end = msg[2]
        elif kind == "close":
            role = self.done_roles.pop(msg[1], None)
            if role is not None:
                role.close()
                role.runner = None
                if self.backend.memory_budget(self.model) is not None:
                    # NOTE: a runner dropped from the cache is freed with its last role; give the
                    # heap pages of its session's weights back (glibc keeps them resident otherwise)
                    from ..backends.subgraph import release_freed_memory
                    release_freed_memory()
        elif kind == "info":
            self.ctl.send(("info", self.info()))
        elif kind == "exit":
            self.exiting = True
        elif kind == "stop":
            raise _Stop("stopped")
        else:
            raise ValueError(f"unknown control message {kind!r}")

    def _box(self, epoch: int) -> tuple[deque, deque]:
        box = self.inbox.get(epoch)
        if box is None:
            box = self.inbox[epoch] = (deque(), deque())
        return box

    def _add_role(self, spec: dict) -> None:
        from multiprocessing.reduction import recv_handle
        for ring_id, n_slots, slot_bytes in spec["new_rings"]:
            self.rings[ring_id] = self._ring_cls.attach(ring_id, n_slots, slot_bytes, recv_handle(self.ctl))
        prev = [Connection(recv_handle(self.ctl)) for _ in range(spec["prev_links"])]
        nxt = [Connection(recv_handle(self.ctl)) for _ in range(spec["next_links"])]
        role = self.roles[spec["epoch"]] = _Role(spec, prev if spec["stage"] > 0 else None,
                                                 nxt if spec["stage"] < spec["n_stages"] - 1 else None)
        self._build(role)      # ahead, between frames of the current role

    def _build(self, role: _Role):
        """The role's runner, or None once its units cannot be built on this backend.

        NOTE: a range that cannot be built (onnxruntime refuses its cut, memory runs out) fails that
        role's frames, each with the reason, and is reported once ("unbuildable"): the worker lives
        on, so the epochs it also serves (the config running before a tuner's candidate) go on."""
        if role.failed is not None:
            return None
        spec = role.spec
        try:
            return self._runner(spec["first"], spec["last"], spec["threads"])
        except Exception as e:  # noqa: BLE001 - any backend's failure to build, with its reason
            role.failed = (f"stage {role.stage} (units {spec['first']}-{spec['last']}, {self.backend.name} "
                           f"backend) cannot be built: {type(e).__name__}: {e}")
            self.ctl.send(("unbuildable", role.epoch, role.failed))
            return None

    def info(self) -> dict:
        from threadpoolctl import threadpool_info
        return {"wid": self.wid, "pid": os.getpid(), "cpus": sorted(self.cpus), "threads": self.threads,
                "affinity": thread_affinities(),
                "blas_threads": [i.get("num_threads") for i in threadpool_info()],
                "backend": self.backend.name, "runners": [list(k) for k in self.runners],
                "roles": sorted(self.roles),
                "rings": sorted(self.rings)}

    # ------------------------------------------------------------------ roles
    def _runner(self, first: int, last: int, threads: int):
        key = (first, last, threads)
        runner = self.runners.get(key)
        if runner is None:
            runner = self.runners[key] = self.backend.compile(self.model, first, last, threads)
        self.runners.move_to_end(key)
        # NOTE: at most MAX_RUNNERS, and for a backend whose runners copy weights (onnxruntime), at
        # most one model's worth of copies besides the newest: a long search leaves memory flat.
        # Dropped, not closed: a role of this or a queued epoch may still hold it
        budget = self.backend.memory_budget(self.model)
        while len(self.runners) > MAX_RUNNERS or (
                budget is not None and len(self.runners) > 1
                and sum(r.private_bytes for r in self.runners.values()) > budget):
            self.runners.popitem(last=False)
        return runner

    def _activate(self, role: _Role) -> None:
        spec = role.spec
        cpus = tuple(spec["cpus"])
        if set(cpus) != set(self.cpus):
            pin_all_threads(cpus)
            self.cpus = cpus
        if spec["threads"] != self.threads:
            self._limits(limits=spec["threads"])
            self.threads = spec["threads"]
        role.runner = self._build(role)
        role.in_ring = self.rings[spec["in_ring"]]
        role.out_ring = self.rings[spec["out_ring"]]
        role.active = True

    def _finish(self, role: _Role) -> None:
        # NOTE: links stay open until the main process says the whole epoch is done ("close"):
        # closing a unix socket with unread data (releases nobody needs any more) makes the peer's
        # reads fail with ECONNRESET, even of data still queued for it.
        del self.roles[role.epoch]
        self.done_roles[role.epoch] = role
        self.inbox.pop(role.epoch, None)
        self.ctl.send(("done", role.epoch))

    def run(self) -> None:
        self.ctl.send(("ready", os.getpid()))
        while True:
            self._drain_ctl()
            if not self.roles:
                if self.exiting and not self.done_roles:   # peers may still read our links
                    return
                self._wait([])
                continue
            role = self.roles[min(self.roles)]
            if role.finished():
                self._finish(role)
                continue
            if not role.active:
                self._activate(role)
            self._frame(role)

    # ------------------------------------------------------------------ one frame
    def _input(self, role: _Role, seq: int):
        """The header of frame ``seq`` (None if the epoch ended before it)."""
        if role.prev is None:
            frames = self._box(role.epoch)[0]
            while not frames:
                if role.finished():
                    return None
                self._wait([])
            _, _, got, err, timings = frames.popleft()
        else:
            link = role.prev[(seq - role.start) % len(role.prev)]
            while not _readable(link.fileno()):
                if role.finished():
                    return None
                self._wait([link])
            try:
                _, got, err, timings = link.recv()
            except (EOFError, OSError) as e:
                raise _Broken(f"input link of epoch {role.epoch} broke: {e!r}") from e
        if got != seq:
            raise RuntimeError(f"stage {role.stage}: expected frame {seq}, got {got}")
        return err, timings

    def _credit(self, role: _Role, seq: int) -> None:
        """Wait until frame ``seq - N`` has released this output slot."""
        want = seq - role.n_slots
        if want < role.start:
            return
        if role.next is None:
            releases = self._box(role.epoch)[1]
            while not releases:
                self._wait([])
            got = releases.popleft()
        else:
            link = role.next[(want - role.start) % len(role.next)]
            while not _readable(link.fileno()):
                self._wait([link])
            try:
                _, got = link.recv()
            except (EOFError, OSError) as e:
                raise _Broken(f"output link of epoch {role.epoch} broke: {e!r}") from e
        if got != want:
            raise RuntimeError(f"stage {role.stage}: expected release of {want}, got {got}")

    def _frame(self, role: _Role) -> None:
        spec = role.spec
        seq = role.start + role.k
        w0, u0, cc0 = self.waited, cpu_clock(), self.ctl_cpu
        got = self._input(role, seq)
        if got is None:
            return
        err, timings = got
        if err is None and role.failed is not None:
            err = role.failed
        w1 = self.waited
        self._credit(role, seq)
        w2 = self.waited
        wait_s, blocked_s = w1 - w0, w2 - w1
        handoff = cpu_clock() - u0 - (self.ctl_cpu - cc0)     # receiving, unpickling, bookkeeping
        slot = role.k % role.n_slots
        unit_s, compute, prof, freq, share = None, 0.0, 0.0, None, None
        if err is None:
            x = role.in_ring.view(slot, spec["in_shape"])
            y = role.out_ring.view(slot, spec["out_shape"])
            sample = spec["profile_every"] > 0 and seq % spec["profile_every"] == 0
            tc, pc = clock(), time.process_time()
            try:
                if sample:
                    unit_s = role.runner.run_timed(x, y)
                else:
                    role.runner.run(x, y)
            except Exception as e:  # a kernel failure fails this frame only, and travels with it
                err = (f"stage {role.stage} (units {spec['first']}-{spec['last']}, {self.backend.name} backend): "
                       f"{type(e).__name__}: {e}")
            compute = clock() - tc
            if unit_s is not None and not role.runner.timed_sums_to_run:
                unit_s, excess = _attribute(unit_s, compute, role.untimed_s)
                prof += excess
                compute -= excess
            elif unit_s is None and err is None:
                role.untimed_s = compute
            share = (time.process_time() - pc) / (compute * self.threads) if compute > 0 else 1.0
            if unit_s is not None:
                prof += (len(unit_s) + 1) * self.clock_cost
            if spec["emulated"]:
                # NOTE: read after computing, so a DVFS change during this frame already counts
                tp, up = clock(), cpu_clock()
                speed = self._effective_speed(spec["cluster"], self.sysfs_root)
                prof += cpu_clock() - up
                if speed < 1.0 and err is None:
                    time.sleep(compute * (1.0 / speed - 1.0))
                    if unit_s is not None:
                        unit_s = [t / speed for t in unit_s]
                compute += clock() - tp
                freq = round(speed, 4)
            elif sample and spec["freq_path"]:
                up = cpu_clock()
                freq = _read_khz(spec["freq_path"])
                prof += cpu_clock() - up
        u3 = cpu_clock()
        self._release(role, seq)
        # NOTE: a record cannot hold the time to send itself: the previous output's send is carried
        handoff += cpu_clock() - u3 + self._carry
        record = (role.stage, role.replica, compute, wait_s, blocked_s, handoff, prof, freq, unit_s, share)
        u4 = cpu_clock()
        self._send_output(role, seq, err, timings + (record,))
        self._carry = cpu_clock() - u4
        role.k += role.replicas

    def _release(self, role: _Role, seq: int) -> None:
        try:
            if role.prev is None:
                self.ctl.send(("R", role.epoch, seq))
            else:
                nxt = seq + role.n_slots
                if role.end is None or nxt < role.end:
                    role.prev[(nxt - role.start) % len(role.prev)].send(("R", seq))
        except OSError:
            pass  # the producer finished its epoch and closed the link: nobody needs the slot

    def _send_output(self, role: _Role, seq: int, err, timings: tuple) -> None:
        try:
            if role.next is None:
                self.ctl.send(("F", role.epoch, seq, err, timings))
            else:
                role.next[(seq - role.start) % len(role.next)].send(("F", seq, err, timings))
        except OSError as e:
            raise _Broken(f"output of epoch {role.epoch} cannot be sent: {e!r}") from e

    def close(self) -> None:
        for role in (*self.roles.values(), *self.done_roles.values()):
            role.close()
        self.roles.clear()
        self.done_roles.clear()
        for runner in self.runners.values():
            runner.close()
        self.runners.clear()
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()


def _attribute(unit_s: list[float], timed_s: float, untimed_s: float | None) -> tuple[list[float], float]:
    """Per-unit times of a backend whose timed run is slower than its plain one, as shares of the plain one.

    onnxruntime times units with one session per unit, and each unit boundary costs a re-layout and
    a session call that the fused range does not pay (20-47 % more in all on the zoo models). What
    the cost table needs is each unit's share of the stage as it really runs, so the times are scaled
    to sum to the last untimed frame's compute; the excess of the timed frame over that is
    profiling, not compute, so the stage's measured period is not inflated by sampling.
    Returns (scaled unit times, excess seconds)."""
    total = sum(unit_s)
    if untimed_s is None or total <= 0 or untimed_s >= timed_s:
        return unit_s, 0.0
    scale = untimed_s / total
    return [t * scale for t in unit_s], timed_s - untimed_s


def _clock_cost(n: int = 2000) -> float:
    """Seconds one ``clock()`` read (and the append after it) costs, the best of five tries."""
    best = float("inf")
    for _ in range(5):
        times: list[float] = []
        t0 = clock()
        for _ in range(n):
            times.append(clock())
        best = min(best, (clock() - t0) / n)
    return best


def _read_khz(path: str) -> int | None:
    try:
        with open(path, "rb") as fh:
            value = int(fh.read().strip() or b"0")
    except (OSError, ValueError):
        return None
    return value if value > 0 else None


def main(ctl: Connection, init: dict) -> None:
    """Process entry point: pin, then import numpy, then serve roles until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process decides when we stop
    threads = str(int(init["threads"]))
    for var in THREAD_ENV_VARS:
        os.environ[var] = threads
    pin_all_threads(init["cpus"])
    worker = None
    try:
        import numpy  # noqa: F401  (BLAS threads start here, inside the mask)
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=int(init["threads"]))
        worker = StageWorker(ctl, init)
        worker.run()
    except _Stop:
        pass
    except Exception as err:
        try:
            ctl.send(("error", f"worker {init.get('wid')}: {type(err).__name__}: {err}"))
        except OSError:
            pass
        sys.exit(2)
    finally:
        if worker is not None:
            worker.close()
