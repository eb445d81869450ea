"""The analytic pipeline model and the DSE: exact against brute force on small cases, fast on big."""
import itertools
import time

import numpy as np
import pytest

from tunerd.tuning import dse
from tunerd.errors import ConfigError, HintsError
from tunerd.pipeconfig import ClusterSpec, PipelineConfig, Stage, parse_config
from tunerd.costs.table import UnitCostTable
from tunerd.tuning.throughput import PipelineModel, pipeline_fps, table_from_flops, transfer_ms


def _random_case(rng, n, contention):
    clusters = [ClusterSpec("a", "X", int(rng.integers(1, 4)), float(rng.uniform(0.5, 1.5))),
                ClusterSpec("b", "Y", int(rng.integers(1, 3)))]
    table = UnitCostTable({"X": rng.uniform(1, 10, (n, 3)), "Y": rng.uniform(1, 20, (n, 3))},
                          rng.uniform(0, 1e7, n))
    alpha = {"a": float(rng.uniform(0, 0.3)), "b": float(rng.uniform(0, 0.3))} if contention else None
    return clusters, PipelineModel(table, clusters, interconnect_gbs=2.0, contention=alpha)


def _brute_force(model, clusters, max_stages):
    """Every layout x every contiguous split, scored by the model itself."""
    n = model.n_units
    out = []
    for layout in dse.enumerate_layouts(clusters, min(max_stages, n)):
        m = len(layout)
        for cuts in itertools.combinations(range(1, n), m - 1):
            bounds = [0, *cuts, n]
            config = PipelineConfig(tuple(Stage(bounds[i], bounds[i + 1] - 1, *layout[i]) for i in range(m)))
            out.append((model.fps(config), config))
    return sorted(out, key=lambda fc: -fc[0])


def test_throughput_model_by_hand():
    table = UnitCostTable({"A": [[10.0, 6.0], [20.0, 11.0], [4.0, 3.0]], "B": [[30.0, 18.0], [60.0, 33.0], [12.0, 8.0]]},
                          [2e6, 1e6, 4e3])
    clusters = [ClusterSpec("big", "A", 2), ClusterSpec("little", "B", 2, speed=0.5)]
    model = PipelineModel(table, clusters, interconnect_gbs=2.0)
    config = parse_config("0-1@big:1x2 | 2-2@little:2")
    # big: (10 + 20) ms + 1e6 B / 2 GB/s = 0.5 ms, over 2 replicas; little: 8 ms / speed 0.5
    assert model.periods(config) == pytest.approx([15.25, 16.0])
    assert model.fps(config) == pytest.approx(1000 / 16.0)
    assert pipeline_fps(config, table, clusters, interconnect_gbs=2.0) == pytest.approx(1000 / 16.0)
    # same cluster: no transfer; contention slows both stages sharing it
    shared = parse_config("0-0@big:1 | 1-2@big:1")
    assert model.periods(shared) == pytest.approx([10.0, 24.0])
    slowed = PipelineModel(table, clusters, interconnect_gbs=2.0, contention={"big": 0.1})
    assert slowed.periods(shared) == pytest.approx([11.0, 26.4])
    assert slowed.unit_ms(shared) == pytest.approx([11.0, 22.0, 4.4])
    assert slowed.periods(parse_config("0-2@big:2")) == pytest.approx([20.0])
    assert transfer_ms(3e6, 3.0) == pytest.approx(1.0) and transfer_ms(3e6, None) == 0.0
    half = model.with_speeds({"big": 0.5})
    assert half.periods(config)[0] == pytest.approx((60 + 0.5) / 2)


def test_cost_table_validation():
    with pytest.raises(HintsError, match=r"shape \(3,\), expected \(2, cores\)"):
        UnitCostTable({"A": [1.0, 2.0, 3.0]}, [1, 2])
    with pytest.raises(HintsError, match="finite and > 0"):
        UnitCostTable({"A": [[1.0], [0.0]]}, [1, 2])
    with pytest.raises(HintsError, match="no core types"):
        UnitCostTable({}, [1, 2])
    table = UnitCostTable({"A": [[1.0], [2.0]]}, [1, 2])
    with pytest.raises(HintsError, match="cluster 'x' has 2 cores but the table has costs for 1-1"):
        PipelineModel(table, [ClusterSpec("x", "A", 2)])
    with pytest.raises(HintsError, match="no costs for core type 'B'"):
        PipelineModel(table, [ClusterSpec("x", "B", 1)])
    with pytest.raises(ConfigError, match="contention"):
        PipelineModel(table, [ClusterSpec("x", "A", 1)], contention={"x": -0.1})
    assert UnitCostTable.from_dict(table.to_dict()).to_dict() == table.to_dict()
    assert table.scaled({"A": 2.0}).ms("A", 1) == pytest.approx([2.0, 4.0])


@pytest.mark.parametrize("contention", [False, True])
def test_dse_is_exact_against_brute_force(contention):
    rng = np.random.default_rng(7 + contention)
    for _ in range(25):
        n = int(rng.integers(1, 7))
        clusters, model = _random_case(rng, n, contention)
        max_stages = int(rng.integers(1, 6))
        truth = _brute_force(model, clusters, max_stages)
        results = dse.explore(model, max_stages=max_stages, top_k=4)
        assert results[0].fps == pytest.approx(truth[0][0], rel=1e-12)
        for r in results:  # claimed fps is the model's, configs distinct, best first
            assert model.fps(r.config) == pytest.approx(r.fps, rel=1e-12)
        assert len({r.config for r in results}) == len(results)
        assert [r.fps for r in results] == sorted((r.fps for r in results), reverse=True)
        # each result is the best split of its own layout
        for r in results:
            layout = tuple((s.cluster, s.cores, s.replicas) for s in r.config.stages)
            same = [fps for fps, c in truth if tuple((s.cluster, s.cores, s.replicas) for s in c.stages) == layout]
            assert r.fps == pytest.approx(max(same), rel=1e-12)
        opt = dse.exhaustive_optimum(model)
        assert opt.fps == pytest.approx(_brute_force(model, clusters, 99)[0][0], rel=1e-12)


def test_best_split_is_exact_for_a_layout():
    rng = np.random.default_rng(3)
    clusters, model = _random_case(rng, 6, True)
    layout = (("a", 1, 1), ("b", 1, 1), ("a", 1, 1))
    if clusters[0].cores < 2:
        layout = (("a", 1, 1), ("b", 1, 1))
    r = dse.best_split(model, layout)
    best = max(model.fps(PipelineConfig(tuple(Stage(b[i], b[i + 1] - 1, *layout[i]) for i in range(len(layout)))))
               for cuts in itertools.combinations(range(1, 6), len(layout) - 1) for b in [[0, *cuts, 6]])
    assert r.fps == pytest.approx(best)
    assert dse.best_split(model, (("a", 1, 1),) * 7) is None


def test_min_bottleneck_and_flops_balanced_split():
    flops = [5, 1, 1, 1, 4, 4, 2]
    ranges = dse.flops_balanced_split(flops, [1.0, 2.0])
    assert ranges == [(0, 1), (2, 6)] or ranges == [(0, 2), (3, 6)]
    worst = max(sum(flops[a:b + 1]) / c for (a, b), c in zip(ranges, [1.0, 2.0]))
    brute = min(max(sum(flops[:k]) / 1.0, sum(flops[k:]) / 2.0) for k in range(1, 7))
    assert worst == pytest.approx(brute)
    assert dse.flops_balanced_split([3, 3, 3], [1, 1, 1]) == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(ConfigError, match="cannot split 2 units into 3 stages"):
        dse.flops_balanced_split([1, 1], [1, 1, 1])
    with pytest.raises(ConfigError, match="capacities must be > 0"):
        dse.flops_balanced_split([1, 1], [1, 0])


def test_layout_enumeration_respects_cluster_cores():
    clusters = [ClusterSpec("l", "A", 2), ClusterSpec("b", "B", 1)]
    layouts = list(dse.enumerate_layouts(clusters, 3))
    assert len(layouts) == len(set(layouts))
    for layout in layouts:
        used = {"l": 0, "b": 0}
        for name, k, r in layout:
            used[name] += k * r
        assert used["l"] <= 2 and used["b"] <= 1
    # l alone: 2x1, 1x2, 1x1, then 1x1 twice; b alone: 1x1 -> 4 without b, and with b
    # interleaved anywhere: 1 + 3 x 2 + 1 x 3 = 10 more
    assert len(layouts) == 14
    assert (("l", 1, 2), ("b", 1, 1)) in layouts and (("l", 1, 1), ("b", 1, 1), ("l", 1, 1)) in layouts
    assert dse.stage_options(4)[:3] == [(4, 1), (2, 2), (1, 4)]


def test_top_k_and_max_stages_arguments():
    table = table_from_flops(np.linspace(1e8, 3e8, 10), np.full(10, 1e5), {"A53": 3.6, "A73": 9.4}, 4)
    clusters = [ClusterSpec("little", "A53", 4), ClusterSpec("big", "A73", 4)]
    single = dse.explore(table, clusters, interconnect_gbs=3.0, max_stages=1, top_k=3)
    assert all(len(r.config) == 1 for r in single)
    assert dse.best_config(table, clusters, interconnect_gbs=3.0).fps >= single[0].fps
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        dse.explore(table, clusters, top_k=0)
    with pytest.raises(ConfigError, match="clusters are required"):
        dse.explore(table)


def test_dse_is_fast_on_a_big_little_board():
    rng = np.random.default_rng(0)
    n = 28
    flops = rng.lognormal(np.log(1.2e8), 0.7, n)
    table = table_from_flops(flops, rng.lognormal(np.log(3e5), 1.0, n), {"A53": 3.6, "A73": 9.4}, 4)
    clusters = [ClusterSpec("little", "A53", 4), ClusterSpec("big", "A73", 4)]
    model = PipelineModel(table, clusters, interconnect_gbs=3.0, contention={"little": 0.05, "big": 0.025})
    t0 = time.perf_counter()
    dse.explore(model, top_k=6)
    opt = dse.exhaustive_optimum(model)
    assert time.perf_counter() - t0 < 2.0
    assert opt.fps >= dse.best_config(model).fps - 1e-9
