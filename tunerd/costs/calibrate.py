"""Calibration: time a sweep of synthetic layers on every cluster and core count of this machine,
and fit the cost model's coefficients per core type (:mod:`tunerd.costs.costmodel`).

Each (cluster, cores) is measured in a child process started pinned: the bootstrap sets the CPU
affinity and the BLAS/OpenMP thread counts *before* numpy is imported (so BLAS starts its threads
on the right cores) and threadpoolctl caps them again. The layers are tiny graphs built with
:class:`tunerd.model.builder.GraphBuilder` and run through the same load-time passes and
:class:`tunerd.model.plan.ExecutionPlan` as real models. On an emulated cluster the measured times are
multiplied by 1 / its nominal speed (what its workers do to frames at full clock): the costs are
nominal, like the core type ``emu@SPEED`` they are filed under; a throttle in force while calibrating
is left out, since the daemon applies the current speed over the nominal one.

The fit is robust least squares on relative error: on one core, times are linear in the per-kind
overheads, inverse efficiencies and inverse bandwidth (non-negative least squares, reweighted with a
Huber weight, GEMM shape constants on a grid); with more cores the parallel coefficients (alpha per
kind, memory alpha, sync cost, small-layer threshold) are fitted by coordinate search on log error.

The child side (``python -m tunerd.costs.calibrate --child``) also times whole models unit by unit for
``tools/bench_costmodel.py``.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import logging
import os
import platform as _pyplatform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, HintsError, PlatformError
from ..files import atomic_write_text, load_json

log = logging.getLogger(__name__)

SCHEMA = "tunerd-calibration/1"
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

# --------------------------------------------------------------------------- the sweep

# (op, params). conv: (in ch, out ch, H=W, kernel, stride, group); fc: (in, out); pool/lrn/
# elementwise/concat: (channels, H=W, ...). Sizes span the zoo models' layers at 224x224.
FULL_SWEEP: list[tuple[str, tuple]] = [
    # 1x1 convs: small and large channel counts, big and small planes
    ("conv", (16, 64, 56, 1, 1, 1)), ("conv", (64, 16, 56, 1, 1, 1)), ("conv", (64, 256, 56, 1, 1, 1)),
    ("conv", (256, 64, 56, 1, 1, 1)), ("conv", (192, 64, 28, 1, 1, 1)), ("conv", (256, 32, 28, 1, 1, 1)),
    ("conv", (128, 512, 28, 1, 1, 1)), ("conv", (512, 128, 28, 1, 1, 1)), ("conv", (480, 16, 14, 1, 1, 1)),
    ("conv", (512, 512, 14, 1, 1, 1)), ("conv", (1024, 256, 14, 1, 1, 1)), ("conv", (832, 384, 7, 1, 1, 1)),
    ("conv", (1024, 1024, 7, 1, 1, 1)), ("conv", (2048, 512, 7, 1, 1, 1)), ("conv", (32, 64, 112, 1, 1, 1)),
    ("conv", (512, 1000, 13, 1, 1, 1)), ("conv", (256, 512, 28, 1, 2, 1)),
    # kxk convs
    ("conv", (3, 64, 224, 3, 2, 1)), ("conv", (3, 64, 224, 7, 2, 1)), ("conv", (3, 96, 224, 11, 4, 1)),
    ("conv", (16, 64, 56, 3, 1, 1)), ("conv", (64, 64, 56, 3, 1, 1)), ("conv", (64, 192, 56, 3, 1, 1)),
    ("conv", (96, 128, 28, 3, 1, 1)), ("conv", (128, 128, 28, 3, 1, 1)), ("conv", (128, 128, 56, 3, 2, 1)),
    ("conv", (256, 256, 14, 3, 1, 1)), ("conv", (384, 384, 13, 3, 1, 2)), ("conv", (512, 512, 7, 3, 1, 1)),
    ("conv", (48, 192, 13, 3, 1, 1)), ("conv", (16, 32, 28, 5, 1, 1)), ("conv", (32, 128, 7, 5, 1, 1)),
    ("conv", (96, 256, 27, 5, 1, 2)),
    # depthwise
    ("conv", (32, 32, 112, 3, 1, 32)), ("conv", (64, 64, 112, 3, 2, 64)), ("conv", (128, 128, 56, 3, 1, 128)),
    ("conv", (256, 256, 28, 3, 1, 256)), ("conv", (512, 512, 14, 3, 1, 512)), ("conv", (1024, 1024, 7, 3, 1, 1024)),
    # fully connected (batch 1: matrix-vector, bandwidth-bound when the weights are big)
    ("fc", (1024, 1000)), ("fc", (2048, 1000)), ("fc", (4096, 1000)), ("fc", (4096, 4096)), ("fc", (9216, 4096)),
    # pooling
    ("maxpool", (64, 112, 3, 2)), ("maxpool", (192, 56, 3, 2)), ("maxpool", (256, 27, 3, 2)),
    ("maxpool", (480, 28, 3, 1)), ("maxpool", (832, 14, 3, 1)), ("gap", (1024, 7)), ("gap", (2048, 7)),
    ("gap", (1000, 13)),
    # LRN
    ("lrn", (64, 56)), ("lrn", (96, 55)), ("lrn", (192, 56)), ("lrn", (256, 27)),
    # elementwise
    ("relu", (256, 56)), ("relu", (1024, 14)), ("add", (256, 56)), ("add", (512, 28)), ("add", (2048, 7)),
    ("softmax", (1000,)),
    # concat
    ("concat", (64, 56, 2)), ("concat", (128, 28, 4)), ("concat", (256, 14, 4)), ("concat", (128, 7, 4)),
]

QUICK_SWEEP: list[tuple[str, tuple]] = [
    ("conv", (16, 64, 28, 1, 1, 1)), ("conv", (128, 128, 14, 1, 1, 1)), ("conv", (256, 256, 7, 1, 1, 1)),
    ("conv", (3, 32, 56, 3, 2, 1)), ("conv", (32, 64, 28, 3, 1, 1)), ("conv", (64, 64, 14, 3, 1, 1)),
    ("conv", (16, 32, 14, 5, 1, 1)),
    ("conv", (64, 64, 28, 3, 1, 64)), ("conv", (256, 256, 7, 3, 1, 256)),
    ("fc", (1024, 1000)), ("fc", (2048, 512)),
    ("maxpool", (64, 28, 3, 2)), ("gap", (512, 7)), ("lrn", (64, 28)),
    ("relu", (128, 28)), ("add", (128, 28)), ("concat", (64, 14, 2)),
]


def build_layer(op: str, params: Sequence[int]):
    """A one-layer model for the sweep (built, optimised and split like a real one)."""
    from ..model import passes
    from ..model.builder import GraphBuilder
    from ..model.loader import Model
    p = tuple(int(v) for v in params)
    name = f"{op}_{'x'.join(map(str, p))}"
    if op == "conv":
        cin, cout, hw, k, s, g = p
        b = GraphBuilder(name, (1, cin, hw, hw))
        out = b.conv(b.input, cout, k, stride=s, group=g, name="conv")
    elif op == "fc":
        b = GraphBuilder(name, (1, p[0]))
        out = b.fc(b.input, p[1], act="relu", name="fc")
    else:
        shape = (1, p[0]) if op == "softmax" else (1, p[0], p[1], p[1])
        b = GraphBuilder(name, shape)
        x = b.input
        if op == "maxpool":
            k, s = p[2], p[3]
            out = b.max_pool(x, k, s, pad=(k - 1) // 2 if s == 1 else 0, name="pool")
        elif op == "gap":
            out = b.global_avg_pool(x, name="gap")
        elif op == "lrn":
            out = b.lrn(x, name="lrn")
        elif op == "relu":
            out = b.relu(x, name="relu")
        elif op == "add":
            out = b.add(x, x, name="add")
        elif op == "softmax":
            out = b.softmax(x, name="softmax")
        elif op == "concat":
            out = b.concat([x] * p[2], name="concat")
        else:
            raise ValueError(f"unknown sweep op {op!r}")
    graph = passes.optimize(b.finish(out))
    return Model(graph, source=f"sweep:{name}")


# --------------------------------------------------------------------------- child processes

_BOOT = ("import os, sys; os.sched_setaffinity(0, {cpus!r}); "
         "import runpy; sys.argv = ['tunerd.costs.calibrate', '--child']; "
         "runpy.run_module('tunerd.costs.calibrate', run_name='__main__', alter_sys=True)")


class Child:
    """A measuring process pinned to ``cpus`` with ``threads`` BLAS threads, serving requests.

    The bootstrap line sets the affinity before anything imports numpy, and the thread-count
    variables are in its environment from the start (threadpoolctl caps them again inside), so
    BLAS starts its threads on the right cores. Requests are JSON lines; the child answers each with
    result records and a ``{"done": true}`` line. Keeping children alive lets callers measure
    configurations side by side (alternating), so they see the same machine load.
    """

    def __init__(self, cpus: Sequence[int], threads: int):
        self.cpus = sorted(int(c) for c in cpus)
        self.threads = int(threads)
        env = dict(os.environ)
        for var in THREAD_ENV_VARS:
            env[var] = str(self.threads)
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT.format(cpus=set(self.cpus))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)

    def request(self, request: Mapping[str, Any], on_result: Callable[[dict], None] | None = None) -> list[dict]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({**request, "threads": self.threads}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure() from None
        results: list[dict] = []
        for line in self.proc.stdout:
            rec = json.loads(line)
            if "error" in rec:
                raise PlatformError(f"measuring child on CPUs {self.cpus}: {rec['error']}")
            if rec.get("done"):
                return results
            results.append(rec)
            if on_result is not None:
                on_result(rec)
        raise self._failure()

    def _failure(self) -> PlatformError:
        rc = self.proc.wait()
        err = (self.proc.stderr.read() if self.proc.stderr else "").strip().splitlines()
        return PlatformError(f"measuring child on CPUs {self.cpus} exited ({rc}): {err[-1] if err else 'no message'}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_child(cpus: Sequence[int], threads: int, request: Mapping[str, Any], *,
              on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """One request in a fresh pinned child (see :class:`Child`)."""
    with Child(cpus, threads) as child:
        return child.request(request, on_result)


class WaitClock:
    """Seconds this process's threads have spent runnable but not running, so far.

    Reads ``/proc/self/task/*/schedstat`` (second field: time spent waiting on a run queue, ns;
    Documentation/scheduler/sched-stats.rst). A timed run during which this grows was slowed by
    other processes: on a shared machine that is how a timing is known to be clean, instead of
    guessed from its value. ``None`` where the kernel has no schedstat. Call :meth:`refresh` after
    BLAS has started its threads.
    """

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.refresh()

    def refresh(self) -> None:
        self.close()
        try:
            for tid in os.listdir("/proc/self/task"):
                self.fds.append(os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY))
        except OSError:
            self.close()

    def __call__(self) -> float | None:
        if not self.fds:
            return None
        total = 0
        for fd in self.fds:
            try:
                total += int(os.pread(fd, 128, 0).split()[1])
            except (OSError, IndexError, ValueError):
                pass   # the thread exited
        return total * 1e-9

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def is_clean(wall_ms: float, waited_ms: float | None) -> bool:
    """A run that waited for a CPU less than 2% of its time (and under 20 us) counts as unloaded."""
    return waited_ms is not None and waited_ms <= max(0.02 * wall_ms, 0.02)


def robust_ms(samples: Sequence[float], waited: Sequence[float | None] | None = None) -> float:
    """The time of a layer or unit on an unloaded machine, from its runs (ms).

    With the runs' waiting times (``WaitClock``): the median of the clean runs, when at least
    three are clean. Otherwise the median of the fastest tenth (the fastest run when there are
    few). NOTE: on a shared machine other processes only ever add time, and a BLAS thread that
    loses its core stalls its siblings at the next barrier for whole scheduler ticks; the plain
    median then measures the neighbours.
    """
    if waited is not None:
        clean = [t for t, w in zip(samples, waited) if is_clean(t, w)]
        if len(clean) >= 3:
            return _median(clean)
    v = sorted(samples)
    return _median(v[:max(1, len(v) // 10)])


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _time_plan(plan, x, min_time_s: float, min_runs: int, max_runs: int,
               wait: WaitClock | None = None) -> tuple[list[float], list[float | None]]:
    """Per-run ms of ``plan.run(x)`` after a warm-up, and the ms each run waited for a CPU (None
    without schedstat): at least ``min_runs`` runs and ``min_time_s`` of them, and while fewer
    than three were clean, up to three times that long (at most ``max_runs`` runs)."""
    clock = time.perf_counter
    plan.run(x)
    wait = wait or (lambda: None)
    samples: list[float] = []
    waited: list[float | None] = []
    spent = 0.0
    clean = 0

    def more() -> bool:
        if len(samples) >= max_runs:
            return False
        if len(samples) < min_runs or spent < min_time_s:
            return True
        return clean < 3 and waited[-1] is not None and spent < 3 * min_time_s
    while more():
        w0 = wait()
        t0 = clock()
        plan.run(x)
        dt = clock() - t0
        w1 = wait()
        spent += dt
        samples.append(dt * 1e3)
        waited.append(None if w0 is None or w1 is None else (w1 - w0) * 1e3)
        clean += is_clean(samples[-1], waited[-1])
    return samples, waited


def _serve(request: dict, cache: dict) -> None:
    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=int(request["threads"]))
    rng = np.random.default_rng(0)
    if "wait" not in cache:
        np.ones((256, 256), np.float32) @ np.ones((256, 256), np.float32)   # start the BLAS threads
        cache["wait"] = WaitClock()
    wait = cache["wait"]
    if request["kind"] == "layers":
        for i, (op, params) in zip(request.get("index", itertools.count()), request["layers"]):
            key = ("layer", op, tuple(params))
            if key not in cache:
                model = build_layer(op, params)
                cache[key] = (model.plan(), rng.standard_normal(model.input_shape).astype(np.float32))
            plan, x = cache[key]
            samples, waited = _time_plan(plan, x, float(request.get("min_time_s", 0.2)),
                                         int(request.get("min_runs", 5)), int(request.get("max_runs", 200)), wait)
            print(json.dumps({"i": i, "ms": robust_ms(samples, waited), "median_ms": _median(samples),
                              "runs": len(samples), "clean": sum(is_clean(t, w) for t, w in zip(samples, waited))}),
                  flush=True)
    elif request["kind"] == "model":
        key = ("model", request["source"], request.get("input_size"))
        if key not in cache:
            from ..model.loader import load_model
            model = load_model(request["source"], input_size=request.get("input_size"))
            cache[key] = (model.plan(), rng.standard_normal(model.input_shape).astype(np.float32))
        plan, x = cache[key]
        for _ in range(int(request.get("warmup", 1))):
            plan.run(x)
        marks: list[float | None] = []

        def clock() -> float:
            # NOTE: run_timed calls its clock at every unit boundary: note the waiting time there
            marks.append(wait())
            return time.perf_counter()
        for r in range(int(request.get("runs", 5))):
            marks.clear()
            t0 = time.perf_counter()
            _, times = plan.run_timed(x, clock=clock)
            total = time.perf_counter() - t0
            waited = [None if a is None or b is None else (b - a) * 1e3 for a, b in zip(marks, marks[1:])]
            print(json.dumps({"run": r, "unit_ms": [t * 1e3 for t in times], "total_ms": total * 1e3,
                              "unit_waited_ms": waited,
                              "waited_ms": None if None in marks else (marks[-1] - marks[0]) * 1e3}), flush=True)
    else:
        raise ValueError(f"unknown request kind {request['kind']!r}")


def _child_main() -> int:
    """The child side: JSON requests on stdin, one record per line and a done line on stdout."""
    cache: dict = {}
    for line in sys.stdin:
        try:
            _serve(json.loads(line), cache)
        except Exception as err:  # noqa: BLE001 - the parent reports it as one line
            print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
            return 1
        print(json.dumps({"done": True}), flush=True)
    return 0


# --------------------------------------------------------------------------- the calibration file

@dataclass
class Calibration:
    coefficients: dict[str, Any]          # core type -> CoreCoeffs
    platform: dict                        # {"spec", "source", "clusters": [{name, core_type, cpus, speed}]}
    date: str
    machine: dict
    quick: bool = False
    fit: dict = field(default_factory=dict)       # core type -> fit quality
    samples: list = field(default_factory=list)   # raw measurements (for refits and plots)
    path: str | None = None
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        return {"schema": self.schema, "date": self.date, "quick": self.quick, "platform": self.platform,
                "machine": self.machine,
                "coefficients": {t: c.to_dict() for t, c in self.coefficients.items()},
                "fit": self.fit, "samples": self.samples}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "calibration") -> "Calibration":
        from .costmodel import CoreCoeffs
        if not isinstance(data, Mapping):
            raise HintsError(f"{source}: expected a JSON object")
        if data.get("schema") != SCHEMA:
            raise HintsError(f"{source}: unsupported schema {data.get('schema')!r} (expected {SCHEMA!r}); "
                             f"run `tunerd calibrate` again")
        for key in ("coefficients", "platform", "date"):
            if key not in data:
                raise HintsError(f"{source}: missing field {key!r}")
        coeffs = data["coefficients"]
        if not isinstance(coeffs, Mapping) or not coeffs:
            raise HintsError(f"{source}: 'coefficients' must be a non-empty object")
        try:
            parsed = {t: CoreCoeffs.from_dict(c, core_type=t) for t, c in coeffs.items()}
        except HintsError as err:
            raise HintsError(f"{source}: {err}") from None
        for key, kind in (("platform", Mapping), ("machine", Mapping), ("fit", Mapping), ("samples", list)):
            if key in data and not isinstance(data[key], kind):
                raise HintsError(f"{source}: {key!r} must be {'an object' if kind is Mapping else 'a list'}")
        return cls(parsed, dict(data["platform"]), str(data["date"]), dict(data.get("machine", {})),
                   bool(data.get("quick", False)), dict(data.get("fit", {})), list(data.get("samples", [])))


def save_calibration(cal: Calibration, path: str | os.PathLike) -> Path:
    path = atomic_write_text(path, json.dumps(cal.to_dict(), indent=1) + "\n")
    cal.path = str(path)
    return path


def load_calibration(path: str | os.PathLike) -> Calibration:
    path = Path(path)
    cal = Calibration.from_dict(load_json(path, "calibration file"), source=str(path))
    cal.path = str(path)
    return cal


def default_calibration_path(platform) -> Path:
    """Where ``tunerd calibrate`` keeps a platform's calibration when not told (``-o``)."""
    from ..platform.identity import platform_key
    from ..model.loader import cache_dir
    return cache_dir() / "calibration" / f"{platform_key(platform)}.json"


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"hostname": _pyplatform.node(), "cpu": cpu or _pyplatform.processor(), "arch": _pyplatform.machine(),
            "python": _pyplatform.python_version()}
    try:
        import numpy as np
        info["numpy"] = np.__version__
        from threadpoolctl import threadpool_info
        blas = [f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info() if i.get("user_api") == "blas"]
        info["blas"] = ", ".join(blas)
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------- measuring

@dataclass(frozen=True)
class Sample:
    layer: int            # index into the sweep
    core_type: str
    cores: int
    ms: float
    clean: bool = True    # at least three runs without waiting for a CPU (or no way to know)


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
            max_cores: int | None = None) -> list[Sample]:
    """Time every layer of ``sweep`` on every cluster of ``platform`` at 1..cores cores.

    One child per (cluster, cores), all alive at once and taking turns layer by layer, so every
    configuration is measured under the same machine load.
    """
    jobs = []
    for cluster in platform.clusters:
        speed = cluster.speed if platform.source == "emulate" else 1.0
        if not speed > 0:
            raise PlatformError(f"cluster {cluster.name!r}: speed {speed!r} is not > 0")
        for n in range(1, min(cluster.cores, max_cores or cluster.cores) + 1):
            jobs.append((cluster, n, speed))
    bar = Progress(len(jobs) * len(sweep), enabled=progress)
    # NOTE: several BLAS threads are stalled by any neighbour on any of their cores: multi-core
    # timings need more runs for the fastest tenth to be clean
    base = {"kind": "layers", "min_time_s": 0.02 if quick else 0.2, "min_runs": 5 if quick else 15,
            "max_runs": 40 if quick else 400}
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


# --------------------------------------------------------------------------- fitting

def _nnls(a, b, iters: int = 200):
    """Non-negative least squares (Lawson-Hanson active set), small dense problems."""
    import numpy as np
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    for _ in range(iters):
        if passive.all() or not (w[~passive] > 1e-12).any():
            break
        j = int(np.argmax(np.where(~passive, w, -np.inf)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
        w = a.T @ (b - a @ x)
    return x


def _features(sweep):
    """One FeatureTable row group per sweep layer (unit index = sweep index)."""
    from .costmodel import FeatureTable
    return FeatureTable.from_groups([li for u in build_layer(op, params).units for li in u.layers]
                                    for op, params in sweep)


def _fit_single(table, ms, gflops: float, core_type: str, grid, llc_bytes: float):
    """Fit per-kind overheads and efficiencies and the two bandwidths on 1-core times.

    For fixed shape constants (a grid) the 1-core time is linear in the unknowns: overhead per
    kind, 1 / efficiency per kind, 1 / activation, DRAM and im2col bandwidths. Non-negative
    least squares on relative error, reweighted (Huber) so a few noisy layers cannot pull the fit.

    NOTE: a sweep layer runs again and again, so weights that fit the last-level cache are warm
    here although a network streams them from DRAM: the fit charges DRAM only for the share
    ``w / (w + llc)`` of them, the prediction for all of them. A batch-1 fc is all weight traffic
    (2 FLOPs per 4-byte weight): its time goes to the bandwidth, not to an fc efficiency.
    """
    import numpy as np
    from .costmodel import KINDS, CoreCoeffs, shape_efficiency
    nk = len(KINDS)
    fc = KINDS.index("fc")
    dram = table.wbytes * table.wbytes / (table.wbytes + llc_bytes)
    best = None
    for m0, n0, k0, dw_n0 in grid:
        shape = {"m0": m0, "n0": n0, "k0": k0, "dw_n0": dw_n0}
        g = shape_efficiency(table.kind, table.gemm, shape)
        comp1 = table.flops / (gflops * 1e6 * g)          # ms at eff = 1
        a = np.zeros((table.n_units, 2 * nk + 3))
        for col in range(nk):
            sel = table.kind == col
            np.add.at(a[:, col], table.unit[sel], 1e-3)                # overhead, us
            if col != fc:
                np.add.at(a[:, nk + col], table.unit[sel], comp1[sel])  # 1 / eff
        np.add.at(a[:, 2 * nk], table.unit, table.bytes / 1e6)          # 1 / activation GB/s
        np.add.at(a[:, 2 * nk + 1], table.unit, dram / 1e6)             # 1 / DRAM GB/s
        np.add.at(a[:, 2 * nk + 2], table.unit, table.cols / 1e6)       # 1 / im2col GB/s
        used = a.any(axis=0)
        weights = 1.0 / ms
        x = np.zeros(a.shape[1])
        for _ in range(4):
            x[:] = 0.0
            x[used] = _nnls(a[:, used] * weights[:, None], ms * weights)
            rel = np.abs(a @ x - ms) / ms
            weights = (1.0 / ms) * np.minimum(1.0, 0.1 / np.maximum(rel, 1e-9))
        pred = np.maximum(a @ x, 1e-9)
        score = float(np.mean(np.minimum(np.log(pred / ms) ** 2, 0.25)))
        if best is None or score < best[0]:
            best = (score, x.copy(), shape)
    _, x, shape = best
    eff = {k: float(min(10.0, 1.0 / x[nk + col])) if x[nk + col] > 1e-6 else 10.0 for col, k in enumerate(KINDS)}
    overhead = {k: float(x[col]) for col, k in enumerate(KINDS)}
    gbs = [float(min(1e4, 1.0 / v)) if v > 1e-9 else 1e4 for v in x[2 * nk:]]
    return CoreCoeffs(core_type, gflops, gbs[1], eff=eff, overhead_us=overhead, shape=dict(shape),
                      alpha={k: 1.0 for k in KINDS}, alpha_mem=1.0, overlap=0.0, act_gbs=gbs[0],
                      cols_gbs=gbs[2])


def llc_bytes(cpu: int = 0, sysfs_root: str | os.PathLike = "/sys") -> int:
    """Size of the largest cache CPU ``cpu`` sees (``cpuN/cache/index*/size``), 8 MiB if unknown."""
    best = 0
    base = Path(sysfs_root) / "devices/system/cpu" / f"cpu{cpu}" / "cache"
    try:
        for idx in base.glob("index*"):
            text = (idx / "size").read_text().strip().upper()
            mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or 8 * 1024 ** 2


def _fit_parallel(table, by_n: Mapping[int, Any], coeffs):
    """Fit alpha per kind, alpha_mem, sync_us and par_half_ms on the multi-core times
    (``by_n``: cores -> (ms per layer, mask of the layers to fit on))."""
    import numpy as np
    from .costmodel import KINDS, unit_ms
    if not by_n:
        return coeffs

    def loss(c) -> float:
        # NOTE: absolute log error: a median-like fit that a few stalled timings cannot pull
        total = 0.0
        for n, (ms, use) in by_n.items():
            pred = unit_ms(table, c, n)
            total += float(np.sum(np.abs(np.log(pred[use] / ms[use]))))
        return total

    grid_a = [0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0]
    present = sorted(set(int(k) for k in table.kind))
    cur = coeffs.with_(alpha={k: 0.5 for k in KINDS}, alpha_mem=0.5)
    best = loss(cur)
    for _ in range(3):
        for col in present:
            k = KINDS[col]
            for a in grid_a:
                cand = cur.with_(alpha={**cur.alpha, k: a})
                v = loss(cand)
                if v < best:
                    cur, best = cand, v
        for a in grid_a:
            cand = cur.with_(alpha_mem=a)
            v = loss(cand)
            if v < best:
                cur, best = cand, v
        for s in (0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0):
            cand = cur.with_(sync_us=s)
            v = loss(cand)
            if v < best:
                cur, best = cand, v
        for ph in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0):
            cand = cur.with_(par_half_ms=ph)
            v = loss(cand)
            if v < best:
                cur, best = cand, v
    return cur


def fit(samples: Sequence[Sample], sweep: Sequence[tuple[str, tuple]], *, quick: bool = False,
        llc: Mapping[str, float] | None = None):
    """Coefficients per core type from measured samples; returns (coeffs, fit report).

    ``llc`` maps core types to the last-level cache size in bytes (default 8 MiB)."""
    llc = dict(llc or {})
    import numpy as np
    from .costmodel import unit_ms
    table = _features(sweep)
    coeffs, report = {}, {}
    for core_type in sorted({s.core_type for s in samples}):
        by_n: dict[int, np.ndarray] = {}
        clean: dict[int, np.ndarray] = {}
        for n in sorted({s.cores for s in samples if s.core_type == core_type}):
            arr = np.full(len(sweep), np.nan)
            ok = np.zeros(len(sweep), dtype=bool)
            for s in samples:
                if s.core_type == core_type and s.cores == n:
                    arr[s.layer] = s.ms
                    ok[s.layer] = s.clean
            if np.isnan(arr).any():
                raise PlatformError(f"calibration of {core_type!r} on {n} cores is missing layers")
            by_n[n], clean[n] = arr, ok
        if 1 not in by_n:
            raise PlatformError(f"calibration of {core_type!r} has no 1-core times")
        # the "peak" is the best GEMM rate seen on one core, so efficiencies read as fractions of it
        gemm = np.isin(table.kind, [0, 1, 3])
        rate = np.bincount(table.unit[gemm], weights=table.flops[gemm], minlength=table.n_units) / by_n[1] / 1e6
        gflops = float(np.round(max(1e-3, rate.max()), 3))
        if quick:
            grid = list(itertools.product([0.0, 16.0], [0.0, 64.0], [0.0, 32.0], [0.0]))
        else:
            grid = list(itertools.product([0.0, 8.0, 32.0, 96.0], [0.0, 16.0, 64.0, 256.0],
                                          [0.0, 16.0, 64.0, 192.0], [0.0, 64.0, 256.0]))
        c1 = _fit_single(table, by_n[1], gflops, core_type, grid, float(llc.get(core_type, 8 * 2**20)))
        # NOTE: multi-core timings are the ones a loaded machine spoils: fit on the clean layers
        # when there are enough of them
        multi = {n: (ms, clean[n] if clean[n].sum() >= max(8, len(ms) // 4) else np.ones(len(ms), bool))
                 for n, ms in by_n.items() if n > 1}
        c = _fit_parallel(table, multi, c1)
        c = c.with_(source="calibration")
        coeffs[core_type] = c
        rep = {"layers": len(sweep), "cores": sorted(by_n)}
        for n, ms in by_n.items():
            pred = unit_ms(table, c, n)
            rep[f"median_abs_err_{n}"] = round(float(np.median(np.abs(pred - ms) / ms)), 4)
            rep[f"clean_layers_{n}"] = int(clean[n].sum())
        report[core_type] = rep
    return coeffs, report


def refit(cal: Calibration) -> Calibration:
    """Fit again from the samples stored in a calibration (no measuring)."""
    sweep: list[tuple[str, tuple]] = []
    index: dict[tuple, int] = {}
    samples = []
    for rec in cal.samples:
        key = (rec["op"], tuple(int(v) for v in rec["params"]))
        if key not in index:
            index[key] = len(sweep)
            sweep.append(key)
        samples.append(Sample(index[key], rec["core_type"], int(rec["cores"]), float(rec["ms"]),
                              bool(rec.get("clean", True))))
    if not samples:
        raise HintsError("the calibration holds no samples to refit")
    llc = {c["core_type"]: c.get("llc_bytes", 8 * 2**20) for c in cal.platform.get("clusters", [])}
    coeffs, report = fit(samples, sweep, quick=cal.quick, llc=llc)
    return Calibration(coeffs, cal.platform, cal.date, cal.machine, cal.quick, report, cal.samples)


def calibrate(platform, *, quick: bool = False, sysfs_root: str | os.PathLike = "/sys",
              progress: bool = True) -> Calibration:
    """Measure and fit ``platform`` (a Platform, or a spec string); real or emulated only."""
    if not hasattr(platform, "clusters"):
        from ..platform.clusters import resolve_platform
        platform = resolve_platform(str(platform), sysfs_root=sysfs_root)
    if platform.source == "board":
        raise ConfigError(f"platform {platform.spec!r} is a simulated board: its costs come from the "
                          f"board file; calibrate real or emulated cores")
    sweep = QUICK_SWEEP if quick else FULL_SWEEP
    samples = measure(platform, sweep, quick=quick, progress=progress)
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
        machine=machine_info(), quick=quick, fit=report,
        samples=[{"op": sweep[s.layer][0], "params": list(sweep[s.layer][1]), "core_type": s.core_type,
                  "cores": s.cores, "ms": float(f"{s.ms:.7g}"), "clean": s.clean} for s in samples])


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
    sys.exit(_child_main())
