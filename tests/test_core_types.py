"""One core type at several clocks: board files, hints, the simulator and the tuner's surrogate take
clusters of one core type at different frequencies (a Snapdragon 855's gold and prime), and the
search runs on three and four clusters and on one-core clusters."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tunerd.commands import cli
from tunerd.costs.costmodel import coeffs_from_board
from tunerd.costs.table import UnitCostTable
from tunerd.errors import HintsError
from tunerd.pipeconfig import parse_config
from tunerd.platform.boards import board_clusters, load_board
from tunerd.platform.spec import resolve_platform
from tunerd.tuning.dse import exhaustive_optimum
from tunerd.tuning.simulator import SimulatedBoard, run_simulation, synthetic_table
from tunerd.tuning.throughput import PipelineModel
from tunerd.tuning.tuner import Tuner


def phone(**gold_extra):
    """A Snapdragon 855-like board written the natural way: gold and prime both "A76"."""
    gold = {"name": "gold", "core_type": "A76", "cores": 3, "freq_mhz": 2420, "gflops_per_core": 19.36,
            "bandwidth_gbs": 5.0, **gold_extra}
    return {"name": "phone", "interconnect_gbs": 4.0, "clusters": [
        {"name": "silver", "core_type": "A55", "cores": 4, "freq_mhz": 1780, "gflops_per_core": 7.12,
         "bandwidth_gbs": 2.0},
        gold,
        {"name": "prime", "core_type": "A76", "cores": 1, "freq_mhz": 2840, "gflops_per_core": 22.72,
         "bandwidth_gbs": 3.0, "costmodel": {"overhead_us": 20.0}}]}


def test_a_core_type_at_two_clocks_loads_with_speeds():
    board = load_board(phone())
    assert [(c.name, c.core_type, c.cores, round(c.speed, 4)) for c in board_clusters(board)] == [
        ("silver", "A55", 4, 1.0), ("gold", "A76", 3, round(2420 / 2840, 4)), ("prime", "A76", 1, 1.0)]
    coeffs = coeffs_from_board(board)
    assert set(coeffs) == {"A55", "A76"}
    assert coeffs["A76"].gflops == 22.72      # the reference: the prime, the fastest clocked
    assert coeffs["A76"].overhead_us["conv"] == 20.0      # the gold cluster takes the prime's block
    # a board of one cluster per core type is as before: every cluster at speed 1.0
    assert all(c.speed == 1.0 for c in resolve_platform("board:hikey970").clusters)


def test_board_platform_speeds(tmp_path):
    path = tmp_path / "phone.json"
    path.write_text(json.dumps(phone()))
    platform = resolve_platform(str(path))
    assert [round(c.speed, 3) for c in platform.clusters] == [1.0, round(2420 / 2840, 3), 1.0]
    assert platform.cluster("gold").core_type == platform.cluster("prime").core_type == "A76"


@pytest.mark.parametrize("extra, message", [
    ({"gflops_per_core": 24.2}, "does 10.00 FLOP/cycle, its cluster 'prime' 8.00"),
    ({"costmodel": {"overhead_us": 40.0}}, "costmodel differs from that of cluster 'prime'"),
])
def test_clusters_of_one_core_type_must_agree_beyond_the_clock(extra, message):
    with pytest.raises(HintsError, match=message) as info:
        load_board(phone(**extra))
    assert "distinct core types" in str(info.value) and "\n" not in str(info.value)


def test_a_bad_board_is_one_line_from_the_cli(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(phone(gflops_per_core=30.0)))
    assert cli.main(["simulate", "--board", str(path), "--model", "zoo:squeezenet", "--input-size", "32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tunerd simulate: ") and "FLOP/cycle" in err and err.count("\n") == 1


def test_hints_price_the_core_type_once_for_its_most_cores():
    from tunerd.costs.hints import predict_for_board
    hints = predict_for_board("zoo:squeezenet", phone(), input_size=32)
    assert hints.predicted_ms["A76"].shape[1] == 3 and hints.predicted_ms["A55"].shape[1] == 4
    assert [c["core_type"] for c in hints.clusters] == ["A55", "A76", "A76"]


def sim_board(seed=0, **kwargs):
    board = load_board(phone())
    return board, SimulatedBoard(board, synthetic_table(board, 12, seed=3), seed=seed, **kwargs)


def test_the_simulator_runs_gold_at_its_clock():
    _, sim = sim_board(noise=0.0)
    gold, prime = (sim.true_fps(parse_config(f"0-11@{c}:1")) for c in ("gold", "prime"))
    assert gold / prime == pytest.approx(2420 / 2840)
    sim.schedule = [(1, "gold", 0.5)]
    assert sim.due_events(1) == [("gold", 0.5)]
    assert sim.speeds["gold"] == pytest.approx(0.5 * 2420 / 2840)      # relative to nominal
    assert sim.true_fps(parse_config("0-11@gold:1")) == pytest.approx(0.5 * gold)


def test_the_surrogate_shares_what_it_learns_between_gold_and_prime():
    board, sim = sim_board()
    tuner = Tuner(board_clusters(board), sim.predicted, rng_seed=0, budget=20,
                  interconnect_gbs=sim.interconnect_gbs)
    prime = parse_config("0-11@prime:1")
    before = tuner.surrogate().fps(prime)
    gold = parse_config("0-11@gold:1")
    # measured on gold: every unit twice as slow as predicted at gold's clock
    slow = sim.predicted.ms("A76", 1) * 2.0 / (2420 / 2840)
    for _ in range(6):
        tuner.tell(gold, 1000.0 / slow.sum(), unit_times=slow)
    after = tuner.surrogate().fps(prime)
    assert after == pytest.approx(before / 2.0, rel=0.15)     # prime never ran, and it learnt
    tuner.retune({"gold": 0.5})
    assert tuner.speeds["gold"] == pytest.approx(0.5 * 2420 / 2840) and tuner.speeds["prime"] == 1.0


FOUR = {"name": "four", "interconnect_gbs": 4.0, "clusters": [
    {"name": "little", "core_type": "A55", "cores": 4, "freq_mhz": 2000, "gflops_per_core": 8.0, "bandwidth_gbs": 2.0},
    {"name": "mid", "core_type": "A76", "cores": 2, "freq_mhz": 2250, "gflops_per_core": 18.0, "bandwidth_gbs": 4.0},
    {"name": "big", "core_type": "X1", "cores": 1, "freq_mhz": 2800, "gflops_per_core": 44.8, "bandwidth_gbs": 4.0},
    {"name": "huge", "core_type": "X1", "cores": 1, "freq_mhz": 3000, "gflops_per_core": 48.0, "bandwidth_gbs": 4.0}]}


def _brute_force(model, clusters, n_units):
    """Every pipeline of up to 4 stages without replicas (cuts x cluster/core choices)."""
    import itertools
    choices = [(c.name, k) for c in clusters for k in range(1, c.cores + 1)]
    best = 0.0
    for n_stages in range(1, 5):
        for cuts in itertools.combinations(range(1, n_units), n_stages - 1):
            bounds = [0, *cuts, n_units]
            for pick in itertools.product(choices, repeat=n_stages):
                used: dict[str, int] = {}
                for name, k in pick:
                    used[name] = used.get(name, 0) + k
                if any(used[c.name] > c.cores for c in clusters if c.name in used):
                    continue
                text = " | ".join(f"{bounds[i]}-{bounds[i + 1] - 1}@{name}:{k}" for i, (name, k) in enumerate(pick))
                best = max(best, model.fps(parse_config(text)))
    return best


def test_the_dse_is_exact_on_four_clusters_with_one_core_clusters():
    board = load_board(FOUR)
    clusters = board_clusters(board)
    table = synthetic_table(board, 6, seed=1)
    model = PipelineModel(table, clusters, interconnect_gbs=4.0)
    opt = exhaustive_optimum(model, max_replicas=1)
    assert opt.fps == pytest.approx(_brute_force(model, clusters, 6), rel=1e-12)
    # the one-core clusters are homes for one heavy stage each
    assert {"big", "huge"} & {s.cluster for s in opt.config.stages}


@pytest.mark.parametrize("board", [phone(), FOUR])
def test_the_tuner_finds_the_optimum_on_three_and_four_clusters(board):
    board = load_board(board)
    ratios = []
    for seed in range(3):
        r = run_simulation(board, synthetic_table(board, 14, seed=seed), budget=40, seed=seed)
        ratios.append(r["found_ratio"])
        assert r["evaluations_to_95"] is not None and r["evaluations_to_95"] <= 30
    assert min(ratios) >= 0.95 and float(np.median(ratios)) >= 0.98


def test_the_cost_table_checks_cores_of_a_shared_core_type():
    board = load_board(phone())
    table = UnitCostTable({"A55": np.ones((3, 4)), "A76": np.ones((3, 1))}, np.ones(3))
    with pytest.raises(HintsError, match="cluster 'gold' has 3 cores but the table has costs for 1-1"):
        SimulatedBoard(board, table)


@pytest.mark.parametrize("board", ["sd855", "rk3588", "intel-hybrid"])
def test_shipped_boards_have_the_clusters_discovery_finds_on_their_fake_trees(fake_sysfs, board):
    from tunerd.platform.discovery import discover
    shipped = [(c.name, c.cores) for c in board_clusters(load_board(board))]
    assert shipped == [(c.name, c.cores) for c in discover(fake_sysfs(board)).clusters]


def test_shipped_tri_cluster_boards():
    sd855 = {c.name: c for c in board_clusters(load_board("sd855"))}
    assert sd855["gold"].core_type == sd855["prime"].core_type == "A76"
    assert (sd855["gold"].speed, sd855["prime"].cores) == (pytest.approx(2420 / 2840), 1)
    tensor = board_clusters(load_board("tensor-g1"))
    assert [(c.name, c.core_type, c.cores) for c in tensor] == [("little", "A55", 4), ("mid", "A76", 2),
                                                                ("big", "X1", 2)]
