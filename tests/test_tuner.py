"""The tuner: ask/tell protocol, states, cost table, convergence, retuning, checkpoints."""
import ast
import inspect
import json
import math

import numpy as np
import pytest

from tunerd.tuning import states
from tunerd.platform.boards import board_clusters
from tunerd.errors import ConfigError, TunerdError
from tunerd.pipeconfig import ClusterSpec, parse_config, validate
from tunerd.tuning.simulator import SimulatedBoard, contention_prior, run_simulation, synthetic_table
from tunerd.costs.table import UnitCostTable
from tunerd.tuning.surrogate import SurrogateTable
from tunerd.tuning.tuner import Tuner

TX2 = {"name": "tx2-like", "interconnect_gbs": 4.0, "clusters": [
    {"name": "denver", "core_type": "Denver2", "cores": 2, "freq_mhz": 2035, "gflops_per_core": 8.0, "bandwidth_gbs": 10.0},
    {"name": "a57", "core_type": "A57", "cores": 4, "freq_mhz": 2035, "gflops_per_core": 5.0, "bandwidth_gbs": 10.0}]}
HIKEY = {"name": "hikey-like", "interconnect_gbs": 3.0, "clusters": [
    {"name": "little", "core_type": "A53", "cores": 4, "freq_mhz": 1800, "gflops_per_core": 3.6, "bandwidth_gbs": 4.0},
    {"name": "big", "core_type": "A73", "cores": 4, "freq_mhz": 2360, "gflops_per_core": 9.4, "bandwidth_gbs": 8.0}]}


def _tuner(board=TX2, n=10, seed=0, **kwargs):
    table = synthetic_table(board, n, seed=seed)
    kwargs.setdefault("contention", contention_prior(board))
    return Tuner(board_clusters(board), table, rng_seed=seed, interconnect_gbs=board["interconnect_gbs"], **kwargs)


def _drive(tuner, sim, steps):
    asked = []
    for _ in range(steps):
        config = tuner.ask()
        if config is None:
            break
        asked.append(str(config))
        fps, units = sim.measure(config)
        tuner.tell(config, fps, unit_times=units)
    return asked


def test_states_module_is_constants_only():
    tree = ast.parse(inspect.getsource(states))
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert set(states.ALL) == {"idle", "tuning", "converged", "retuning", "pinned"}


def test_ask_tell_lifecycle_and_budget():
    tuner = _tuner(budget=8)
    sim = SimulatedBoard(TX2, tuner.cost.predicted, seed=0)
    assert tuner.state == states.IDLE and tuner.best is None
    first = tuner.ask()
    assert tuner.state == states.TUNING
    assert tuner.ask() == first  # asking again without telling gives the same config
    validate(first, 10, tuner.clusters)
    asked = [str(first)] + _drive(tuner, sim, 100)[1:]
    assert tuner.evaluations == len(tuner.history) <= 8
    assert tuner.state == states.CONVERGED and tuner.converged
    assert tuner.ask() is None
    config, fps = tuner.best
    assert fps == np.mean(tuner.measured[str(config)])
    estimates = tuner.estimates()
    assert estimates[str(config)] == max(estimates.values())
    assert fps >= 0.95 * max(np.mean(v) for v in tuner.measured.values())
    for h in tuner.history:
        assert set(h) >= {"index", "config", "fps", "time", "state", "predicted_fps", "reason"}
        assert h["reason"] in {"hints", "baseline", "first", "exploit", "re-measure", "explore", "near-tie", "confirm"}
        validate(parse_config(h["config"]), 10, tuner.clusters)
    assert [h["index"] for h in tuner.history] == list(range(1, len(tuner.history) + 1))
    status = tuner.status()
    assert status["state"] == "converged" and status["best"]["config"] == str(config)
    assert len(asked) == tuner.evaluations
    assert tuner.history[0]["reason"] == "hints"


def test_tell_validates_its_input():
    tuner = _tuner()
    with pytest.raises(ConfigError, match="not covered"):
        tuner.tell("0-3@a57:4", 10.0)
    with pytest.raises(ConfigError, match="fps must be finite"):
        tuner.tell("0-9@a57:4", float("nan"))
    with pytest.raises(ConfigError, match="unit_times has 3 entries, the model has 10 units"):
        tuner.tell("0-9@a57:4", 10.0, unit_times=[1, 2, 3])
    tuner.tell("0-9@a57:4", 10.0, unit_times={0: 5.0, 3: 7.0})  # partial per-unit times are fine
    assert tuner.cost.measured_cells() == 2
    with pytest.raises(ConfigError, match="unknown cluster 'gpu'"):
        tuner.retune({"gpu": 0.5})
    with pytest.raises(ConfigError, match="budget must be >= 1"):
        _tuner(budget=0)


@pytest.mark.parametrize("board, n, seed", [(TX2, 12, 1), (TX2, 8, 2), (HIKEY, 10, 3)])
def test_converges_near_the_optimum_on_a_simulated_board(board, n, seed):
    table = synthetic_table(board, n, seed=seed)
    result = run_simulation(board, table, budget=40, seed=seed)
    assert result["found_fps"] >= 0.95 * result["optimum_fps"]
    assert result["evaluations_to_95"] is not None and result["evaluations_to_95"] <= 30
    assert result["evaluations"] <= 40 and result["state"] == "converged"
    # it evaluates few, mostly good candidates
    assert result["within_10pct"] >= 0.5
    assert result["served_share"] >= 0.9


def test_retunes_after_a_frequency_change():
    table = synthetic_table(TX2, 12, seed=4)
    result = run_simulation(TX2, table, budget=40, seed=4, dvfs_schedule=[(30, "a57", 0.5)])
    rt = result["retune"]
    assert rt["at"] == 30 and rt["cluster"] == "a57" and rt["factor"] == 0.5
    assert rt["optimum_fps"] < result["optimum_fps"]
    assert rt["evaluations_to_95"] is not None and rt["evaluations_to_95"] <= 15
    assert rt["found_fps"] >= 0.95 * rt["optimum_fps"]
    states_seen = [h["state"] for h in result["history"]]
    assert "tuning" in states_seen and "retuning" in states_seen


def test_retune_scales_the_surrogate_and_starts_an_episode():
    tuner = _tuner(budget=30)
    sim = SimulatedBoard(TX2, tuner.cost.predicted, seed=0)
    _drive(tuner, sim, 30)
    config = tuner.best[0]
    before = tuner.surrogate().periods(config)
    tuner.retune({"a57": 0.5})
    assert tuner.state == states.RETUNING and tuner.retunes == 1 and tuner.best is None
    after = tuner.surrogate().periods(config)
    for stage, b, a in zip(config.stages, before, after):
        if stage.cluster == "a57":
            assert a > 1.5 * b
        else:
            assert a == pytest.approx(b, rel=0.2)
    assert tuner.ask() is not None


def test_pin_and_unpin():
    tuner = _tuner(budget=20)
    sim = SimulatedBoard(TX2, tuner.cost.predicted, seed=0)
    _drive(tuner, sim, 2)
    tuner.pin("0-4@denver:2 | 5-9@a57:4")
    assert tuner.state == states.PINNED and tuner.ask() is None
    assert tuner.status()["config"] == "0-4@denver:2 | 5-9@a57:4"
    with pytest.raises(ConfigError):
        tuner.pin("0-4@denver:3 | 5-9@a57:4")
    tuner.retune({"denver": 0.8})  # while pinned: remembered, search resumes on unpin
    assert tuner.state == states.PINNED
    tuner.unpin()
    assert tuner.state == states.RETUNING and tuner.ask() is not None


def test_a_stored_best_adopted_while_pinned_waits_for_unpin():
    tuner = _tuner(budget=20)
    sim = SimulatedBoard(TX2, tuner.cost.predicted, seed=0)
    _drive(tuner, sim, 2)
    pinned, stored = "0-4@denver:2 | 5-9@a57:4", "0-9@a57:4"
    tuner.pin(pinned)
    tuner.adopt(stored, 10.0)
    assert tuner.state == states.PINNED and tuner.status()["config"] == pinned and tuner.ask() is None
    tuner.unpin()
    assert tuner.state in states.SEARCHING and str(tuner.ask()) == stored      # verified first


def test_a_retune_forgets_the_stored_best_expected_at_the_old_speeds():
    tuner = _tuner(budget=20)
    sim = SimulatedBoard(TX2, tuner.cost.predicted, seed=0)
    stored = "0-9@a57:4"
    tuner.adopt(stored, 10.0)
    tuner.retune({"a57": 0.5})                 # before the stored best was measured
    for _ in range(5):
        config = tuner.ask()
        if str(config) == stored:
            break
        tuner.tell(config, sim.measure(config)[0])
    tuner.tell(parse_config(stored), 50.0)     # well above what was expected at the old speeds
    assert tuner.state == states.RETUNING      # not taken as the stored best holding up


def test_checkpoint_round_trip_resumes_identically():
    a = _tuner(board=HIKEY, n=9, seed=5, budget=30)
    sim_a = SimulatedBoard(HIKEY, a.cost.predicted, seed=5)
    _drive(a, sim_a, 5)
    state = json.loads(json.dumps(a.to_state()))
    b = Tuner.from_state(state)
    assert b.to_state() == state
    sim_b = SimulatedBoard(HIKEY, a.cost.predicted, seed=5)
    for _ in range(5):
        sim_b.measure(parse_config("0-8@big:4"))  # bring its noise stream level with sim_a's
    assert _drive(a, sim_a, 30) == _drive(b, sim_b, 30)
    assert a.to_state()["history"][-1]["config"] == b.to_state()["history"][-1]["config"]
    assert a.state == b.state and a.best == b.best
    c = _tuner(board=HIKEY, n=9, seed=5, budget=30)
    c.adopt("0-8@big:4", 10.0)
    assert Tuner.from_state(json.loads(json.dumps(c.to_state()))).to_state() == c.to_state()
    with pytest.raises(TunerdError, match="version"):
        Tuner.from_state({**state, "version": 99})
    with pytest.raises(TunerdError, match="bad tuner state"):
        Tuner.from_state({"version": state["version"]})


def test_same_seed_same_search():
    def run(seed):
        tuner = Tuner(board_clusters(HIKEY), synthetic_table(HIKEY, 9, seed=1), rng_seed=seed, budget=20,
                      interconnect_gbs=3.0)
        return _drive(tuner, SimulatedBoard(HIKEY, tuner.cost.predicted, seed=1), 20)

    assert run(3) == run(3)


def test_a_space_of_one_config_converges():
    from tunerd.pipeconfig import ClusterSpec
    for use_hints in (True, False):
        tuner = Tuner([ClusterSpec("c", "X", 1)], UnitCostTable({"X": [[5.0]]}, [1.0]), budget=10,
                      use_hints=use_hints)
        told = 0
        while (config := tuner.ask()) is not None:
            tuner.tell(config, 100.0 + told, unit_times=[5.0])
            told += 1
        assert tuner.converged and str(tuner.best[0]) == "0-0@c:1" and told == 2


def test_elites_are_re_measured():
    table = synthetic_table(TX2, 10, seed=6)
    result = run_simulation(TX2, table, budget=40, seed=6, noise=0.08)
    counts = {}
    for h in result["history"]:
        counts[h["config"]] = counts.get(h["config"], 0) + 1
    assert counts[result["config"]] >= 2


def test_converges_only_once_the_surrogates_top_configs_were_evaluated_live():
    """Convergence on patience is not enough: the surrogate's best few (and the DSE's best
    layouts) rated near the incumbent must have been measured, not just predicted."""
    from tunerd.tuning.dse import explore
    confirmed = 0
    for seed in range(4):
        tuner = _tuner(board=HIKEY, n=12, seed=seed, budget=60)
        sim = SimulatedBoard(HIKEY, tuner.cost.predicted, seed=seed)
        _drive(tuner, sim, 200)
        assert tuner.converged and tuner.episode_evaluations < 60   # converged, not out of budget
        model = tuner.surrogate()
        floor = tuner.params["confirm_floor"] * model.fps(tuner.best[0])
        # the DSE's best few on the surrogate: as good ones were measured (ties may differ)
        rated = sorted((model.fps(parse_config(k)) for k in tuner.measured), reverse=True)
        for i, r in enumerate(explore(model, max_stages=tuner.space.max_stages, top_k=tuner.params["confirm_top_k"])):
            if r.fps >= floor:
                assert rated[i] >= r.fps * (1 - 1e-9), (seed, str(r.config))
        confirmed += sum(h["reason"] == "confirm" for h in tuner.history)
    assert confirmed > 0


def test_contenders_within_noise_race_the_incumbent():
    """Noise-free measurements: the noise estimate stays at its prior, and every config measured
    within 1.5 standard errors of the incumbent has as many measurements as the race asks for."""
    tuner = _tuner(board=HIKEY, n=12, seed=5, budget=60, race_samples=3)
    sim = SimulatedBoard(HIKEY, tuner.cost.predicted, seed=5, noise=0.0)
    _drive(tuner, sim, 200)
    assert tuner.converged and tuner.episode_evaluations < 60
    best = str(tuner.best[0])
    assert len(tuner.measured[best]) >= 2
    sd, top = tuner.noise(), np.mean(tuner.measured[best])
    close = [k for k, v in tuner.measured.items()
             if k != best and np.mean(v) >= top * (1 - 1.5 * sd * math.sqrt(1 / len(v) + 1 / len(tuner.measured[best])))]
    for key in close:
        assert min(len(tuner.measured[key]), len(tuner.measured[best])) >= 3, key


def test_ga_without_hints_stays_valid():
    tuner = _tuner(budget=25, use_hints=False, population_size=6, offspring_size=6)
    sim = SimulatedBoard(TX2, tuner.cost.predicted, seed=0)
    asked = _drive(tuner, sim, 40)
    assert 6 <= len(asked) <= 25
    for text in asked:
        validate(parse_config(text), 10, tuner.clusters)


# -- the cost table (surrogate) -----------------------------------------------------------------
def _table(n=4):
    return UnitCostTable({"A": np.tile([[8.0, 4.0, 3.0, 2.5]], (n, 1)), "B": np.tile([[16.0, 8.0, 6.0, 5.0]], (n, 1))},
                         np.full(n, 1e3))


def test_cost_table_running_stats_and_back_off():
    cost = SurrogateTable(_table())
    cost.add("A", 2, np.array([0, 1]), np.array([5.0, 3.0]))
    cost.add("A", 2, np.array([0]), np.array([7.0]))
    _count, mean, var = cost.cells("A")
    assert mean[0, 1] == pytest.approx(6.0) and var[0, 1] == pytest.approx(2.0)
    est = cost.estimate()
    assert est.ms("A", 2)[0] == pytest.approx(6.0) and est.ms("A", 2)[1] == pytest.approx(3.0)
    # same unit and core type, other core counts: the unit's measured ratio carries over
    assert est.ms("A", 4)[0] == pytest.approx(2.5 * 6.0 / 4.0)
    # unit 2 never measured: the core type's bias (mean log ratio of the measured cells)
    bias = math.exp((math.log(6.0 / 4.0) + math.log(3.0 / 4.0)) / 2)
    assert est.ms("A", 1)[2] == pytest.approx(8.0 * bias)
    # on the other core type: the units' residuals (after A's bias) carry over, shrunk by the
    # prior correlation 0.5 (no unit has been seen on both types yet); unseen units keep predictions
    resid0 = math.log(6.0 / 4.0) - math.log(bias)
    resid1 = math.log(3.0 / 4.0) - math.log(bias)
    assert est.ms("B", 3) == pytest.approx([6.0 * math.exp(0.5 * resid0), 6.0 * math.exp(0.5 * resid1), 6.0, 6.0])
    assert cost.learnt["rho"] == pytest.approx(0.5)
    sd = cost.uncertainty()
    assert sd["A"][0, 1] < sd["A"][0, 3] < sd["B"][0, 0]
    assert (cost.optimistic(1.0).ms("B", 1) < est.ms("B", 1)).all()


def test_cost_table_learns_contention_and_keeps_cells_contention_free():
    cost = SurrogateTable(_table(8))
    rng = np.random.default_rng(0)
    alpha = 0.1
    for workers in (1, 2, 4):
        for _ in range(3):
            ms = 4.0 * (1 + alpha * (workers - 1)) * (1 + 0.01 * rng.standard_normal(8))
            cost.add("A", 2, np.arange(8), ms, workers=workers)
    cost.estimate()
    assert cost.alpha["A"] == pytest.approx(alpha, abs=0.02)
    assert cost.estimate().ms("A", 2) == pytest.approx(np.full(8, 4.0), rel=0.03)
    # unidentifiable (one worker count only): the prior stays
    other = SurrogateTable(_table(8), {"A": 0.05})
    other.add("A", 1, np.arange(8), np.full(8, 9.0), workers=4)
    other.estimate()
    assert other.alpha["A"] == 0.05
    assert other.estimate().ms("A", 1)[0] == pytest.approx(9.0 / 1.15)


def test_cost_table_soften_and_round_trip():
    cost = SurrogateTable(_table(), {"A": 0.02})
    for x in (4.0, 6.0, 5.0):
        cost.add("A", 1, np.array([3]), np.array([x]), workers=2)
    again = SurrogateTable.from_dict(json.loads(json.dumps(cost.to_dict())))
    assert again.to_dict() == cost.to_dict()
    assert again.estimate().ms("A", 1) == pytest.approx(cost.estimate().ms("A", 1))
    cost.soften(1)
    count, mean, _var = cost.cells("A")
    assert count[3, 0] == 1 and mean[3, 0] == pytest.approx(5.0 / 1.02)
    cost.add("A", 1, np.array([3]), np.array([8.0 * 1.02]), workers=2)
    assert cost.cells("A")[1][3, 0] == pytest.approx((5.0 + 8.0 * 1.02) / 2 / 1.02)


def test_a_retune_before_the_first_search_only_changes_the_speeds():
    config = parse_config("0-4@denver:2 | 5-9@a57:4")
    for pin_first in (False, True):
        tuner = _tuner(budget=20)
        if pin_first:
            tuner.pin(config)
        before = tuner.surrogate().fps(config)
        tuner.retune({"a57": 0.5})
        assert tuner.retunes == 0 and tuner.speeds["a57"] == 0.5
        assert tuner.surrogate().fps(config) < before          # the first search runs at the new speeds
        tuner.unpin()
        assert tuner.state == states.IDLE
        tuner.ask()
        assert tuner.state == states.TUNING and tuner.episode_budget == 20


def test_gain_over_the_best_single_cluster_config_measured():
    tuner = _tuner(budget=20)
    n = tuner.n_units
    assert tuner.gain() is None                       # nothing measured
    tuner.ask()                                       # the search starts
    tuner.tell(f"0-{n - 1}@a57:4", 10.0)
    tuner.tell(f"0-{n - 1}@denver:2", 12.0)
    tuner.tell(f"0-{n - 1}@denver:2", 14.0)
    gain = tuner.gain(f"0-{n - 1}@denver:2")          # a single-cluster config is its own baseline
    assert gain["single_cluster"] == {"config": f"0-{n - 1}@denver:2", "fps": 13.0} and gain["ratio"] == 1.0
    pipe = f"0-3@denver:2|4-{n - 1}@a57:4"
    assert tuner.gain(pipe) is None                   # not measured: no figure
    tuner.tell(pipe, 19.5)
    gain = tuner.gain(pipe)
    assert gain["fps"] == 19.5 and gain["ratio"] == pytest.approx(1.5)
    assert gain["single_cluster"]["config"] == f"0-{n - 1}@denver:2"
    two_stages_one_cluster = f"0-3@a57:2|4-{n - 1}@a57:2"
    tuner.tell(two_stages_one_cluster, 15.0)         # a pipeline inside one cluster counts as single-cluster
    assert tuner.gain(pipe)["single_cluster"] == {"config": str(parse_config(two_stages_one_cluster)), "fps": 15.0}
    assert tuner.gain()["config"] == str(tuner.best[0])
    tuner.retune({"denver": 0.5})
    assert tuner.gain(pipe) is None                   # measured at the old speeds: forgotten


def test_the_history_and_the_books_stay_bounded_over_many_retunes():
    from tunerd.tuning import tuner as tuner_mod
    t = Tuner(board_clusters(HIKEY), synthetic_table(HIKEY, 9, seed=1), rng_seed=0, budget=6, clock=lambda: 0.0)
    kept = tuner_mod.HISTORY_KEPT
    tuner_mod.HISTORY_KEPT = 50
    try:
        for episode in range(30):
            for _ in range(6):
                config = t.ask()
                if config is None:
                    break
                t.tell(config, 10.0 + episode)
            t.retune({c.name: 1.0 if episode % 2 else 0.8 for c in board_clusters(HIKEY)})
        assert len(t.history) == 50 and t.history[-1]["index"] == t.evaluations > 50
        assert len(t._reasons) <= len(t.queue) + len(t.pending) + 2     # nothing left from past searches
    finally:
        tuner_mod.HISTORY_KEPT = kept


def test_the_baseline_after_a_retune_is_the_cluster_its_stages_measured_fastest():
    # the hints price both clusters alike; the stages measured little three times slower. After big
    # is throttled to 0.8 it is still the faster one, and the baseline (what the gain is over) is it
    t = Tuner([ClusterSpec("big", "B", 1), ClusterSpec("little", "L", 1)],
              UnitCostTable({"B": [[5.0]] * 4, "L": [[5.0]] * 4}, [1.0] * 4), rng_seed=0, budget=10,
              clock=lambda: 0.0)
    t.tell("0-3@big:1", 50.0, unit_times=[5.0] * 4)
    t.tell("0-3@little:1", 16.0, unit_times=[15.0] * 4)
    t.retune({"big": 0.8, "little": 1.0})
    assert str(t.baseline()) == "0-3@big:1"     # on the hints alone: little (1.0 against 0.8)
