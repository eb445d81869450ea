"""Board files, the simulated board, run_simulation and the `tunerd simulate` command."""
import argparse
import json
import random

import numpy as np
import pytest

from tunerd.platform import boards
from tunerd.commands import simulate
from tunerd.errors import ConfigError, HintsError
from tunerd.tuning.genome import GenomeSpace
from tunerd.pipeconfig import ClusterSpec, parse_config
from tunerd.tuning.simulator import (SimulatedBoard, contention_alphas, kernel_parallel_fps, kernel_parallel_ms,
                              run_simulation, synthetic_table)
from tunerd.tuning.throughput import PipelineModel, table_from_flops

BOARD = {"name": "hikey-like", "interconnect_gbs": 3.0, "note": "extra fields are kept", "clusters": [
    {"name": "little", "core_type": "A53", "cores": 4, "freq_mhz": 1800, "gflops_per_core": 3.6, "bandwidth_gbs": 4.0},
    {"name": "big", "core_type": "A73", "cores": 4, "freq_mhz": 2360, "gflops_per_core": 9.4, "bandwidth_gbs": 8.0}]}
SMALL = {"name": "small", "interconnect_gbs": 4.0, "clusters": [
    {"name": "fast", "core_type": "F", "cores": 2, "freq_mhz": 2000, "gflops_per_core": 8.0, "bandwidth_gbs": 10.0},
    {"name": "slow", "core_type": "S", "cores": 2, "freq_mhz": 1500, "gflops_per_core": 3.0, "bandwidth_gbs": 5.0}]}


def _broken(path, value):
    board = json.loads(json.dumps(BOARD))
    target = board
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return board


# -- board files -----------------------------------------------------------------------------------
def test_board_validation_and_clusters():
    board = boards.validate_board(BOARD)
    assert board["note"] == "extra fields are kept" and board["clusters"][0]["cores"] == 4
    assert boards.board_clusters(board) == [ClusterSpec("little", "A53", 4), ClusterSpec("big", "A73", 4)]


@pytest.mark.parametrize("path, value, match", [
    (("name",), KeyError, r"board: missing field 'name'"),
    (("clusters",), KeyError, r"missing field 'clusters'"),
    (("interconnect_gbs",), KeyError, r"missing field 'interconnect_gbs'"),
    (("interconnect_gbs",), "fast", r"'interconnect_gbs' must be a number, got 'fast'"),
    (("interconnect_gbs",), 0, r"'interconnect_gbs' must be > 0"),
    (("clusters",), [], r"'clusters' must be a non-empty list"),
    (("clusters", 1, "cores"), KeyError, r"clusters\[1\]: missing field 'cores'"),
    (("clusters", 1, "cores"), 2.5, r"clusters\[1\]: 'cores' must be a whole number, got 2.5"),
    (("clusters", 0, "gflops_per_core"), -1, r"clusters\[0\]: 'gflops_per_core' must be > 0"),
    (("clusters", 0, "bandwidth_gbs"), True, r"'bandwidth_gbs' must be a number, got True"),
    (("clusters", 0, "core_type"), "", r"'core_type' must be a non-empty string"),
    (("clusters", 1, "name"), "little", r"clusters\[1\]: duplicate cluster name 'little'"),
    (("clusters", 1, "name"), "big cluster", r"clusters\[1\]: name 'big cluster' cannot be written in a pipeline"),
    (("clusters", 1, "name"), "a|b", r"clusters\[1\]: name 'a\|b' cannot be written in a pipeline"),
    (("clusters", 0), "big", r"clusters\[0\] must be an object"),
])
def test_board_errors_name_the_field(path, value, match):
    with pytest.raises(HintsError, match=match):
        boards.validate_board(_broken(path, value))


def test_board_files_and_shipped_names(tmp_path):
    path = tmp_path / "myboard.json"
    path.write_text(json.dumps(BOARD))
    assert boards.load_board(str(path))["name"] == "hikey-like"
    assert boards.load_board(path)["name"] == "hikey-like"
    assert boards.load_board(BOARD)["name"] == "hikey-like"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(HintsError, match="cannot read board file"):
        boards.load_board(tmp_path / "bad.json")
    with pytest.raises(HintsError, match="board file not found"):
        boards.load_board(tmp_path / "missing.json")
    with pytest.raises(HintsError, match="unknown board 'no-such-board'"):
        boards.load_board("no-such-board")
    with pytest.raises(HintsError, match="must be a JSON object"):
        boards.validate_board([1, 2])
    for name in boards.shipped_boards():  # whatever is shipped must load
        assert boards.load_board(name)["name"]
    assert boards.shipped_board_path("hikey970").name == "hikey970.json"


# -- the simulated board ---------------------------------------------------------------------------
def test_true_costs_deviate_from_predictions_by_a_seeded_error():
    table = synthetic_table(BOARD, 40, seed=1)
    sim = SimulatedBoard(BOARD, table, seed=3, sigma=0.25)
    again = SimulatedBoard(BOARD, table, seed=3, sigma=0.25)
    other = SimulatedBoard(BOARD, table, seed=4, sigma=0.25)
    log_err = np.log(sim.true_table.predicted_ms["A53"] / table.predicted_ms["A53"])
    assert 0.15 < log_err.std() < 0.35
    assert np.array_equal(sim.true_table.predicted_ms["A53"], again.true_table.predicted_ms["A53"])
    assert not np.array_equal(sim.true_table.predicted_ms["A53"], other.true_table.predicted_ms["A53"])
    # mostly per unit: the error of a unit is correlated across core types
    other_err = np.log(sim.true_table.predicted_ms["A73"] / table.predicted_ms["A73"])
    assert np.corrcoef(log_err[:, 0], other_err[:, 0])[0, 1] > 0.3
    exact = SimulatedBoard(BOARD, table, seed=3, sigma=0.0)
    assert np.allclose(exact.true_table.predicted_ms["A53"], table.predicted_ms["A53"])


def test_measurements_are_noisy_around_the_truth():
    table = synthetic_table(BOARD, 10, seed=2)
    sim = SimulatedBoard(BOARD, table, seed=0, noise=0.05)
    config = parse_config("0-4@big:1x4 | 5-9@little:4")
    samples = [sim.measure(config) for _ in range(200)]
    fps = np.array([f for f, _u in samples])
    assert fps.mean() == pytest.approx(sim.true_fps(config), rel=0.02)
    assert 0.03 < fps.std() / fps.mean() < 0.07
    units = np.mean([u for _f, u in samples], axis=0)
    assert units == pytest.approx(sim.model().unit_ms(config), rel=0.03)
    assert sim.measurements == 200
    quiet = SimulatedBoard(BOARD, table, seed=0, noise=0.0)
    assert quiet.measure(config)[0] == pytest.approx(quiet.true_fps(config))


def test_shared_bandwidth_and_interconnect_cost_throughput():
    table = synthetic_table(BOARD, 10, seed=2)
    free = SimulatedBoard(BOARD, table, seed=0, contention=0.0)
    shared = SimulatedBoard(BOARD, table, seed=0, contention=0.4)
    one = parse_config("0-9@big:4")
    four = parse_config("0-9@big:1x4")
    assert shared.true_fps(one) == pytest.approx(free.true_fps(one))
    assert shared.true_fps(four) == pytest.approx(free.true_fps(four) / (1 + 3 * 0.4))
    # relative to the best-connected cluster, capped at 4x
    assert contention_alphas(BOARD, 0.05) == {"little": pytest.approx(0.1), "big": pytest.approx(0.05)}
    starved = json.loads(json.dumps(BOARD))
    starved["clusters"][0]["bandwidth_gbs"] = 0.1
    assert contention_alphas(starved, 0.05)["little"] == pytest.approx(0.2)
    split = parse_config("0-4@big:4 | 5-9@little:4")
    slow_link = SimulatedBoard({**BOARD, "interconnect_gbs": 0.01}, table, seed=0)
    assert slow_link.true_fps(split) < free.true_fps(split)


def test_optimum_beats_every_random_config():
    table = synthetic_table(SMALL, 6, seed=5)
    sim = SimulatedBoard(SMALL, table, seed=5)
    opt = sim.optimum()
    assert sim.true_fps(opt.config) == pytest.approx(opt.fps)
    space = GenomeSpace(sim.clusters, 6)
    rng = random.Random(0)
    for _ in range(300):
        assert sim.true_fps(space.to_config(space.random_genome(rng))) <= opt.fps * (1 + 1e-12)


# -- antecedents: one cluster alone, all cores kernel-parallel --------------------------------------
FLOPS = [300e6, 80e6, 200e6, 50e6, 120e6]
OUT_BYTES = [4e5, 2e5, 1e5, 5e4, 4e3]


def _linear(gflops, cores):
    """Work that splits perfectly over cores (no fixed cost): ms x cores is the same at any count."""
    return table_from_flops(FLOPS, OUT_BYTES, gflops, cores, efficiency=1.0, overhead_ms=0.0)


def test_kernel_parallel_over_two_identical_clusters_is_one_double_cluster_plus_the_exchange():
    gbs = 2.0
    twins = [ClusterSpec("a", "X", 2), ClusterSpec("b", "X", 2)]
    ms = kernel_parallel_ms(_linear({"X": 4.0}, 4), twins, interconnect_gbs=gbs)
    double = _linear({"X": 4.0}, 4).ms("X", 4)
    exchange = np.asarray(OUT_BYTES) / (gbs * 1e6)        # each cluster needs the other's half
    exchange[-1] = 0.0                                    # the output goes to the client
    assert ms == pytest.approx(double + exchange)
    assert kernel_parallel_fps(_linear({"X": 4.0}, 4), twins, interconnect_gbs=gbs) == \
        pytest.approx(1000 / (double.sum() + exchange.sum()))
    # a cross-cluster barrier per unit boundary, where the board file gives one
    with_sync = kernel_parallel_ms(_linear({"X": 4.0}, 4), twins, interconnect_gbs=gbs, sync_us=50.0)
    assert with_sync - ms == pytest.approx([0.05, 0.05, 0.05, 0.05, 0.0])
    # one cluster: that cluster alone, nothing to exchange
    alone = kernel_parallel_ms(_linear({"X": 4.0}, 4), [ClusterSpec("a", "X", 4)], interconnect_gbs=gbs)
    assert alone == pytest.approx(double)


@pytest.mark.parametrize("ratio", [1.5, 2.0, 3.0])
def test_a_static_split_waits_for_the_slow_cluster(ratio):
    """4 big + 4 little cores, every thread the same share: the little half takes ``ratio`` x what
    the big half does, so all 8 cores beat the big cluster alone only while ratio < 2."""
    table = _linear({"B": 8.0, "L": 8.0 / ratio}, 4)
    clusters = [ClusterSpec("big", "B", 4), ClusterSpec("little", "L", 4)]
    big_alone = PipelineModel(table, clusters).fps(parse_config("0-4@big:4"))
    everything = kernel_parallel_fps(table, clusters)            # no interconnect cost
    assert everything == pytest.approx(big_alone * 2 / ratio)
    assert (everything > big_alone) == (ratio < 2) and (everything < big_alone) == (ratio > 2)
    # the exchange only makes it worse
    assert kernel_parallel_fps(table, clusters, interconnect_gbs=0.5) < everything


def test_simulated_board_antecedents_use_the_true_costs_at_the_current_speeds():
    table = synthetic_table(BOARD, 8, seed=3)
    sim = SimulatedBoard({**BOARD, "cross_cluster_sync_us": 20.0}, table, seed=3,
                         dvfs_schedule=[(1, "big", 0.5), (2, "little", 0.5)])
    n = table.n_units
    assert sim.single_cluster_fps("big") == pytest.approx(sim.true_fps(parse_config(f"0-{n - 1}@big:4")))
    expected = kernel_parallel_fps(sim.true_table, sim.clusters, interconnect_gbs=3.0, sync_us=20.0)
    assert sim.kernel_parallel_fps() == pytest.approx(expected)
    assert sim.kernel_parallel_fps() != pytest.approx(kernel_parallel_fps(table, sim.clusters, interconnect_gbs=3.0,
                                                                          sync_us=20.0))
    # the little cluster's share is what every unit waits for (its cores are 2.6x slower): a slower
    # big cluster changes nothing until it is the slower one, a slower little one slows it all
    before, big_before = sim.kernel_parallel_fps(), sim.single_cluster_fps("big")
    sim.due_events(1)
    assert sim.single_cluster_fps("big") == pytest.approx(0.5 * big_before)
    assert sim.kernel_parallel_fps() == pytest.approx(before)
    sim.due_events(2)
    assert sim.kernel_parallel_fps() < 0.6 * before
    with pytest.raises(ConfigError, match="unknown cluster 'gpu'"):
        sim.single_cluster_fps("gpu")


def test_optimum_without_replicas():
    table = synthetic_table(SMALL, 6, seed=5)
    sim = SimulatedBoard(SMALL, table, seed=5)
    with_replicas, without = sim.optimum(), sim.optimum(replicas=False)
    assert all(s.replicas == 1 for s in without.config.stages)
    assert without.fps <= with_replicas.fps * (1 + 1e-12)
    space = GenomeSpace(sim.clusters, 6)
    rng = random.Random(1)
    for _ in range(300):
        config = space.to_config(space.random_genome(rng))
        if all(s.replicas == 1 for s in config.stages):
            assert sim.true_fps(config) <= without.fps * (1 + 1e-12)
    from tunerd.tuning.dse import explore
    with pytest.raises(ConfigError, match="max_replicas must be >= 1"):
        explore(sim.model(), max_replicas=0)


def test_dvfs_schedule_changes_speed_at_its_window():
    table = synthetic_table(SMALL, 6, seed=5)
    sim = SimulatedBoard(SMALL, table, seed=5, dvfs_schedule=[(3, "fast", 0.5)])
    config = parse_config("0-5@fast:2")
    before, opt_before = sim.true_fps(config), sim.optimum().fps
    assert sim.due_events(2) == [] and sim.next_event() == 3
    assert sim.due_events(3) == [("fast", 0.5)] and sim.next_event() is None
    assert sim.true_fps(config) == pytest.approx(before * 0.5)
    assert sim.optimum().fps < opt_before
    with pytest.raises(ConfigError, match="unknown cluster 'gpu'"):
        SimulatedBoard(SMALL, table, dvfs_schedule=[(3, "gpu", 0.5)])
    with pytest.raises(ConfigError, match="factor must be > 0"):
        SimulatedBoard(SMALL, table, dvfs_schedule=[(3, "fast", 0)])


def test_run_simulation_reports_what_the_command_promises():
    table = synthetic_table(SMALL, 7, seed=1)
    result = run_simulation(SMALL, table, budget=20, seed=1, dvfs_schedule=[(25, "fast", 0.6)])
    for key in ("found_fps", "optimum_fps", "evaluations", "evaluations_to_95", "evaluations_to_99", "config",
                "history", "within_10pct", "served_share", "optimum_config", "retune", "final_config"):
        assert key in result
    assert 0 < result["found_fps"] <= result["optimum_fps"] * (1 + 1e-9)
    assert result["evaluations"] == len([h for h in result["history"] if h["window"] < 25])
    json.dumps(result)
    assert result["retune"]["optimum_fps"] < result["optimum_fps"]


# -- the command -----------------------------------------------------------------------------------
def _parser():
    parser = argparse.ArgumentParser(prog="tunerd")
    simulate.register(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture
def fake_hints(monkeypatch):
    calls = []

    def load_table(args, board):
        calls.append((args.model, args.hints, args.input_size, board["name"]))
        return synthetic_table(board, 7, seed=2), "synthetic7"

    monkeypatch.setattr(simulate, "load_table", load_table)
    return calls


def test_simulate_command_json(tmp_path, capsys, fake_hints):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    args = _parser().parse_args(["simulate", "--board", str(path), "--model", "zoo:alexnet", "--input-size", "32",
                                 "--budget", "15", "--seed", "2", "--dvfs", "20:fast:0.5", "--json"])
    assert args.func is simulate.run
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["found_fps"] <= out["optimum_fps"] * (1 + 1e-9) and out["evaluations"] <= 15
    assert out["model"] == "synthetic7" and out["retune"]["cluster"] == "fast"
    assert fake_hints == [("zoo:alexnet", None, 32, "small")]


def test_late_and_simultaneous_dvfs_events_are_all_reported(tmp_path, capsys, fake_hints):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    budget = 10
    late = budget * 3 + 60            # past what the run would have taken without events
    args = _parser().parse_args(["simulate", "--board", str(path), "--hints", "x.json", "--budget", str(budget),
                                 "--dvfs", f"{late}:fast:0.5", "--dvfs", f"{late}:slow:0.8", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["at"] for r in out["retunes"]] == [late]
    assert sorted(map(tuple, out["retunes"][0]["events"])) == [("fast", 0.5), ("slow", 0.8)]
    args = _parser().parse_args(["simulate", "--board", str(path), "--hints", "x.json", "--budget", str(budget),
                                 "--dvfs", f"{late}:fast:0.5", "--dvfs", f"{late}:slow:0.8"])
    assert args.func(args) == 0
    assert f"dvfs at window {late} (fast x0.5, slow x0.8)" in capsys.readouterr().out


def test_simulate_command_text(tmp_path, capsys, fake_hints):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    args = _parser().parse_args(["simulate", "--board", str(path), "--hints", "x.json", "--budget", "10"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "found" in out and "optimum" in out and "(exhaustive)" in out and "found/optimum" in out


def test_simulate_command_errors(tmp_path, capsys, fake_hints):
    parser = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--board", "x", "--model", "m", "--dvfs", "soon:big:0.5"])
    assert "expected AT:CLUSTER:FACTOR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--board", "x", "--model", "m", "--dvfs", "3:big:0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--board", "x", "--model", "m", "--dvfs", "0:big:0.5"])
    assert "AT must be >= 1" in capsys.readouterr().err
    for flag, value, match in (("--seed", "-1", "--seed must be >= 0"), ("--noise", "nan", "--noise must be a finite"),
                               ("--sigma", "-0.1", "--sigma must be a finite")):
        args = parser.parse_args(["simulate", "--board", "x", "--model", "m", flag, value])
        with pytest.raises(HintsError, match=match):
            simulate.run(args)
    args = parser.parse_args(["simulate", "--board", "x"])
    with pytest.raises(HintsError, match="one of --model or --hints is required"):
        simulate.run(args)
    args = parser.parse_args(["simulate", "--board", "no-such-board", "--model", "m"])
    with pytest.raises(HintsError, match="unknown board"):
        simulate.run(args)
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    args = parser.parse_args(["simulate", "--board", str(path), "--model", "m", "--dvfs", "3:gpu:0.5"])
    with pytest.raises(ConfigError, match="unknown cluster 'gpu'"):
        simulate.run(args)
