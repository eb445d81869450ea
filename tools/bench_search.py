#!/usr/bin/env python3
"""Compare search methods on simulated boards, for the same evaluation budget.

Methods (side by side, same boards x models x seeds, same simulated truth):
  ga-hints   the tuner: GA seeded with hints, surrogate cost table, DSE on the refined table
  dse        Pipe-it-style DSE on the hints alone (no live evaluation)
  ga-random  the same GA without hints: random start, every offspring evaluated live
  random     random search over valid configs
  hill       hill climbing from the hints' DSE config (first improvement, random neighbours)

Per method: found/optimum (median, worst; "found" is the true fps of the config the method would
serve), evaluations until that config is within 95% and 99% of the optimum (median; '>B' = never
within the budget B), share of evaluated candidates truly within 10% of the optimum (pooled),
mean true throughput over the B measurement windows as a share of the optimum (a method that
stops early serves its best config for the rest), and after a DVFS change (the fastest cluster
slowed to --dvfs-factor at window --dvfs-at) the evaluations to get back within 5% of the new
optimum (median, worst). The optimum is exhaustive (tunerd.tuning.dse.exhaustive_optimum) on the
simulated truth. With several boards the same table follows per board.

  tools/bench_search.py --tables-from synthetic --seeds 5 [--json out.json] [--plot DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunerd.platform.boards import board_clusters, load_board  # noqa: E402
from tunerd.tuning.dse import explore  # noqa: E402
from tunerd.errors import TunerdError  # noqa: E402
from tunerd.tuning.genome import GenomeSpace  # noqa: E402
from tunerd.tuning.simulator import (DEFAULT_CONTENTION, DEFAULT_CONTENTION_PRIOR, SimulatedBoard,  # noqa: E402
                              contention_prior, drive, synthetic_table)
from tunerd.costs.table import UnitCostTable  # noqa: E402
from tunerd.tuning.throughput import PipelineModel  # noqa: E402
from tunerd.tuning.tuner import Tuner  # noqa: E402

# Illustrative boards used when the shipped board files are not installed.
FALLBACK_BOARDS = {
    "hikey970": {"name": "hikey970", "interconnect_gbs": 3.0, "clusters": [
        {"name": "little", "core_type": "A53", "cores": 4, "freq_mhz": 1800, "gflops_per_core": 3.6, "bandwidth_gbs": 4.0},
        {"name": "big", "core_type": "A73", "cores": 4, "freq_mhz": 2360, "gflops_per_core": 9.4, "bandwidth_gbs": 8.0}]},
    "odroid-xu3": {"name": "odroid-xu3", "interconnect_gbs": 2.0, "clusters": [
        {"name": "little", "core_type": "A7", "cores": 4, "freq_mhz": 1400, "gflops_per_core": 1.2, "bandwidth_gbs": 2.0},
        {"name": "big", "core_type": "A15", "cores": 4, "freq_mhz": 2000, "gflops_per_core": 4.0, "bandwidth_gbs": 4.0}]},
    "jetson-tx2": {"name": "jetson-tx2", "interconnect_gbs": 4.0, "clusters": [
        {"name": "denver", "core_type": "Denver2", "cores": 2, "freq_mhz": 2035, "gflops_per_core": 8.0, "bandwidth_gbs": 10.0},
        {"name": "a57", "core_type": "A57", "cores": 4, "freq_mhz": 2035, "gflops_per_core": 5.0, "bandwidth_gbs": 10.0}]},
}
# Unit counts of the zoo models (DESIGN.md) for synthetic tables.
MODEL_UNITS = {"alexnet": 8, "googlenet": 13, "resnet50": 18, "squeezenet": 16, "mobilenet": 28}
METHODS = ["ga-hints", "dse", "ga-random", "random", "hill"]


# -- baselines (the ask/tell/best/retune protocol of tunerd.tuning.simulator.drive) ----------------------
class _Measured:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.measured: dict[str, tuple[Any, list[float]]] = {}
        self.used = 0

    @property
    def best(self):
        if not self.measured:
            return None
        cfg, vals = max(self.measured.values(), key=lambda cv: sum(cv[1]) / len(cv[1]))
        return cfg, sum(vals) / len(vals)

    def tell(self, config, fps, *, unit_times=None) -> None:
        self.measured.setdefault(str(config), (config, []))[1].append(fps)
        self.used += 1

    def retune(self, factors) -> None:
        self.measured = {}
        self.used = 0


class RandomSearch(_Measured):
    def __init__(self, clusters, table, *, budget: int, seed: int, **_: Any) -> None:
        super().__init__(budget)
        self.space = GenomeSpace(clusters, table.n_units)
        self.rng = random.Random(seed)

    def ask(self):
        if self.used >= self.budget:
            return None
        for _ in range(50):
            config = self.space.to_config(self.space.random_genome(self.rng))
            if str(config) not in self.measured:
                return config
        return config


class HillClimb(_Measured):
    """First-improvement hill climbing from the hints' DSE config over mutation neighbours."""

    def __init__(self, clusters, table, *, budget: int, seed: int, interconnect_gbs=None, **_: Any) -> None:
        super().__init__(budget)
        self.space = GenomeSpace(clusters, table.n_units)
        self.rng = random.Random(seed)
        self.table, self.clusters, self.gbs = table, list(clusters), interconnect_gbs
        self.speeds: dict[str, float] = {}
        self._start()

    def _start(self) -> None:
        model = PipelineModel(self.table, self.clusters, interconnect_gbs=self.gbs).with_speeds(self.speeds)
        self.current = explore(model, top_k=1)[0].config

    def ask(self):
        if self.used >= self.budget:
            return None
        if str(self.current) not in self.measured:
            return self.current
        for _ in range(50):
            g = self.space.from_config(self.current)
            self.space.mutate(g, self.rng)
            config = self.space.to_config(g)
            if str(config) not in self.measured:
                return config
        return self.current

    def tell(self, config, fps, *, unit_times=None) -> None:
        super().tell(config, fps)
        cur = self.measured[str(self.current)][1] if str(self.current) in self.measured else None
        if cur is not None and fps > sum(cur) / len(cur):
            self.current = config

    def retune(self, factors) -> None:
        super().retune(factors)
        self.speeds.update(scaled(self.clusters, factors))
        self._start()


class DseOnly:
    """Pipe-it: the DSE's best config on the hints' predictions, never measured."""

    def __init__(self, clusters, table, *, interconnect_gbs=None, **_: Any) -> None:
        self.table, self.clusters, self.gbs = table, list(clusters), interconnect_gbs
        self.speeds: dict[str, float] = {}
        self._start()

    def _start(self) -> None:
        model = PipelineModel(self.table, self.clusters, interconnect_gbs=self.gbs).with_speeds(self.speeds)
        r = explore(model, top_k=1)[0]
        self.best = (r.config, r.fps)

    def ask(self):
        return None

    def tell(self, config, fps, *, unit_times=None) -> None:  # pragma: no cover - never asked
        pass

    def retune(self, factors) -> None:
        self.speeds.update(scaled(self.clusters, factors))
        self._start()


def scaled(clusters, factors) -> dict[str, float]:
    """DVFS factors (relative to a cluster's nominal speed) as speeds."""
    nominal = {c.name: c.speed for c in clusters}
    return {name: nominal[name] * float(f) for name, f in factors.items()}


def make_searcher(method: str, clusters, table, *, budget: int, seed: int, interconnect_gbs: float,
                  contention: dict | None = None, tuner_args: dict | None = None):
    if method == "ga-hints":
        return Tuner(clusters, table, rng_seed=seed, budget=budget, interconnect_gbs=interconnect_gbs,
                     retune_budget=budget, contention=contention, **(tuner_args or {}))
    if method == "ga-random":
        return Tuner(clusters, table, rng_seed=seed, budget=budget, interconnect_gbs=interconnect_gbs,
                     use_hints=False, population_size=8, offspring_size=8, patience=1000, idle_patience=5,
                     retune_budget=budget)
    if method == "random":
        return RandomSearch(clusters, table, budget=budget, seed=seed)
    if method == "hill":
        return HillClimb(clusters, table, budget=budget, seed=seed, interconnect_gbs=interconnect_gbs)
    if method == "dse":
        return DseOnly(clusters, table, interconnect_gbs=interconnect_gbs)
    raise SystemExit(f"unknown method {method!r} (methods: {', '.join(METHODS)})")


# -- tables and boards ----------------------------------------------------------------------------
def get_board(name: str) -> dict:
    try:
        return load_board(name)
    except TunerdError:
        if name in FALLBACK_BOARDS:
            return load_board(FALLBACK_BOARDS[name])
        raise


def get_table(board: dict, model: str, source: str, input_size: int | None) -> UnitCostTable:
    if source == "synthetic":
        n = MODEL_UNITS.get(model)
        if n is None:
            n = int(model) if model.isdigit() else 16
        return synthetic_table(board, n, seed=zlib.crc32(f"{board['name']}/{model}".encode()))
    from tunerd.costs import hints  # noqa: PLC0415 - written separately; only needed for this source
    src = model if (":" in model or model.endswith(".onnx")) else f"zoo:{model}"
    return UnitCostTable.from_hints(hints.predict_for_board(src, board, input_size=input_size))


def fastest_cluster(board: dict) -> str:
    return max(board["clusters"], key=lambda c: c["gflops_per_core"] * c["cores"])["name"]


# -- figures ---------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[dict], budget: int) -> dict:
    big = budget + 1  # "never" sorts after any real count

    def evals(key: str, rs: list[dict]) -> list[float]:
        return [r[key] if r[key] is not None else big for r in rs]

    ratios = [r["found_ratio"] for r in runs]
    evaluated = sum(r["evaluations"] for r in runs)
    within = sum((r["within_10pct"] or 0.0) * r["evaluations"] for r in runs)
    out = {
        "runs": len(runs),
        "found_median": _median(ratios), "found_worst": min(ratios) if ratios else float("nan"),
        "evals_to_95_median": _median(evals("evaluations_to_95", runs)),
        "evals_to_99_median": _median(evals("evaluations_to_99", runs)),
        "evaluations_median": _median([r["evaluations"] for r in runs]),
        "within_10pct": within / evaluated if evaluated else None,
        "served_share": statistics.mean(r["served_share"] for r in runs) if runs else float("nan"),
    }
    rts = [r["retune"] for r in runs if "retune" in r]
    if rts:
        rec = evals("evaluations_to_95", rts)
        out.update({"retune_evals_to_95_median": _median(rec), "retune_evals_to_95_worst": max(rec),
                    "retune_found_median": _median([r["found_ratio"] for r in rts])})
    return out


def fmt_evals(v: float, budget: int) -> str:
    if v != v:
        return "-"
    return f">{budget}" if v > budget else f"{v:g}"


def print_table(summary: dict[str, dict], budget: int, out=sys.stdout) -> None:
    head = (f"{'method':<10} {'found med':>9} {'worst':>6} {'ev->95%':>7} {'ev->99%':>7} {'evals':>5}"
            f" {'<=10%':>6} {'served':>6} {'dvfs->95% med':>13} {'worst':>5}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for method, s in summary.items():
        within = "-" if s["within_10pct"] is None else f"{s['within_10pct']:.2f}"
        rmed = fmt_evals(s.get("retune_evals_to_95_median", float("nan")), budget)
        rworst = fmt_evals(s.get("retune_evals_to_95_worst", float("nan")), budget)
        print(f"{method:<10} {s['found_median']:>9.3f} {s['found_worst']:>6.3f}"
              f" {fmt_evals(s['evals_to_95_median'], budget):>7} {fmt_evals(s['evals_to_99_median'], budget):>7}"
              f" {s['evaluations_median']:>5g} {within:>6} {s['served_share']:>6.3f} {rmed:>13} {rworst:>5}",
              file=out)


def plot(runs_by_method: dict[str, list[dict]], folder: Path, phase_end: float) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - optional
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("bench_search: matplotlib is not installed; no plots", file=sys.stderr)
        return
    folder.mkdir(parents=True, exist_ok=True)
    cases = sorted({(r["board"], r["model"]) for runs in runs_by_method.values() for r in runs})
    for board, model in cases:
        fig, ax = plt.subplots(figsize=(7, 4))
        for method, runs in runs_by_method.items():
            for i, r in enumerate(x for x in runs if (x["board"], x["model"]) == (board, model)):
                ys = [h["best_true_fps"] / r["optimum_fps"] for h in r["history"] if h["window"] < phase_end]
                if ys:
                    ax.plot(range(1, len(ys) + 1), ys, color=f"C{METHODS.index(method) if method in METHODS else 0}",
                            alpha=0.6, label=method if i == 0 else None)
        ax.axhline(0.95, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("evaluation")
        ax.set_ylabel("incumbent / optimum (true)")
        ax.set_title(f"{board} / {model}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / f"{board}_{model}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", default="hikey970,odroid-xu3,jetson-tx2,rk3588,sd855,tensor-g1,intel-hybrid")
    ap.add_argument("--models", default=",".join(MODEL_UNITS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tables-from", choices=("hints", "synthetic"), default="hints")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--noise", type=float, default=0.03)
    ap.add_argument("--contention", type=float, default=DEFAULT_CONTENTION,
                    help="simulated bandwidth sharing (slowdown per extra worker on the best-connected cluster)")
    ap.add_argument("--contention-prior", type=float, default=DEFAULT_CONTENTION_PRIOR,
                    help="what the tuner is told to expect of it (it learns the rest)")
    ap.add_argument("--dvfs-at", type=int, default=60, help="window of the DVFS change (0: none)")
    ap.add_argument("--dvfs-factor", type=float, default=0.6, help="speed of the fastest cluster after it")
    ap.add_argument("--tuner-arg", action="append", default=[], metavar="NAME=VALUE",
                    help="override a Tuner keyword for ga-hints (repeatable), e.g. explore_floor=0.8")
    ap.add_argument("--json", metavar="FILE", help="write per-run figures and the summary as JSON")
    ap.add_argument("--plot", metavar="DIR", help="write convergence plots (needs matplotlib)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    methods = [m for m in args.methods.split(",") if m]
    tuner_args = {}
    for item in args.tuner_arg:
        name, _, value = item.partition("=")
        tuner_args[name] = json.loads(value)
    runs_by_method: dict[str, list[dict]] = {m: [] for m in methods}
    t0 = time.time()
    for board_name in [b for b in args.boards.split(",") if b]:
        board = get_board(board_name)
        clusters = board_clusters(board)
        for model in [m for m in args.models.split(",") if m]:
            try:
                table = get_table(board, model, args.tables_from, args.input_size)
            except (ImportError, AttributeError) as err:
                print(f"bench_search: no hints available ({err}); try --tables-from synthetic", file=sys.stderr)
                return 2
            for seed in range(args.seeds):
                schedule = [(args.dvfs_at, fastest_cluster(board), args.dvfs_factor)] if args.dvfs_at else None
                cache: dict = {}
                for method in methods:
                    sim = SimulatedBoard(board, table, seed=seed, sigma=args.sigma, noise=args.noise,
                                         dvfs_schedule=schedule, contention=args.contention, optimum_cache=cache)
                    searcher = make_searcher(method, clusters, table, budget=args.budget, seed=seed,
                                             interconnect_gbs=sim.interconnect_gbs,
                                             contention=contention_prior(board, args.contention_prior),
                                             tuner_args=tuner_args)
                    t1 = time.time()
                    r = drive(sim, searcher, budget=args.budget)
                    r.update({"method": method, "model": model, "seed": seed, "seconds": time.time() - t1})
                    runs_by_method[method].append(r)
                    if not args.quiet:
                        rt = r.get("retune", {})
                        print(f"{board_name:<11} {model:<10} seed {seed} {method:<9} found {r['found_ratio']:.3f}"
                              f" evals {r['evaluations']:>3} to95 {r['evaluations_to_95']}"
                              f" dvfs-to95 {rt.get('evaluations_to_95')}  ({r['seconds']:.2f}s)",
                              file=sys.stderr)
    summary = {m: summarise(runs, args.budget) for m, runs in runs_by_method.items()}
    print(f"\n{sum(len(r) for r in runs_by_method.values())} runs, budget {args.budget} evaluations,"
          f" tables from {args.tables_from}, sigma {args.sigma}, noise {args.noise},"
          f" contention {args.contention}, {time.time() - t0:.0f}s")
    print_table(summary, args.budget)
    boards = list(dict.fromkeys(r["board"] for runs in runs_by_method.values() for r in runs))
    if len(boards) > 1:
        for board_name in boards:
            print(f"\nboard {board_name}")
            print_table({m: summarise([r for r in runs if r["board"] == board_name], args.budget)
                         for m, runs in runs_by_method.items()}, args.budget)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "runs": runs_by_method},
                                              indent=1, default=str))
    if args.plot:
        plot(runs_by_method, Path(args.plot), args.dvfs_at or float("inf"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
