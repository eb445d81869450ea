#!/usr/bin/env python3
"""Simulated: the optimal pipeline's gain over the antecedents on a board, next to Pipe-it's
published +39% on average over the highest antecedent throughput.

Antecedents (no pipelining; tunerd.tuning.simulator, on the same true costs as the pipelines):
  big        the whole network as one stage on the board's big cluster with all its cores
  single     the same on the best single cluster (the big one, unless the hints say otherwise)
  all-cores  all cores kernel-parallel: one stage on every core of every cluster, each layer split
             evenly over all the threads (a static split, as ARM-CL does), a unit done when the
             slowest cluster's share is, plus the exchange of each unit's output between the
             clusters over the board's interconnect (tunerd.tuning.simulator.kernel_parallel_ms)

The optimum is exhaustive (tunerd.tuning.dse.exhaustive_optimum) over pipelines with replicated stages
(ours), and, for a fair comparison with Pipe-it (which has no replicas), over pipelines without
them ("no replicas"). "best ante" = the highest of the antecedents, Pipe-it's reference. True
costs are the simulator's (hints with the seeded per-unit error); fps and gains are means over
seeds (a gain is taken per seed, then averaged).

    python tools/bench_gain.py [--board hikey970] [--seeds 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunerd.platform.boards import load_board  # noqa: E402
from tunerd.costs.hints import predict_for_board  # noqa: E402
from tunerd.tuning.simulator import SimulatedBoard  # noqa: E402

MODELS = ["alexnet", "googlenet", "mobilenet", "resnet50", "squeezenet"]
PIPE_IT_GAIN = 0.39   # Pipe-it (seeds 000/001): +39% on average over the highest antecedent throughput


def big_cluster(board: dict) -> str:
    """The cluster named ``big``, else the one with the most peak GFLOPS."""
    names = [c["name"] for c in board["clusters"]]
    if "big" in names:
        return "big"
    return max(board["clusters"], key=lambda c: c["gflops_per_core"] * c["cores"])["name"]


def measure(board: dict, name: str, seeds: int) -> dict:
    table = predict_for_board(f"zoo:{name}", board).to_table()
    big = big_cluster(board)
    per_seed = []
    for seed in range(seeds):
        sim = SimulatedBoard(board, table, seed=seed)
        kp = sim.kernel_parallel_parts()
        kp_ms = sum(kp.values())
        exchange = float(kp["exchange"].sum())
        opt, norep = sim.optimum(), sim.optimum(replicas=False)
        row = {"optimum": sim.true_fps(opt.config), "no_replicas": sim.true_fps(norep.config),
               "big": sim.single_cluster_fps(big),
               "single": max(sim.single_cluster_fps(c.name) for c in sim.clusters),
               "all_cores": 1000.0 / float(kp_ms.sum()),
               "kp_exchange_share": exchange / float(kp_ms.sum()),
               "optimum_config": str(opt.config), "no_replicas_config": str(norep.config)}
        row["best_ante"] = max(row["big"], row["single"], row["all_cores"])
        per_seed.append(row)

    def mean(key: str) -> float:
        return statistics.mean(r[key] for r in per_seed)

    def gain(top: str, ante: str) -> float:
        return statistics.mean(r[top] / r[ante] - 1 for r in per_seed)

    out = {"model": name, "seeds": seeds, "big_cluster": big}
    for key in ("optimum", "no_replicas", "big", "single", "all_cores", "best_ante", "kp_exchange_share"):
        out[f"{key}_fps" if key != "kp_exchange_share" else key] = mean(key)
    for ante in ("big", "single", "all_cores", "best_ante"):
        out[f"gain_over_{ante}"] = gain("optimum", ante)
        out[f"no_replicas_gain_over_{ante}"] = gain("no_replicas", ante)
    out["all_cores_vs_big"] = statistics.mean(r["all_cores"] / r["big"] - 1 for r in per_seed)
    out["optimum_config"] = per_seed[-1]["optimum_config"]          # of the last seed, for illustration
    out["no_replicas_config"] = per_seed[-1]["no_replicas_config"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", default="hikey970")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    board = load_board(args.board)
    rows = [measure(board, name, args.seeds) for name in args.models.split(",") if name]
    gains = [k for k in rows[0] if "gain_over" in k] + ["all_cores_vs_big"]
    means = {k: statistics.mean(r[k] for r in rows) for k in gains}
    if args.json:
        print(json.dumps({"board": args.board, "seeds": args.seeds, "pipe_it_gain": PIPE_IT_GAIN,
                          "sync_us": float(board.get("cross_cluster_sync_us", 0.0)),
                          "rows": rows, "means": means}, indent=2))
        return 0
    print(f"simulated {args.board}, mean over {args.seeds} seeds; fps, and the optimum's gain over each antecedent")
    head = (f"{'model':<11} {'optimum':>8} {'big':>7} {'gain':>7} {'single':>7} {'gain':>7} {'all-cores':>9} {'gain':>7}"
            f" {'best ante':>9} {'no-repl':>8} {'gain/best':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<11} {r['optimum_fps']:8.2f} {r['big_fps']:7.2f} {100 * r['gain_over_big']:+6.1f}%"
              f" {r['single_fps']:7.2f} {100 * r['gain_over_single']:+6.1f}% {r['all_cores_fps']:9.2f}"
              f" {100 * r['gain_over_all_cores']:+6.1f}% {100 * r['gain_over_best_ante']:+8.1f}%"
              f" {r['no_replicas_fps']:8.2f} {100 * r['no_replicas_gain_over_best_ante']:+8.1f}%")
    print(f"{'mean':<11} {'':>8} {'':>7} {100 * means['gain_over_big']:+6.1f}% {'':>7}"
          f" {100 * means['gain_over_single']:+6.1f}% {'':>9} {100 * means['gain_over_all_cores']:+6.1f}%"
          f" {100 * means['gain_over_best_ante']:+8.1f}% {'':>8} {100 * means['no_replicas_gain_over_best_ante']:+8.1f}%")
    print(f"Pipe-it reports {100 * PIPE_IT_GAIN:+.0f}% on average over the highest antecedent (no replicas).")
    per_model = ", ".join(f"{r['model']} {100 * r['all_cores_vs_big']:+.0f}%" for r in rows)
    shares = ", ".join(f"{100 * r['kp_exchange_share']:.0f}%" for r in rows)
    print(f"all cores kernel-parallel vs big cluster alone: mean {100 * means['all_cores_vs_big']:+.1f}%"
          f" ({per_model}); exchange over the interconnect = {shares} of its time")
    for r in rows:
        print(f"  e.g. {r['model']}: {r['optimum_config']}   no replicas: {r['no_replicas_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
