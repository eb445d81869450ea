"""The pipeline executor: results equal Model.run, every frame once and in order through
reconfigurations and worker deaths, pinning, emulated DVFS, profiling, and nothing left behind.

Most machinery tests run a fake model (below): a few small tanh(x @ W) units that may sleep, so
timings are steady on a busy 2-core machine and a pipeline starts in a fraction of a second. Its
workers open it with ``open_fake`` (this module is importable in spawned workers: pytest puts
tests/ on sys.path and spawn passes sys.path on).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tunerd.errors import ConfigError, ModelError
from tunerd.pipeconfig import assign_cpus
from tunerd.pipeline.executor import Pipeline
from tunerd.pipeline.outcomes import PipelineError

TWO_CPUS = len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)
pytestmark = pytest.mark.skipif(not TWO_CPUS, reason="needs CPUs 0 and 1")
EMULATED = "emulate:big=0@1.0,little=1@0.5"


# --------------------------------------------------------------------------- a fake model
@dataclass(frozen=True)
class FakeUnit:
    index: int
    input: str
    output: str
    in_bytes: int
    out_bytes: int
    flops: int = 1


class FakePlan:
    def __init__(self, model: "FakeModel", first: int, last: int):
        self.m, self.first, self.last = model, first, last
        self.input_shape = model.shapes[f"t{first}"]
        self.output_shape = model.shapes[f"t{last + 1}"]

    def _unit(self, u: int, x: np.ndarray) -> np.ndarray:
        if u == 0 and x.flat[0] == 999.0:
            raise ValueError("poisoned frame")
        y = np.tanh(x.reshape(1, -1) @ self.m.weights[u]).reshape(self.m.shapes[f"t{u + 1}"])
        if self.m.sleep_s:
            time.sleep(self.m.sleep_s)
        return y

    def run(self, x, out=None):
        return self.run_timed(x, out)[0]

    def run_timed(self, x, out=None, clock=time.perf_counter):
        times = []
        for u in range(self.first, self.last + 1):
            t0 = clock()
            x = self._unit(u, x)
            times.append(clock() - t0)
        if out is not None:
            np.copyto(out, x)
            x = out
        return x, times


class FakeModel:
    """``fake:UNITS:SLEEP_MS``: UNITS units over vectors of 16, 24 or 32 floats, each sleeping."""

    name = "fake"

    def __init__(self, path: str):
        _, n, sleep_ms = str(path).split(":")
        n = int(n)
        self.path = path
        self.sleep_s = float(sleep_ms) / 1000
        rng = np.random.default_rng(7)
        dims = [16 + 8 * (i % 3) for i in range(n + 1)]
        self.shapes = {f"t{i}": (1, dims[i]) for i in range(n + 1)}
        self.weights = [(rng.standard_normal((dims[i], dims[i + 1])) / 4).astype(np.float32) for i in range(n)]
        self.units = [FakeUnit(i, f"t{i}", f"t{i + 1}", 4 * dims[i], 4 * dims[i + 1]) for i in range(n)]
        self.input_shape = self.shapes["t0"]
        self.output_shape = self.shapes[f"t{n}"]

    def plan(self, first=0, last=None):
        return FakePlan(self, first, len(self.units) - 1 if last is None else last)

    def run(self, x):
        return self.plan().run(x).copy()


def open_fake(path: str) -> FakeModel:
    return FakeModel(path)


def fake_pipeline(config, units=6, sleep_ms=0.0, platform="auto", **kw) -> tuple[Pipeline, FakeModel]:
    model = FakeModel(f"fake:{units}:{sleep_ms}")
    return Pipeline(model, config, platform, opener=open_fake, **kw), model


def frames(model, n, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(model.input_shape).astype(np.float32) for _ in range(n)]


def run_all(pipe, xs, first_id=0, timeout=60.0, on_submit=None) -> list:
    """Stream ``xs`` through, keeping the pipeline full; every outcome, in the order polled."""
    out, i = [], 0
    deadline = time.monotonic() + timeout
    while len(out) < len(xs):
        assert time.monotonic() < deadline, f"only {len(out)} of {len(xs)} outcomes in {timeout} s"
        while i < len(xs):
            if on_submit is not None:
                on_submit(first_id + i)
            if not pipe.submit(first_id + i, xs[i]):
                break
            i += 1
        out += pipe.poll(0.05)
    return out


def one_by_one(pipe, xs, timeout=30.0) -> list:
    out = []
    for i, x in enumerate(xs):
        assert pipe.submit(i, x)
        got = []
        deadline = time.monotonic() + timeout
        while not got:
            assert time.monotonic() < deadline, "no outcome"
            got = pipe.poll(0.1)
        out += got
    return out


def ring_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "tunerd-ring" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return n


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" not in fh.read()
    except OSError:
        return False


# --------------------------------------------------------------------------- the zoo, bit for bit
ZOO = [("alexnet", 64), ("googlenet", 32), ("mobilenet", 32), ("resnet50", 32), ("squeezenet", 32)]


BACKENDS = ["numpy", pytest.param("onnxruntime", marks=pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("onnxruntime") is None, reason="onnxruntime not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,size", ZOO, ids=[n for n, _ in ZOO])
def test_zoo_model_through_pipelines_equals_model_run(name, size, backend):
    """numpy stages give Model.run's numpy result bit for bit; onnxruntime stages give the whole
    model's onnxruntime result within 1e-5 and numpy's within 1e-4 (relative to the largest output)."""
    import tunerd
    from threadpoolctl import threadpool_limits
    model = tunerd.load_model(f"zoo:{name}", input_size=size, backend=backend)
    n = len(model.units)
    xs = frames(model, 4, seed=1)
    with threadpool_limits(limits=1):    # stages run 1 BLAS thread: the same sums in the same order
        want = [model.run(x) for x in xs]
        reference = [model.use_backend(None).run(x) for x in xs]
    cut = n // 2
    with Pipeline(model, f"0-{cut - 1}@big:1 | {cut}-{n - 1}@big:1", "auto", backend=backend) as pipe:
        got = run_all(pipe, xs)
        pipe.reconfigure(f"0-{n - 1}@big:1x2")
        got += run_all(pipe, xs, first_id=len(xs))
        maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in pipe.worker_pids()}
    assert [o.frame_id for o in got] == list(range(2 * len(xs)))
    assert [o.epoch for o in got] == [0] * len(xs) + [1] * len(xs)
    for o in got:
        assert o.ok, o.error
        assert o.output.shape == model.output_shape and o.output.dtype == np.float32
        k = o.frame_id % len(xs)
        if backend == "numpy":
            assert np.array_equal(o.output, want[k]), f"frame {o.frame_id} differs"
        else:
            scale = float(np.abs(want[k]).max())
            assert float(np.abs(o.output - want[k]).max()) <= 1e-5 * scale, f"frame {o.frame_id}"
            assert float(np.abs(o.output - reference[k]).max()) <= 1e-4 * scale, f"frame {o.frame_id}"
    # weights are mapped read-only from the stored model file, not copied
    weights = str(Path(model.path) / "weights.bin")
    for pid, text in maps.items():
        lines = [line for line in text.splitlines() if line.endswith(weights)]
        assert lines, f"worker {pid} does not map {weights}"
        assert all("w" not in line.split()[1] for line in lines)


# --------------------------------------------------------------------------- processes and pinning
def test_workers_are_pinned_and_reused_on_reconfigure():
    pipe, model = fake_pipeline("0-5@big:2")
    with pipe:
        run_all(pipe, frames(model, 3))
        (info,) = pipe.worker_info()
        assert info["blas_threads"] and set(info["blas_threads"]) == {2}
        assert all(cpus == [0, 1] for cpus in info["affinity"].values())
        pipe.reconfigure("0-2@big:1 | 3-5@big:1")
        run_all(pipe, frames(model, 3), first_id=3)
        infos = pipe.worker_info()
    assert len(infos) == 2
    assert info["pid"] in {i["pid"] for i in infos}             # the old worker took a new role
    for i in infos:
        (cpu,) = i["cpus"]
        assert len(i["affinity"]) >= 2                            # main thread and BLAS thread(s)
        assert all(cpus == [cpu] for cpus in i["affinity"].values()), i["affinity"]
        assert set(i["blas_threads"]) == {1}


def test_place_host_moves_this_process_off_the_bottleneck_and_close_gives_cpus_back():
    before = os.sched_getaffinity(0)
    pipe, model = fake_pipeline("0-1@big:1 | 2-5@big:1", sleep_ms=2.0, profile_every=2)
    with pipe:
        if len(pipe.platform.cpus) == 2:
            assert pipe.place_host() == ()                        # no free CPU, nothing measured yet
        run_all(pipe, frames(model, 16))
        placed = pipe.place_host()
        bottleneck = pipe.stats()["bottleneck"]
        infos = pipe.worker_info()
        stage_cpus = assign_cpus(pipe.config, pipe.platform.clusters)
        assert bottleneck == 1                                    # 4 sleeping units against 2
        assert placed and not set(placed) & set(stage_cpus[1][0])
        assert os.sched_getaffinity(0) == set(placed)
        assert all(os.sched_getaffinity(int(t)) == set(placed) for t in os.listdir("/proc/self/task"))
        assert pipe.place_host() == placed                        # same advice: nothing moves
        for info in infos:                                        # the workers keep their own CPUs
            assert all(set(a) == set(info["cpus"]) for a in info["affinity"].values()), info
        got = run_all(pipe, frames(model, 4), first_id=16)
        assert [o.frame_id for o in got] == list(range(16, 20))
    assert os.sched_getaffinity(0) == before
    assert pipe.host_placement == ()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_place_host_prefers_cpus_outside_an_emulated_platform():
    before = os.sched_getaffinity(0)
    first = min(before)
    pipe, model = fake_pipeline("0-5@big:1", platform=f"emulate:big={first}@1.0")
    with pipe:
        assert pipe.place_host() == tuple(sorted(before - {first}))      # before any frame
        assert os.sched_getaffinity(0) == before - {first}
        assert len(run_all(pipe, frames(model, 3))) == 3
    assert os.sched_getaffinity(0) == before


def test_worker_module_does_not_import_numpy():
    code = "import sys, tunerd.pipeline.worker; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- order and reconfiguration
def test_random_reconfigurations_keep_every_frame_once_and_in_order():
    rng = random.Random(2024)
    configs = ["0-5@big:1", "0-5@big:2", "0-5@big:1x2"] + [f"0-{c}@big:1 | {c + 1}-5@big:1" for c in range(5)]
    pipe, model = fake_pipeline("0-2@big:1 | 3-5@big:1", sleep_ms=0.3, ring_slots=3)
    xs = frames(model, 160, seed=3)
    entered: dict[int, int] = {}
    config_of = {0: "0-2@big:1 | 3-5@big:1"}

    def maybe_switch(frame_id):
        if frame_id not in entered and rng.random() < 0.08:
            text = rng.choice(configs)
            config_of[pipe.reconfigure(text)] = text
        entered.setdefault(frame_id, pipe.epoch)

    with pipe:
        got = run_all(pipe, xs, on_submit=maybe_switch)
        stats = pipe.stats()
    assert len(config_of) > 5
    assert [o.frame_id for o in got] == list(range(len(xs)))
    for o in got:
        assert o.ok, o.error
        assert o.epoch == entered[o.frame_id]
        assert np.array_equal(o.output, model.run(xs[o.frame_id]))
        n_stages = config_of[o.epoch].count("|") + 1
        assert sorted(t.stage for t in o.stages) == list(range(n_stages))
    assert stats["frames_done"] == len(xs) and stats["restarts"] == 0
    assert stats["switches"] and all(s["request_to_first_out_ms"] > 0 for s in stats["switches"])


@pytest.mark.parametrize("text,message", [
    ("0-2@big:1 | 4-5@big:1", "gap"),
    ("0-3@big:1 | 3-5@big:1", "overlap"),
    ("0-5@huge:1", "unknown cluster"),
    ("0-5@big:3", "needs 3 cores"),
    ("0-5@big:2x2", "needs 4 cores"),
    ("0-2@big:1 | 3-5@big:2", "overlapping cores"),
    ("0-9@big:1", "model has 6 units"),
    ("1-5@big:1", "not covered"),
    ("0-5 big 1", "bad stage"),
    ("", "empty"),
])
def test_bad_configs_give_clear_errors(text, message):
    import multiprocessing
    before = set(multiprocessing.active_children())
    with pytest.raises(ConfigError, match=message):
        fake_pipeline(text)
    assert set(multiprocessing.active_children()) == before      # refused before any process


def test_bad_arguments_and_a_bad_reconfigure_leave_the_pipeline_running():
    from tunerd.platform.clusters import Cluster, Platform
    board = Platform((Cluster("big", "A73", (0, 1)),), "board", spec="board:test")
    with pytest.raises(ConfigError, match="simulated"):
        fake_pipeline("0-5@big:1", platform=board)
    with pytest.raises(ConfigError, match="fork"):
        fake_pipeline("0-5@big:1", start_method="fork")
    with pytest.raises(ConfigError, match="ring_slots"):
        fake_pipeline("0-5@big:1", ring_slots=1)
    pipe, model = fake_pipeline("0-5@big:1")
    with pipe:
        with pytest.raises(ConfigError, match="gap"):
            pipe.reconfigure("0-1@big:1 | 3-5@big:1")
        assert str(pipe.config) == "0-5@big:1" and pipe.epoch == 0
        for bad in (np.zeros(model.input_shape, np.float64), np.zeros((1, 3), np.float32), [0.0] * 16):
            with pytest.raises(ModelError):
                pipe.submit(0, bad)
        (o,) = run_all(pipe, frames(model, 1))
        assert o.ok


def test_a_failing_kernel_fails_only_its_frame():
    pipe, model = fake_pipeline("0-2@big:1 | 3-5@big:1")
    xs = frames(model, 6)
    xs[2] = xs[2].copy()
    xs[2].flat[0] = 999.0
    with pipe:
        got = run_all(pipe, xs)
    assert [o.frame_id for o in got] == list(range(6))
    assert [o.ok for o in got] == [True, True, False, True, True, True]
    assert "stage 0" in got[2].error and "poisoned frame" in got[2].error and got[2].output is None
    assert "units 0-2, numpy backend" in got[2].error      # which stage, units and backend failed


# --------------------------------------------------------------------------- faults
@pytest.mark.parametrize("retries", [1, 0])
def test_killed_worker_loses_no_frame(retries):
    pipe, model = fake_pipeline("0-2@big:1 | 3-5@big:1", sleep_ms=1.0, max_retries=retries)
    xs = frames(model, 40, seed=5)
    killed = {}

    def kill_at_15(frame_id):
        if frame_id == 15 and not killed:
            killed["pid"] = pipe.worker_pids()[-1]        # the stage-1 worker, mid-stream
            os.kill(killed["pid"], signal.SIGKILL)
            killed["t"] = time.monotonic()

    with pipe:
        got = run_all(pipe, xs, on_submit=kill_at_15)
        restarts = pipe.stats()["restarts"]
    assert restarts == 1
    assert [o.frame_id for o in got] == list(range(len(xs)))
    failed = [o for o in got if not o.ok]
    for o in got:
        if o.ok:
            assert np.array_equal(o.output, model.run(xs[o.frame_id]))
    if retries:
        assert not failed
        assert any(o.attempts == 2 for o in got)
    else:
        assert failed and all("died" in o.error for o in failed)


def test_a_reconfiguration_that_cannot_start_leaves_the_old_config_running(monkeypatch):
    pipe, model = fake_pipeline("0-5@big:1", sleep_ms=1.0, platform=EMULATED)
    xs = frames(model, 12, seed=3)
    with pipe:
        run_all(pipe, xs[:4])

        def no_more_sockets(*args):
            raise OSError(24, "Too many open files")
        with monkeypatch.context() as m:
            m.setattr("tunerd.pipeline.epochs.socket.socketpair", no_more_sockets)
            with pytest.raises(PipelineError, match="cannot start 0-2@big:1 \\| 3-5@little:1.*Too many open files"):
                pipe.reconfigure("0-2@big:1 | 3-5@little:1")
        assert str(pipe.config) == "0-5@big:1"
        got = run_all(pipe, xs[4:8], first_id=4)            # the old epoch still serves every frame
        assert [o.frame_id for o in got] == [4, 5, 6, 7] and all(o.ok for o in got)
        pipe.reconfigure("0-2@big:1 | 3-5@little:1")        # and a later switch works
        got = run_all(pipe, xs[8:], first_id=8)
        assert [o.frame_id for o in got] == [8, 9, 10, 11]
        assert all(np.array_equal(o.output, model.run(xs[o.frame_id])) for o in got)


class BadCutModel(FakeModel):
    """A fake model whose units 3-5 cannot be built as one stage (as onnxruntime may refuse a cut)."""

    def plan(self, first=0, last=None):
        last = len(self.units) - 1 if last is None else last
        if (first, last) == (3, 5):
            raise ModelError("cannot create the session: refused")
        return super().plan(first, last)


def open_bad_cut(path: str) -> BadCutModel:
    return BadCutModel(path)


def test_a_stage_that_cannot_be_built_fails_its_frames_with_the_reason_and_kills_nothing():
    model = BadCutModel("fake:6:1.0")
    xs = frames(model, 12, seed=4)
    with Pipeline(model, "0-5@big:1", EMULATED, opener=open_bad_cut) as pipe:
        assert all(o.ok for o in run_all(pipe, xs[:4]))
        pids = pipe.worker_pids()
        bad = "0-2@big:1 | 3-5@little:1"
        pipe.reconfigure(bad)
        got = run_all(pipe, xs[4:8], first_id=4)
        assert [o.frame_id for o in got] == [4, 5, 6, 7]             # each answered once
        assert not any(o.ok for o in got)
        assert all(o.error.startswith("stage 1 (units 3-5, numpy backend) cannot be built: ModelError: ")
                   and "refused" in o.error for o in got)
        assert pipe.unbuildable == {bad: got[0].error}
        assert pipe.stats()["restarts"] == 0 and set(pids) <= set(pipe.worker_pids())   # no worker died
        pipe.reconfigure("0-5@big:1")                                # back to what worked
        got = run_all(pipe, xs[8:], first_id=8)
        assert all(o.ok for o in got) and all(np.array_equal(o.output, model.run(xs[o.frame_id])) for o in got)


def test_a_restart_that_cannot_start_fails_the_waiting_frames(monkeypatch):
    pipe, model = fake_pipeline("0-2@big:1 | 3-5@big:1", sleep_ms=20.0)
    xs = frames(model, 3)
    with pipe:
        for i, x in enumerate(xs):
            assert pipe.submit(i, x)

        def no_more_processes(*args):
            raise OSError(11, "Resource temporarily unavailable")
        monkeypatch.setattr(pipe, "_spawn", no_more_processes)
        os.kill(pipe.worker_pids()[0], signal.SIGKILL)
        got, deadline = [], time.monotonic() + 10
        while len(got) < len(xs) and time.monotonic() < deadline:
            try:
                got += pipe.poll(0.05)
            except PipelineError:
                break
        assert [o.frame_id for o in got] == [0, 1, 2]          # each answered once, none left waiting
        assert not any(o.ok for o in got) and all("cannot restart" in o.error for o in got)
        with pytest.raises(PipelineError, match="cannot restart the pipeline"):
            pipe.submit(3, xs[0])


def test_worker_death_is_noticed_within_a_second():
    pipe, model = fake_pipeline("0-2@big:1 | 3-5@big:1")
    with pipe:
        run_all(pipe, frames(model, 2))
        os.kill(pipe.worker_pids()[0], signal.SIGKILL)
        t0 = time.monotonic()
        while pipe.stats()["restarts"] == 0 and time.monotonic() - t0 < 5:
            pipe.poll(0.05)
        assert time.monotonic() - t0 < 1.0
        (o,) = run_all(pipe, frames(model, 1), first_id=2)   # and it runs again
        assert o.ok


def open_nothing(path: str):
    raise RuntimeError(f"no model at {path}")


def test_workers_that_cannot_start_fail_frames_instead_of_hanging():
    model = FakeModel("fake:4:0")
    pipe = Pipeline(model, "0-1@big:1 | 2-3@big:1", "auto", opener=open_nothing)
    with pipe:
        xs = frames(model, 3)
        for i, x in enumerate(xs):
            assert pipe.submit(i, x)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            got += pipe.poll(0.1)
        assert [o.frame_id for o in got] == [0, 1, 2]
        assert all(not o.ok and "no model at fake:4:0" in o.error for o in got)
        # it keeps trying while frames come, then gives up for good: an error, not a hang
        with pytest.raises(PipelineError, match="restarted 3 times"):
            for i in range(3, 100):
                pipe.submit(i, xs[0])
                got += pipe.poll(0.5)
        got += pipe.poll(0.0)
        assert [o.frame_id for o in got] == list(range(len(got)))
        assert not any(o.ok for o in got)


def test_a_poll_loop_can_sleep_on_the_pipeline():
    from multiprocessing.connection import wait
    pipe, model = fake_pipeline("0-5@big:1", sleep_ms=2.0)
    with pipe:
        assert pipe.handles() and not pipe.wait(0.0)
        assert pipe.submit("a", frames(model, 1)[0])
        deadline = time.monotonic() + 10
        got = []
        while not got and time.monotonic() < deadline:
            wait(pipe.handles(), 1.0)                     # what a daemon's loop does
            got = pipe.poll(0.0)
        assert [o.frame_id for o in got] == ["a"] and got[0].ok
        assert pipe.pending == 0
    assert pipe.handles() == []


# --------------------------------------------------------------------------- cleanup
def test_close_frees_everything_and_answers_what_was_inside():
    shm_before = set(os.listdir("/dev/shm"))
    pipe, model = fake_pipeline("0-2@big:1 | 3-5@big:1", sleep_ms=5.0)
    xs = frames(model, 4)
    for i, x in enumerate(xs):
        assert pipe.submit(i, x)
    pids = pipe.worker_pids()
    assert ring_fds() > 0
    pipe.close()
    pipe.close()                                          # idempotent
    got = pipe.poll(0.0)
    assert [o.frame_id for o in got] == [0, 1, 2, 3]      # every frame answered, none lost
    assert all(o.ok or "closed" in o.error for o in got)
    with pytest.raises(PipelineError, match="closed"):
        pipe.submit(9, xs[0])
    assert not any(alive(pid) for pid in pids)
    assert ring_fds() == 0
    assert set(os.listdir("/dev/shm")) == shm_before


PARENT = """
import sys, time
sys.path.insert(0, {tests!r})
import numpy as np
from test_pipeline import fake_pipeline, frames, run_all
if __name__ == "__main__":
    pipe, model = fake_pipeline("0-2@big:1 | 3-5@big:1", sleep_ms=2.0)
    run_all(pipe, frames(model, 3))
    for i, x in enumerate(frames(model, 4)):
        pipe.submit(10 + i, x)
    print(*pipe.worker_pids(), flush=True)
    time.sleep(60)
"""


def test_kill_9_of_the_parent_leaves_nothing():
    shm_before = set(os.listdir("/dev/shm"))
    code = PARENT.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "workers outlived their parent"
    assert set(os.listdir("/dev/shm")) == shm_before


# --------------------------------------------------------------------------- emulation and profiling
def test_emulated_dvfs_slows_a_stage_within_a_frame(fake_sysfs):
    from tunerd.platform.fakesysfs import set_emulated_freq
    root = fake_sysfs(EMULATED, max_khz=2_000_000)
    pipe, model = fake_pipeline("0-1@big:1 | 2-3@little:1", units=4, sleep_ms=3.0, platform=EMULATED,
                                sysfs_root=root, profile_every=1)
    with pipe:
        one_by_one(pipe, frames(model, 1))               # warm: the first frame builds caches
        before = one_by_one(pipe, frames(model, 4))
        set_emulated_freq(root, 1, 500_000)              # little: 0.5 -> 0.125, 4x slower
        after = one_by_one(pipe, frames(model, 3))
        table = pipe.cost_table
    little = lambda o: o.stages[1]                      # noqa: E731
    base = float(np.median([little(o).compute_ms for o in before]))
    assert base > 0.8 * 12.0                            # 2 units x 3 ms, stretched by 1/0.5
    # the very next frame reads the new speed; 4x expected, less asked: sleeps are noisy here
    assert [little(o).freq for o in before + after] == [0.5] * 4 + [0.125] * 3
    assert little(after[0]).compute_ms > 2 * base
    assert float(np.median([little(o).compute_ms for o in after])) > 2 * base
    assert all(o.stages[0].freq == 1.0 for o in before + after)
    # the cost table keeps the two frequency states apart (means are too noisy on a busy machine)
    assert table.samples(2, "emu@0.5", 1, 0.5) == 5 and table.samples(2, "emu@0.5", 1, 0.125) == 3
    assert table.samples(0, "emu@1", 1, 1.0) == 8 and table.mean_ms(0, "emu@1", 1) >= 2.9


def test_profiling_feeds_cost_table_and_stats():
    pipe, model = fake_pipeline("0-1@big:1 | 2-5@big:1", sleep_ms=2.0, profile_every=2)
    with pipe:
        got = run_all(pipe, frames(model, 24))
        stats = pipe.stats()
        table = pipe.cost_table
        core_type = pipe.platform.cluster("big").core_type
    assert stats["bottleneck"] == 1                      # 4 units against 2
    s0, s1 = stats["stages"]
    assert s1["compute_ms"] > 1.3 * s0["compute_ms"]
    assert stats["fps"] and stats["frames_done"] == 24
    for u in range(6):
        assert table.samples(u, core_type, 1) == 12      # every other frame
        assert 1.9 < table.mean_ms(u, core_type, 1) < 20      # a 2 ms sleep, on a busy machine
    timing = got[-1].stages[1]
    assert timing.stage == 1 and timing.compute_ms > 0 and timing.wait_ms >= 0 and timing.blocked_ms >= 0
    assert timing.handoff_ms >= 0 and timing.profiling_ms >= 0 and 0 <= timing.cpu_share < 0.5   # it sleeps
    assert all(o.latency > 0 for o in got)


def test_bench_command_reports_a_pipeline(capsys):
    import json

    from tunerd.commands.cli import main
    rc = main(["bench", "--model", "zoo:squeezenet", "--input-size", "32", "--pipeline",
               "0-8@big:1 | 9-17@big:1", "--frames", "6", "--warmup", "2", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "pipeline" and result["frames"] == 6 and result["fps"] > 0
    assert result["config"] == "0-8@big:1 | 9-17@big:1"
    assert len(result["stages"]) == 2 and result["bottleneck_stage"] in (0, 1)
    for key in ("compute_ms", "wait_ms", "blocked_ms", "handoff_ms", "profiling_ms"):
        assert result["stages"][0][key] is not None
    assert result["handoff_overhead_pct"] is not None and result["latency_ms_median"] > 0
    assert result["host_cpus"] is None or set(result["host_cpus"]) <= os.sched_getaffinity(0)
