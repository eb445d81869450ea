#!/usr/bin/env python3
"""tunerd against the runtime its users would otherwise run (figures, not a test).

Per network, side by side in one run, on the emulated board ``emulate:big=0@1.0,little=1@0.5``
(cpu0 is the big core, cpu1 the little one at half speed: its stage workers sleep as long again as
they compute, tunerd.platform.emulation):

  ort     onnxruntime alone, one thread, pinned to the big core (cpu0), on the model's ONNX file:
          what a user gets without tunerd. A child process, affinity set before onnxruntime loads.
  single  tunerd, the whole model as one stage on the big core, onnxruntime backend, in-process
          (``tunerd bench --pipeline 0-N@big:1``): what the backend seam and the stage worker cost.
  tuned   tunerd's best pipeline over both cores, found by the tuner (a daemon on the onnxruntime
          backend, fed with tools/loadgen.py until it converged), run in-process like ``single``.
  served  the same config served by that daemon (pinned to it) to tools/loadgen.py over ipc sockets.

Windows alternate ort / single / tuned / served for ``--rounds`` rounds (the machine is shared
and noisy: the figures are medians and their ratios). Targets (issue "Stage backends"): tuned/ort
>= 1.35 (the ideal is 1.5: both cores at onnxruntime's speed), served/tuned >= 0.95.

``--memory`` instead reports resident memory (RSS and PSS) of every stage process and of the whole
daemon serving a two-stage big|little config, per backend (numpy, onnxruntime), for ResNet50 and
AlexNet unless ``--models`` says otherwise.

    .venv/bin/python tools/bench_vs_onnxruntime.py [--models zoo:resnet50,light:squeezenet,...]
        [--input-size 224] [--rounds 3] [--seconds 6] [--budget 30] [--json FILE] [--memory]

Models: zoo:NAME (the five zoo networks; their ONNX file is `tunerd model export`'s) and
light:NAME (tests/onnx_cases.py's light ONNX graphs with random weights), ref:NAME.EXPORTER (the
real-export set of tests/reference_graphs.py, e.g. ref:efficientnet_b0.dynamo, at --input-size when
its H, W are symbolic). Default: the zoo five and light bvlc_alexnet, inception_v1, resnet50,
squeezenet.

NOTE: everything runs under ``main()``: spawned stage workers re-import this script as
``__mp_main__``, so module level stays light.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
BIN = Path(sys.executable).parent

EMULATED = "emulate:big=0@1.0,little=1@0.5"
ZOO = ["zoo:alexnet", "zoo:googlenet", "zoo:mobilenet", "zoo:resnet50", "zoo:squeezenet"]
LIGHT = ["light:bvlc_alexnet", "light:inception_v1", "light:resnet50", "light:squeezenet"]
TARGET, IDEAL, SERVED_TARGET = 1.35, 1.5, 0.95

# The reference: onnxruntime as a user runs it, one thread, on the big core. Commands on stdin:
# a number of seconds to run for; answers fps, one JSON line each.
_REFERENCE = r"""
import json, os, sys, time
os.sched_setaffinity(0, {0})
import numpy as np
import onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
# NOTE: the shape tunerd runs (a symbolic H, W is --input-size, not 1)
shape = json.loads(sys.argv[2])
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
for _ in range(3):
    sess.run(None, {inp.name: x})
print(json.dumps({"ready": True, "shape": shape}), flush=True)
for line in sys.stdin:
    seconds = float(line)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {inp.name: x})
        n += 1
    print(json.dumps({"fps": n / (time.perf_counter() - t0), "frames": n}), flush=True)
"""


def log(msg: str) -> None:
    print(f"[bench_vs_onnxruntime] {msg}", file=sys.stderr, flush=True)


class Reference:
    """The onnxruntime-alone child (see ``_REFERENCE``), kept alive so that rounds alternate."""

    def __init__(self, onnx_path: Path, shape):
        self.proc = subprocess.Popen([sys.executable, "-c", _REFERENCE, str(onnx_path), json.dumps(list(shape))],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.shape = json.loads(self.proc.stdout.readline())["shape"]

    def fps(self, seconds: float) -> float:
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline())["fps"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def onnx_file(source: str, input_size: int | None, out_dir: Path) -> tuple[Path, int | None]:
    """The network's ONNX file and the input size tunerd loads it at (None: the file's own)."""
    kind, name = source.split(":", 1)
    if kind == "zoo":
        import tunerd
        model = tunerd.load_model(source, input_size=input_size, backend="numpy")
        path = out_dir / f"{name}-{input_size}.onnx"
        subprocess.run([str(BIN / "tunerd"), "model", "export", source, "--input-size", str(model.input_shape[-1]),
                        "-o", str(path)], check=True, stdout=subprocess.DEVNULL)
        return path, input_size
    if kind == "light":
        from onnx_cases import light_with_random_weights
        return light_with_random_weights(name, out_dir), None
    if kind == "ref":
        import reference_graphs
        import onnx
        path = reference_graphs.materialise(name, out_dir)
        dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        return path, (input_size if any(d.dim_param for d in dims[2:]) else None)
    raise SystemExit(f"unknown model {source!r}: zoo:NAME, light:NAME or ref:NAME")


def loadgen(d, *extra: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "loadgen.py"), "--frames", d.frames, "--control",
                          d.control, "--json", *extra], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def tune(d, timeout: float) -> dict:
    """Feed the daemon until its tuner converged; its status then."""
    feeder = subprocess.Popen([sys.executable, str(ROOT / "tools" / "loadgen.py"), "--frames", d.frames,
                               "--control", d.control, "-c", "4", "-k", "2", "-d", str(timeout), "--colocate"],
                              stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        last = None
        while time.monotonic() - t0 < timeout:
            st = d.status()
            if st["state"] == "converged":
                return {**st, "tuning_s": time.monotonic() - t0}
            if st["evaluations"] != last:
                last = st["evaluations"]
                log(f"  tuning: {st['state']}, {last} evaluations, best {st['best']}")
            time.sleep(1.0)
        raise SystemExit(f"the tuner did not converge within {timeout:.0f} s")
    finally:
        feeder.terminate()
        feeder.wait(30)


def bench_network(source: str, args, tmp: Path, state_dir: Path) -> dict:
    import tunerd
    from harness import DaemonProcess
    from tunerd.pipeline.bench import bench_pipeline
    path, size = onnx_file(source, args.input_size, tmp)
    model_source = source if source.startswith("zoo:") else str(path)
    model = tunerd.load_model(model_source, input_size=size, backend="onnxruntime")
    n = len(model.units)
    single = f"0-{n - 1}@big:1"
    log(f"{source}: {n} units, input {list(model.input_shape)}; tuning on the onnxruntime backend")
    d = DaemonProcess(tmp / source.replace(":", "-"), name="b", model=model_source, size=model.input_shape[-1],
                      spec=EMULATED, state_dir=state_dir, backend="onnxruntime",
                      extra=("--budget", str(args.budget)), ready_timeout=600)
    ref = None
    try:
        st = tune(d, args.tune_timeout)
        config = st["best"]["config"]
        log(f"  converged in {st['tuning_s']:.0f} s, {st['evaluations']} evaluations: {config} "
            f"({st['best']['fps']:.1f} fps measured live), gain {st.get('gain')}")
        d.call("pin", config=config)
        loadgen(d, "-c", "2", "-k", "2", "-n", "20")                       # warm the pinned config
        ref = Reference(path, model.input_shape)
        est = max(1.0, st["best"]["fps"])
        frames = max(30, int(args.seconds * est))
        rounds = []
        for r in range(args.rounds):
            row = {"ort": ref.fps(args.seconds)}
            row["single"] = bench_pipeline(model, single, platform_spec=EMULATED, sysfs_root=str(d.sysfs),
                                           frames=max(20, frames // 2), warmup=5, backend="onnxruntime")["fps"]
            row["tuned"] = bench_pipeline(model, config, platform_spec=EMULATED, sysfs_root=str(d.sysfs),
                                          frames=frames, warmup=5, backend="onnxruntime")["fps"]
            row["served"] = loadgen(d, "-c", "4", "-k", "2", "-d", str(args.seconds), "--colocate")["fps"]
            rounds.append(row)
            log(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()) + " fps")
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        return {"model": source, "units": n, "input_shape": list(model.input_shape), "config": config,
                "tuning_s": round(st["tuning_s"], 1), "evaluations": st["evaluations"],
                "live_fps": st["best"]["fps"], "gain": st.get("gain"), "rounds": rounds, "median_fps": med,
                "single_over_ort": med["single"] / med["ort"], "tuned_over_ort": med["tuned"] / med["ort"],
                "served_over_tuned": med["served"] / med["tuned"], "load_avg": os.getloadavg()}
    finally:
        if ref is not None:
            ref.close()
        d.stop(60)


def memory_network(source: str, args, tmp: Path, state_dir: Path) -> list[dict]:
    """RSS/PSS per stage process and of the whole daemon, per backend, serving a big|little cut."""
    import psutil
    import tunerd
    from harness import DaemonProcess, footprint, is_stage_worker, tree
    path, size = onnx_file(source, args.input_size, tmp)
    model_source = source if source.startswith("zoo:") else str(path)
    model = tunerd.load_model(model_source, input_size=size, backend="numpy")
    n = len(model.units)
    config = f"0-{n // 2 - 1}@big:1 | {n // 2}-{n - 1}@little:1"
    rows = []
    for backend in ("numpy", "onnxruntime"):
        d = DaemonProcess(tmp / f"mem-{backend}-{source.replace(':', '-')}", name="m", model=model_source,
                          size=model.input_shape[-1], spec=EMULATED, state_dir=state_dir, backend=backend,
                          extra=("--pin", config), ready_timeout=600)
        try:
            loadgen(d, "-c", "2", "-k", "2", "-n", "30")
            time.sleep(1.0)
            procs = tree(d.pid)
            stages = []
            for p in procs[1:]:
                if is_stage_worker(p):
                    info = p.memory_full_info()
                    stages.append({"pid": p.pid, "rss_mib": round(info.rss / 2**20, 1),
                                   "pss_mib": round(info.pss / 2**20, 1), "uss_mib": round(info.uss / 2**20, 1)})
            main = psutil.Process(d.pid).memory_full_info()
            whole = footprint(d.pid).to_dict()
            rows.append({"model": source, "backend": backend, "config": config, "stages": stages,
                         "daemon_process": {"rss_mib": round(main.rss / 2**20, 1), "pss_mib": round(main.pss / 2**20, 1)},
                         "whole": whole})
            log(f"{source} on {backend}: stages " + ", ".join(f"RSS {s['rss_mib']} / PSS {s['pss_mib']} MiB"
                                                            for s in stages)
                + f"; daemon process RSS {main.rss / 2**20:.1f} MiB; all {whole['pss_mib']} MiB PSS, "
                  f"{whole['rss_mib']} MiB RSS over {whole['processes']} processes")
        finally:
            d.stop(60)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated zoo:NAME / light:NAME / ref:NAME (default: the zoo five + light four; "
                                     "with --memory zoo:resnet50,zoo:alexnet)")
    ap.add_argument("--input-size", type=int, default=224, help="input H = W of the zoo models (default 224)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per window (default 6)")
    ap.add_argument("--budget", type=int, default=30, help="tuner evaluations per search (default 30)")
    ap.add_argument("--tune-timeout", type=float, default=900, help="seconds to wait for convergence (default 900)")
    ap.add_argument("--memory", action="store_true", help="report resident memory instead (module docstring)")
    ap.add_argument("--json", metavar="FILE", help="also write the results here as JSON")
    args = ap.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit("needs CPUs 0 and 1 (the emulated big and little cores)")
    default = "zoo:resnet50,zoo:alexnet" if args.memory else ",".join(ZOO + LIGHT)
    sources = (args.models or default).split(",")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="tunerd-bench-ort-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("TUNERD_CACHE_DIR", str(tmp / "cache"))
        state_dir = tmp / "state"         # one calibration per backend for every daemon of the run
        log(f"load average at start {os.getloadavg()}")
        if args.memory:
            rows = [r for s in sources for r in memory_network(s, args, tmp, state_dir)]
            result = {"platform": EMULATED, "memory": rows}
        else:
            rows = []
            for s in sources:
                rows.append(bench_network(s, args, tmp, state_dir))
                r = rows[-1]
                log(f"{s}: tuned/ort {r['tuned_over_ort']:.2f}, single/ort {r['single_over_ort']:.2f}, "
                    f"served/tuned {r['served_over_tuned']:.2f}")
            result = {"platform": EMULATED, "input_size": args.input_size, "rounds": args.rounds,
                      "seconds": args.seconds, "budget": args.budget, "rows": rows}
    result["elapsed_s"] = round(time.time() - t0)
    result["load_avg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.memory:
        print(f"\nemulated {EMULATED}, medians of {args.rounds} alternating rounds of {args.seconds:g} s; "
              f"fps (ratio to onnxruntime alone, 1 thread on the big core)")
        head = f"{'network':<20} {'ort':>7} {'single':>14} {'tuned':>14} {'served/tuned':>12}  config"
        print(head + "\n" + "-" * len(head))
        for r in rows:
            m = r["median_fps"]
            print(f"{r['model']:<20} {m['ort']:>7.1f} {m['single']:>7.1f} ({r['single_over_ort']:.2f}) "
                  f"{m['tuned']:>7.1f} ({r['tuned_over_ort']:.2f}) {r['served_over_tuned']:>12.2f}  {r['config']}")
        short = [r for r in rows if r["tuned_over_ort"] < TARGET]
        print(f"target tuned/ort >= {TARGET} (ideal {IDEAL}): "
              + ("met on every network" if not short else
                 "short on " + ", ".join(f"{r['model']} by {TARGET - r['tuned_over_ort']:.2f}" for r in short)))
        slow = [r for r in rows if r["served_over_tuned"] < SERVED_TARGET]
        print(f"target served/tuned >= {SERVED_TARGET}: " + ("met" if not slow else "short on " + ", ".join(
            f"{r['model']} ({r['served_over_tuned']:.2f})" for r in slow)))
    print(f"total {result['elapsed_s']} s, load average at end {result['load_avg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
