"""`tunerd hints`: write a model's hints (predicted unit costs) for a platform or a board."""
from __future__ import annotations

import sys

from ..backends import BACKEND_NAMES
from ..errors import ConfigError
from ..platform.spec import SPEC_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "hints", help="write the hints file of a model (predicted ms per unit, core type and count)",
        description="Predict every unit's ms on every (core type, core count) from the layer descriptors "
                    "and write the hints JSON. Costs come from a board file (--board) or from a "
                    "calibration of real or emulated cores (--platform, with --calibration or the one "
                    "`tunerd calibrate --backend` stored for that platform and backend).")
    parser.add_argument("--model", required=True, metavar="SRC", help="zoo:NAME or a path to an .onnx file")
    parser.add_argument("--input-size", type=int, default=None, metavar="N", help="input H = W (default: the model's)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--platform", metavar="SPEC", help=SPEC_HELP)
    source.add_argument("--board", metavar="NAME|FILE", help="a shipped board (hikey970, odroid-xu3, jetson-tx2) or a board file")
    parser.add_argument("--calibration", metavar="FILE", help="calibration file (with --platform)")
    parser.add_argument("--backend", default=None, choices=BACKEND_NAMES,
                        help="the backend the hints are for (the daemon's `--backend`): its calibration is "
                             "used and another backend's refused. Default: the backend of --calibration, "
                             "else auto (onnxruntime when installed). Board hints serve any backend")
    parser.add_argument("--sysfs-root", default="/sys", metavar="DIR", help="the directory that plays /sys")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..costs.hints import make_hints, save_hints
    from ..model.loader import load_model
    if args.calibration and not args.platform:
        raise ConfigError("--calibration goes with --platform")
    model = load_model(args.model, input_size=args.input_size)
    platform = None
    if args.platform:
        from ..platform.spec import resolve_platform
        platform = resolve_platform(args.platform, sysfs_root=args.sysfs_root)
    if args.board or platform.source == "board":
        if args.backend is not None:
            print("hints: a board's costs are backend-agnostic; --backend is not used", file=sys.stderr)
        hints = make_hints(model, board=args.board) if args.board else make_hints(model, platform=platform)
    else:
        hints = _calibrated(args, model, platform)
    if args.output:
        save_hints(hints, args.output)
        print(summary(hints, args.output), file=sys.stderr)
    else:
        from ..costs.hints import dumps
        sys.stdout.write(dumps(hints))
    return 0


def _calibrated(args, model, platform):
    """Hints from the calibration of the chosen backend (see --backend)."""
    from ..costs.calibration_file import default_calibration_path, load_calibration
    from ..costs.hints import make_hints
    calibration = load_calibration(args.calibration) if args.calibration else None
    if args.backend is None and calibration is not None:
        backend, why = calibration.backend, f"backend {calibration.backend}: the calibration's"
    else:
        from ..backends import resolve
        chosen, why = resolve(args.backend)
        backend = chosen.name
    print(f"hints: {why}", file=sys.stderr)
    if calibration is None:
        path = default_calibration_path(platform, backend)
        if not path.is_file():
            raise ConfigError(f"no {backend} calibration for platform {platform.describe()}: run "
                              f"`tunerd calibrate --platform {args.platform} --backend {backend}` first, "
                              f"or pass --calibration FILE")
        calibration = path
    return make_hints(model, calibration=calibration, platform=platform, backend=backend)


def summary(hints, path: str) -> str:
    parts = [f"{c['name']} ({c['core_type']} x{c['cores']}): {hints.fps(c['core_type'], c['cores']):.2f} fps"
             for c in hints.clusters]
    for_backend = f" for the {hints.backend} backend" if hints.backend else " (any backend)"
    return (f"wrote {path}: {hints.model_name}, {hints.n_units} units, from {hints.producer.get('kind')} "
            f"{hints.producer.get('name')}{for_backend}; whole model per cluster: {'; '.join(parts)}")
