#!/usr/bin/env python3
"""Simulated: the optimal pipeline's gain over the best antecedent on a board (Pipe-it reports +39%
on average over the highest antecedent throughput).

Antecedent here: the whole network as one stage on the best single cluster with all its cores
(kernel-parallel inside one cluster). Cross-cluster kernel parallelism (all 8 cores on every layer)
is not modelled by the simulator, so it is not reported. True costs are the simulator's (hints with
the seeded per-unit error), averaged over seeds.

    python tools/bench_gain.py [--board hikey970] [--seeds 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from tunerd.boards import board_clusters, load_board
from tunerd.hints import predict_for_board
from tunerd.pipeconfig import parse_config
from tunerd.simulator import SimulatedBoard

MODELS = ["alexnet", "googlenet", "mobilenet", "resnet50", "squeezenet"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", default="hikey970")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    board = load_board(args.board)
    rows = []
    for name in MODELS:
        table = predict_for_board(f"zoo:{name}", board).to_table()
        n = table.n_units
        gains, singles, optima = [], [], []
        for seed in range(args.seeds):
            sim = SimulatedBoard(board, table, seed=seed)
            single = max(sim.true_fps(parse_config(f"0-{n - 1}@{c.name}:{c.cores}")) for c in board_clusters(board))
            opt = sim.optimum()
            optimum = sim.true_fps(opt.config)
            singles.append(single)
            optima.append(optimum)
            gains.append(optimum / single - 1)
        rows.append({"model": name, "best_single_cluster_fps": statistics.mean(singles),
                     "optimum_fps": statistics.mean(optima), "gain": statistics.mean(gains),
                     "optimum_config": str(opt.config)})
    mean_gain = statistics.mean(r["gain"] for r in rows)
    if args.json:
        print(json.dumps({"board": args.board, "rows": rows, "mean_gain": mean_gain}, indent=2))
        return 0
    print(f"simulated {args.board}, mean over {args.seeds} seeds")
    for r in rows:
        print(f"  {r['model']:<11} best single cluster {r['best_single_cluster_fps']:7.2f} fps   optimal pipeline "
              f"{r['optimum_fps']:7.2f} fps   gain {100 * r['gain']:+5.1f}%   e.g. {r['optimum_config']}")
    print(f"  mean gain {100 * mean_gain:+.1f}% (Pipe-it reports +39% on average)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
