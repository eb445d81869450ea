"""`tunerd hints`: write a model's hints (predicted unit costs) for a platform or a board."""
from __future__ import annotations

import sys

from ..errors import ConfigError
from ..platform.spec import SPEC_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "hints", help="write the hints file of a model (predicted ms per unit, core type and count)",
        description="Predict every unit's ms on every (core type, core count) from the layer descriptors "
                    "and write the hints JSON. Costs come from a board file (--board) or from a "
                    "calibration of real or emulated cores (--platform, with --calibration or the one "
                    "`tunerd calibrate` stored for that platform).")
    parser.add_argument("--model", required=True, metavar="SRC", help="zoo:NAME or a path to an .onnx file")
    parser.add_argument("--input-size", type=int, default=None, metavar="N", help="input H = W (default: the model's)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--platform", metavar="SPEC", help=SPEC_HELP)
    source.add_argument("--board", metavar="NAME|FILE", help="a shipped board (hikey970, odroid-xu3, jetson-tx2) or a board file")
    parser.add_argument("--calibration", metavar="FILE", help="calibration file (with --platform)")
    parser.add_argument("--sysfs-root", default="/sys", metavar="DIR", help="the directory that plays /sys")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..costs.hints import make_hints, save_hints
    from ..model.loader import load_model
    if args.calibration and not args.platform:
        raise ConfigError("--calibration goes with --platform")
    model = load_model(args.model, input_size=args.input_size)
    if args.board:
        hints = make_hints(model, board=args.board)
    else:
        from ..platform.spec import resolve_platform
        platform = resolve_platform(args.platform, sysfs_root=args.sysfs_root)
        if platform.source == "board":
            hints = make_hints(model, platform=platform)
        else:
            calibration = args.calibration
            if calibration is None:
                from ..costs.calibration_file import default_calibration_path
                path = default_calibration_path(platform)
                if not path.is_file():
                    raise ConfigError(f"no calibration for platform {platform.describe()}: run "
                                      f"`tunerd calibrate --platform {args.platform}` first, or pass --calibration FILE")
                calibration = path
            hints = make_hints(model, calibration=calibration, platform=platform)
    if args.output:
        save_hints(hints, args.output)
        print(summary(hints, args.output), file=sys.stderr)
    else:
        from ..costs.hints import dumps
        sys.stdout.write(dumps(hints))
    return 0


def summary(hints, path: str) -> str:
    parts = [f"{c['name']} ({c['core_type']} x{c['cores']}): {hints.fps(c['core_type'], c['cores']):.2f} fps"
             for c in hints.clusters]
    return (f"wrote {path}: {hints.model_name}, {hints.n_units} units, from {hints.producer.get('kind')} "
            f"{hints.producer.get('name')}; whole model per cluster: {'; '.join(parts)}")
