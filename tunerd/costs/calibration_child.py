"""The measuring child: a process pinned to some CPUs that times sweep layers or whole models.

Each (cluster, cores) is measured in a child process started pinned: the bootstrap sets the CPU
affinity and the BLAS/OpenMP thread counts *before* numpy is imported (so BLAS starts its threads
on the right cores) and threadpoolctl caps them again. Requests and answers are JSON lines
(:class:`Child`). Besides the sweep's layers (:mod:`tunerd.costs.calibration_sweep`), the child times
whole models unit by unit for ``tools/bench_costmodel.py``. Timings are read against the time the
process waited for a CPU (:class:`WaitClock`), so that a run slowed by neighbours is known as such.

A request names the backend that runs the layers or the model (``"backend"``, default ``numpy``):
the numpy backend times ExecutionPlans exactly as before backends existed; another backend's
runner is compiled here, inside the pinned child, so its thread pool (onnxruntime's intra-op
threads) starts on the measured cores, and the wait clock is reopened after each compile so that
it sees those threads too.

The child side runs as ``python -m tunerd.costs.calibration_child --child``.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from ..errors import PlatformError
from .calibration_sweep import build_layer

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

# NOTE: `python -c` puts the working directory first on sys.path: started from a checkout (or any
# directory holding a `tunerd` folder) the child would import that tunerd, not the caller's
SAFE_PATH = "import sys; sys.path[:] = [p for p in sys.path if p]; "
_BOOT = (SAFE_PATH + "import os; os.sched_setaffinity(0, {cpus!r}); "
         "import runpy; sys.argv = ['tunerd.costs.calibration_child', '--child']; "
         "runpy.run_module('tunerd.costs.calibration_child', run_name='__main__', alter_sys=True)")


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


class _RunnerPlan:
    """A backend's StageRunner with a plan's ``run(x)``, so one timing loop serves every backend.

    ``out`` is allocated once here, as a stage's ring slot is, and reused by every run."""

    def __init__(self, runner):
        import numpy as np
        self.runner = runner
        self.out = np.empty(runner.output_shape, np.float32)

    def run(self, x):
        return self.runner.run(x, self.out)


def _compiled(backend: str, model, threads: int, wait: WaitClock):
    """``model`` whole on ``backend``: its ExecutionPlan for numpy (the path of old), else the
    backend's runner, compiled in this pinned child."""
    if backend == "numpy":
        return model.plan()
    from ..backends import get_backend
    runner = get_backend(backend).compile(model, 0, len(model.units) - 1, threads)
    # NOTE: onnxruntime starts a session's pool threads when it builds it: reopen the wait clock
    # so that their waiting counts too
    wait.refresh()
    return runner


def _serve(request: dict, cache: dict) -> None:
    import numpy as np
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=int(request["threads"]))
    rng = np.random.default_rng(0)
    backend = str(request.get("backend") or "numpy")
    if "wait" not in cache:
        np.ones((256, 256), np.float32) @ np.ones((256, 256), np.float32)   # start the BLAS threads
        cache["wait"] = WaitClock()
    wait = cache["wait"]
    if request["kind"] == "layers":
        for i, (op, params) in zip(request.get("index", itertools.count()), request["layers"]):
            key = ("layer", backend, op, tuple(params))
            if key not in cache:
                model = build_layer(op, params)
                compiled = _compiled(backend, model, int(request["threads"]), wait)
                plan = compiled if backend == "numpy" else _RunnerPlan(compiled)
                cache[key] = (plan, rng.standard_normal(model.input_shape).astype(np.float32))
            plan, x = cache[key]
            samples, waited = _time_plan(plan, x, float(request.get("min_time_s", 0.2)),
                                         int(request.get("min_runs", 5)), int(request.get("max_runs", 200)), wait)
            print(json.dumps({"i": i, "ms": robust_ms(samples, waited), "median_ms": _median(samples),
                              "runs": len(samples), "clean": sum(is_clean(t, w) for t, w in zip(samples, waited))}),
                  flush=True)
    elif request["kind"] == "model":
        key = ("model", backend, request["source"], request.get("input_size"))
        if key not in cache:
            from ..model.loader import load_model
            model = load_model(request["source"], input_size=request.get("input_size"))
            cache[key] = (_compiled(backend, model, int(request["threads"]), wait),
                          rng.standard_normal(model.input_shape).astype(np.float32))
        plan, x = cache[key]
        if backend != "numpy":
            _time_runner(plan, x, request, wait)
            return
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


def _time_runner(runner, x, request: dict, wait: WaitClock) -> None:
    """The "model" kind on a backend other than numpy: per run, the units timed by the runner's
    run_timed, then the plain run of the whole range (``run_ms``).

    NOTE: a StageRunner's run_timed takes no clock, so the time each unit waited for a CPU is not
    known (``unit_waited_ms`` null); the plain run is timed too because onnxruntime's per-unit times
    add up to more than the range takes (``StageRunner.timed_sums_to_run``)."""
    import numpy as np
    out = np.empty(runner.output_shape, np.float32)
    for _ in range(int(request.get("warmup", 1))):
        runner.run(x, out)
        runner.run_timed(x, out)      # the first timed call builds the per-unit chain
    wait.refresh()                    # the chain's sessions brought their own threads
    for r in range(int(request.get("runs", 5))):
        w0, t0 = wait(), time.perf_counter()
        times = runner.run_timed(x, out)
        w1, t1 = wait(), time.perf_counter()
        runner.run(x, out)
        t2, w2 = time.perf_counter(), wait()
        print(json.dumps({"run": r, "unit_ms": [t * 1e3 for t in times], "total_ms": (t1 - t0) * 1e3,
                          "unit_waited_ms": None,
                          "waited_ms": None if w0 is None or w1 is None else (w1 - w0) * 1e3,
                          "run_ms": (t2 - t1) * 1e3,
                          "run_waited_ms": None if w1 is None or w2 is None else (w2 - w1) * 1e3}),
              flush=True)


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


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
    sys.exit(_child_main())
