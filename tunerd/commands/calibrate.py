"""`tunerd calibrate`: time synthetic layers on every cluster and core count, fit the cost model."""
from __future__ import annotations

import json
import logging
import sys

from ..backends import BACKEND_NAMES
from ..platform.spec import SPEC_HELP

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="measure this machine's cores and fit the cost model's coefficients",
        description="Time a sweep of synthetic layers (convs, depthwise, fc, pooling, LRN, elementwise, "
                    "concat) on each cluster at each core count, in pinned child processes, through one "
                    "backend's kernels, and fit the cost model per core type. The full sweep takes a few "
                    "minutes; --quick seconds.")
    parser.add_argument("--platform", default="auto", metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--sysfs-root", default="/sys", metavar="DIR", help="the directory that plays /sys")
    parser.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                        help="whose kernels to measure: onnxruntime, numpy or auto (onnxruntime when "
                             "installed; default). Calibrate the backend the daemon runs (`tunerd serve "
                             "--backend`): each has its own coefficients and file")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the calibration here (default: the cache, per backend, where `tunerd "
                             "hints --platform` and the daemon look)")
    parser.add_argument("--quick", action="store_true", help="a small sweep with short timings (for tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--json", action="store_true", help="print the fitted coefficients as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..backends import resolve
    from ..costs.calibrate import calibrate
    from ..costs.calibration_file import default_calibration_path, save_calibration
    from ..platform.spec import resolve_platform
    backend, why = resolve(args.backend)
    log.info("%s", why)
    # NOTE: on stderr, so that --json keeps standard output one JSON document
    print(f"calibrate: {why}", file=sys.stderr)
    platform = resolve_platform(args.platform, sysfs_root=args.sysfs_root)
    cal = calibrate(platform, quick=args.quick, sysfs_root=args.sysfs_root, progress=not args.no_progress,
                    backend=backend.name)
    path = save_calibration(cal, args.output or default_calibration_path(platform, cal.backend))
    if args.json:
        print(json.dumps({"file": str(path), "backend": cal.backend, "fit": cal.fit,
                          "coefficients": {t: c.to_dict() for t, c in cal.coefficients.items()}}, indent=1))
    else:
        for core_type, c in cal.coefficients.items():
            fit = cal.fit.get(core_type, {})
            errs = ", ".join(f"{k.rsplit('_', 1)[-1]} core(s) {v:.0%}" for k, v in fit.items()
                             if k.startswith("median_abs_err_"))
            print(f"{core_type}: {c.gflops:.1f} GFLOP/s best GEMM, conv eff {c.eff['conv']:.2f}, "
                  f"DRAM {c.bandwidth_gbs:.1f} GB/s; fit median error {errs}")
        print(f"wrote {path} ({cal.backend} backend)")
    return 0
