"""`tunerd bench`: in-process throughput of one configuration, no sockets."""
from __future__ import annotations

import json
import logging
import time

import numpy as np

from ..backends import BACKEND_NAMES, resolve
from ..errors import ConfigError
from ..model.loader import load_model

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("bench", help="throughput of one config in-process (no sockets)",
                       description="Measure the throughput of a model in this process: a single stage "
                                   "with N BLAS threads (--threads), or a pipeline config (--pipeline; "
                                   "like the daemon, this process then moves its own threads off the "
                                   "bottleneck stage's cores, and the JSON says where: host_cpus).")
    p.add_argument("--model", required=True, metavar="SRC", help="zoo:NAME or a path to an .onnx file")
    p.add_argument("--input-size", type=int, metavar="N", help="input height = width (default: the model's)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--threads", type=int, metavar="N", help="single stage with N BLAS threads")
    mode.add_argument("--pipeline", metavar="CONFIG", help="pipeline config, e.g. '0-9@big:4 | 10-17@little:4'")
    p.add_argument("--platform", default="auto", metavar="SPEC", help="auto, emulate:..., (with --pipeline)")
    p.add_argument("--sysfs-root", default="/sys", metavar="DIR", help="sysfs root for --platform (default /sys)")
    p.add_argument("--frames", type=int, default=20, metavar="N", help="frames to time (default 20)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed frames first (default 3)")
    p.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                   help="what runs the units: onnxruntime, numpy (the dependency-free reference) or auto "
                        "(onnxruntime when installed; default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def bench_single(model, threads: int, frames: int, warmup: int, backend=None) -> dict:
    from threadpoolctl import threadpool_limits
    backend = resolve(backend)[0] if not hasattr(backend, "compile") else backend
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    runner = backend.compile(model, 0, len(model.units) - 1, threads)
    out = np.empty(runner.output_shape, np.float32)
    with threadpool_limits(limits=threads):
        for _ in range(warmup):
            runner.run(x, out)
        times = []
        t_start = time.perf_counter()
        for _ in range(frames):
            t0 = time.perf_counter()
            runner.run(x, out)
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - t_start
    return {"model": model.name, "input_shape": list(model.input_shape), "mode": "single", "threads": threads,
            "backend": backend.name,
            "frames": frames, "fps": frames / total, "latency_ms_median": 1000 * float(np.median(times)),
            "latency_ms_p90": 1000 * float(np.percentile(times, 90))}


def run(args) -> int:
    if args.frames < 1 or args.warmup < 0:
        raise ConfigError("--frames must be >= 1 and --warmup >= 0")
    backend, why = resolve(args.backend)
    log.info("%s", why)
    if not args.json:
        print(why)
    model = load_model(args.model, input_size=args.input_size)
    backend.check(model)                 # numpy refuses a model with nodes only onnxruntime runs
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        result = bench_single(model, args.threads, args.frames, args.warmup, backend)
    else:
        from ..pipeline.bench import bench_pipeline
        result = bench_pipeline(model, args.pipeline, platform_spec=args.platform, sysfs_root=args.sysfs_root,
                                frames=args.frames, warmup=args.warmup, backend=backend.name)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} {result['input_shape']} {result['mode']} ({result['backend']}): {result['fps']:.2f} fps "
              f"(median latency {result['latency_ms_median']:.1f} ms over {result['frames']} frames)")
    return 0
