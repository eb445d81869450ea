"""`tunerd simulate`: run the real tuner against a simulated board (DESIGN.md, Commands)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from ..errors import HintsError

HELP = "run the tuner against a simulated board and compare with the exhaustive optimum"


def parse_dvfs(text: str) -> tuple[int, str, float]:
    """``AT:CLUSTER:FACTOR`` (e.g. ``40:big:0.6``) -> (40, 'big', 0.6)."""
    parts = text.split(":")
    try:
        if len(parts) != 3 or not parts[1]:
            raise ValueError
        at, cluster, factor = int(parts[0]), parts[1], float(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --dvfs {text!r}: expected AT:CLUSTER:FACTOR, e.g. 40:big:0.6") from None
    # NOTE: an event fires between measurement windows; window 0 is the first, so AT 0 would be
    # the board's state before anything was measured (the nominal optimum compared with nothing)
    if at < 1 or not factor > 0:
        raise argparse.ArgumentTypeError(f"bad --dvfs {text!r}: AT must be >= 1 (a measurement window) "
                                         f"and FACTOR > 0")
    return at, cluster, factor


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("simulate", help=HELP, description=HELP)
    p.add_argument("--board", required=True, metavar="NAME|FILE", help="shipped board name or board JSON file")
    p.add_argument("--model", metavar="SRC", help="model: path to .onnx or zoo:NAME (costs predicted for the board)")
    p.add_argument("--hints", metavar="FILE", help="use this hints file for the unit costs instead of --model")
    p.add_argument("--input-size", type=int, default=None, metavar="N", help="shrink the input to NxN")
    p.add_argument("--budget", type=int, default=60, metavar="N", help="live evaluations per tuning episode")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the simulated truth and the tuner")
    p.add_argument("--sigma", type=float, default=0.25, metavar="S",
                   help="log-sd of the true costs' deviation from the predictions")
    p.add_argument("--noise", type=float, default=0.03, metavar="X", help="relative noise of each measurement")
    p.add_argument("--dvfs", type=parse_dvfs, action="append", default=None, metavar="AT:CLUSTER:FACTOR",
                   help="at measurement window AT set CLUSTER to FACTOR of its frequency (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def load_table(args: argparse.Namespace, board: dict) -> tuple[Any, str]:
    """The predicted unit cost table for the run and a name for the model."""
    from ..costs.table import UnitCostTable  # noqa: PLC0415
    try:
        from ..costs import hints  # noqa: PLC0415 - written separately; only needed here
    except ImportError as err:
        raise HintsError(f"hints are not available: {err}") from err
    if args.hints:
        h = hints.load_hints(args.hints)
        return UnitCostTable.from_hints(h), str(getattr(h, "model_name", args.hints))
    h = hints.predict_for_board(args.model, board, input_size=args.input_size)
    return UnitCostTable.from_hints(h), str(getattr(h, "model_name", args.model))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _fps(value: float | None) -> str:
    return "    none" if value is None else f"{value:8.3f}"


def run(args: argparse.Namespace) -> int:
    from ..platform.boards import load_board  # noqa: PLC0415 - keep `tunerd --help` fast
    from ..tuning.simulator import run_simulation  # noqa: PLC0415

    if not args.model and not args.hints:
        raise HintsError("one of --model or --hints is required")
    if args.budget < 1:
        raise HintsError(f"--budget must be >= 1, got {args.budget}")
    if args.seed < 0:
        raise HintsError(f"--seed must be >= 0, got {args.seed}")
    for name in ("sigma", "noise"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise HintsError(f"--{name} must be a finite number >= 0, got {value}")
    board = load_board(args.board)
    table, model_name = load_table(args, board)
    result = run_simulation(board, table, budget=args.budget, seed=args.seed, sigma=args.sigma,
                            noise=args.noise, dvfs_schedule=args.dvfs)
    result["model"] = model_name
    if args.json:
        json.dump(result, sys.stdout, default=_plain)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout
    print(f"board {result['board']}, model {model_name} ({result['n_units']} units),"
          f" budget {args.budget}, seed {args.seed}", file=out)
    print(f"found    {_fps(result['found_fps'])} fps  {result['config']}", file=out)
    print(f"optimum  {result['optimum_fps']:8.3f} fps  {result['optimum_config']}  (exhaustive)", file=out)
    to95 = result["evaluations_to_95"]
    print(f"found/optimum {result['found_ratio']:.3f} after {result['evaluations']} evaluations"
          f" (95% of optimum after {to95 if to95 is not None else 'never'})", file=out)
    for rt in result.get("retunes", []):
        back = rt["evaluations_to_95"]
        what = ", ".join(f"{c} x{f}" for c, f in rt["events"])
        print(f"dvfs at window {rt['at']} ({what}): found {_fps(rt['found_fps']).strip()}"
              f" / optimum {rt['optimum_fps']:.3f} fps ({rt['found_ratio']:.3f}),"
              f" back within 5% after {back if back is not None else 'never'} evaluations", file=out)
    return 0
