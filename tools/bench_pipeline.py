#!/usr/bin/env python3
"""Pipeline benchmark (figures, not a test): is a pipeline of pinned stages worth it here?

For each model, side by side in one run:
  (a) one stage, 2 BLAS threads, in-process (``tunerd bench --threads 2``); also 1 thread;
  (b) the best two-stage 1+1 pipeline on this machine: cuts ranked by measured unit costs
      (1 thread, in-process), the best few run, the fastest kept;
  (c) the emulated board ``emulate:big=0@1.0,little=1@0.5``: big alone, little alone, the best
      single-cluster run, the best big|little or little|big pipeline (cut chosen the same way with
      little's costs doubled), and the ideal bound fps(big alone) + fps(little alone);
  (d) onnxruntime, 2 threads, on the same model exported to ONNX, and the ratio (b) / (d);
  (e) overheads of (b)'s bottleneck stage: hand-off and profiling as a share of its period, and the
      main process's time per frame;
  (f) switch cost: while (b) streams, reconfigure to the runner-up cut and back, twice; the median
      gap in the output stream (last frame out on the old config -> first on the new) and request ->
      first frame out on the new config (which includes the frames queued on the old one), against
      (b)'s bottleneck period.

    .venv/bin/python tools/bench_pipeline.py [--models alexnet,squeezenet] [--input-size 224]
                                             [--frames 10] [--repeat 3] [--json FILE|-]

Other processes on the machine disturb every figure; each one is the best of ``--repeat`` windows
(the least disturbed), and unit costs are the fastest of a few runs. The load average is printed,
and per stage the CPU share it got while computing (process CPU time / wall time x cores): below
100% other processes held its cores, which hurts a pipeline (both cores busy) more than a single
stage (the others move to the idle core).

NOTE: everything runs under ``main()``: spawned stage workers re-import this script as
``__mp_main__``, so module level stays light (no numpy before the workers pin themselves).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ZOO = ["alexnet", "googlenet", "mobilenet", "resnet50", "squeezenet"]
EMULATED = "emulate:big=0@1.0,little=1@0.5"
TARGETS = {"b_over_a": 1.1, "emu_over_single": 1.25, "emu_of_ideal": 0.85, "overhead_pct": 3.0,
           "switch_over_bottleneck": 2.0}


def unit_costs(model, runs: int = 5) -> list[float]:
    """Fastest ms per unit over ``runs`` runs, 1 BLAS thread, in this process."""
    import numpy as np
    from threadpoolctl import threadpool_limits
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    plan = model.plan()
    with threadpool_limits(limits=1):
        plan.run(x)
        samples = [plan.run_timed(x)[1] for _ in range(runs)]
    return [1000 * float(v) for v in np.min(np.array(samples), axis=0)]


def ranked_cuts(costs: list[float], left: float = 1.0, right: float = 1.0) -> list[tuple[float, int]]:
    """(predicted bottleneck ms, cut) for every 1+1 cut, best first; ``left``/``right`` stretch."""
    total = sum(costs)
    out, acc = [], 0.0
    for cut in range(1, len(costs)):
        acc += costs[cut - 1]
        out.append((max(left * acc, right * (total - acc)), cut))
    return sorted(out)


def two_stage(cut: int, n: int, first: str, second: str) -> str:
    return f"0-{cut - 1}@{first}:1 | {cut}-{n - 1}@{second}:1"


# this process moves off the bottleneck stage's cores as the daemon does (--no-place-host: it does not)
PLACE_HOST = True


def run_configs(model, platform, configs: list[str], frames: int, warmup: int, sysfs_root: str,
                repeat: int, opener=None) -> list[dict]:
    """Each config in turn on one pipeline (reconfigured between them, no new processes); per
    config the best of ``repeat`` windows of ``frames`` frames."""
    import numpy as np

    from tunerd.pipeline.executor import Pipeline
    from tunerd.pipeline.bench import measure
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    results = []
    with Pipeline(model, configs[0], platform, sysfs_root=sysfs_root, opener=opener) as pipe:
        next_id = 0
        for text in configs:
            if text != str(pipe.config):
                pipe.reconfigure(text)
            windows = []
            for i in range(repeat):
                w = warmup if i == 0 else 1
                windows.append(measure(pipe, x, frames, w, first_id=next_id, place_host=PLACE_HOST))
                next_id += frames + w
            best = max(windows, key=lambda r: r["fps"])
            best.pop("first_out")
            best["fps_windows"] = [round(r["fps"], 2) for r in windows]
            results.append(best)
    return results


def switch_cost(model, platform, a: str, b: str, frames: int, warmup: int, sysfs_root: str,
                opener=None) -> list[dict]:
    """Stream continuously on ``a``; switch to ``b`` and back, twice, while the pipeline is full."""
    import numpy as np

    from tunerd.pipeline.executor import Pipeline
    from tunerd.pipeline.bench import stream
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    with Pipeline(model, a, platform, sysfs_root=sysfs_root, opener=opener) as pipe:
        stream(pipe, x, warmup)
        at = {frames: b, 2 * frames: a, 3 * frames: b, 4 * frames: a}

        def switch(i):
            if i in at and str(pipe.config) != at[i]:
                pipe.reconfigure(at.pop(i))

        stream(pipe, x, 5 * frames, first_id=warmup, on_submit=switch)
        return pipe.stats()["switches"]


def bench_single(model, threads: int, frames: int, warmup: int, repeat: int) -> float:
    from tunerd.commands.bench import bench_single as single
    return max(single(model, threads, frames, warmup if i == 0 else 0)["fps"] for i in range(repeat))


def ort_fps(model, threads: int, frames: int, warmup: int, repeat: int) -> float | None:
    import numpy as np
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from tunerd.model.onnx_io import export_onnx
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model.graph, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name:
            np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(frames):
            sess.run(None, feed)
        best = max(best, frames / (time.perf_counter() - t0))
    return best


def bench_model(name: str, args, emu_platform, emu_root: str) -> dict:
    import numpy as np

    import tunerd
    from tunerd.platform.spec import resolve_platform
    t_model = time.perf_counter()
    model = tunerd.load_model(f"zoo:{name}", input_size=args.input_size, backend="numpy")
    n = len(model.units)
    costs = unit_costs(model)
    row: dict = {"model": name, "input_shape": list(model.input_shape), "units": n,
                 "unit_ms": [round(c, 3) for c in costs]}
    log = (lambda msg: print(f"  {name}: {msg}", file=sys.stderr, flush=True))

    log("single stage")
    row["a_single_2t_fps"] = bench_single(model, 2, args.frames, args.warmup, args.repeat)
    row["single_1t_fps"] = bench_single(model, 1, args.frames, args.warmup, args.repeat)

    log("two-stage pipelines on this machine")
    auto = resolve_platform("auto")
    cuts = [c for _, c in ranked_cuts(costs)[:args.candidates]]
    runs = run_configs(model, auto, [two_stage(c, n, "big", "big") for c in cuts], args.frames, args.warmup,
                       "/sys", args.repeat)
    best = max(runs, key=lambda r: r["fps"])
    row["b_candidates"] = {r["config"]: round(r["fps"], 2) for r in runs}
    row["b_config"], row["b_fps"] = best["config"], best["fps"]
    row["b_over_a"] = best["fps"] / row["a_single_2t_fps"]
    row["b_stages"] = best["stages"]
    row["b_bottleneck_ms"] = best["bottleneck_period_ms"]
    row["handoff_pct"] = best["handoff_overhead_pct"]
    row["profiling_pct"] = best["profiling_overhead_pct"]
    row["overhead_pct"] = best["handoff_overhead_pct"] + best["profiling_overhead_pct"]
    row["main_ms_per_frame"] = best["main_ms_per_frame"]
    row["main_pct"] = best["main_overhead_pct"]
    row["latency_ms_median"] = best["latency_ms_median"]
    row["b_cpu_share"] = [s["cpu_share"] for s in best["stages"]]

    log("emulated board")
    alone = run_configs(model, emu_platform, [f"0-{n - 1}@big:1", f"0-{n - 1}@little:1"], args.frames,
                        args.warmup, emu_root, args.repeat)
    row["emu_big_fps"], row["emu_little_fps"] = alone[0]["fps"], alone[1]["fps"]
    row["emu_best_single_fps"] = max(row["emu_big_fps"], row["emu_little_fps"])
    row["emu_ideal_fps"] = row["emu_big_fps"] + row["emu_little_fps"]
    speed = {c.name: c.speed for c in emu_platform.clusters}
    ranked = sorted([(ms, two_stage(c, n, "big", "little")) for ms, c in
                     ranked_cuts(costs, 1 / speed["big"], 1 / speed["little"])] +
                    [(ms, two_stage(c, n, "little", "big")) for ms, c in
                     ranked_cuts(costs, 1 / speed["little"], 1 / speed["big"])])
    configs = [text for _, text in ranked[:args.candidates]]
    runs = run_configs(model, emu_platform, configs, args.frames, args.warmup, emu_root, args.repeat)
    emu = max(runs, key=lambda r: r["fps"])
    row["emu_candidates"] = {r["config"]: round(r["fps"], 2) for r in runs}
    row["emu_config"], row["emu_fps"] = emu["config"], emu["fps"]
    row["emu_cpu_share"] = [s["cpu_share"] for s in emu["stages"]]
    row["emu_alone_cpu_share"] = [a["stages"][0]["cpu_share"] for a in alone]
    row["emu_over_single"] = emu["fps"] / row["emu_best_single_fps"]
    row["emu_of_ideal"] = emu["fps"] / row["emu_ideal_fps"]

    log("onnxruntime")
    row["ort_2t_fps"] = ort_fps(model, 2, args.frames, args.warmup, args.repeat)
    row["b_over_ort"] = row["b_fps"] / row["ort_2t_fps"] if row["ort_2t_fps"] else None

    log("switch cost")
    other = next((t for t in row["b_candidates"] if t != row["b_config"]), None)
    if other is not None:
        switches = switch_cost(model, auto, row["b_config"], other, args.frames, args.warmup, "/sys")
        row["switches"] = switches
        gaps = [s["output_gap_ms"] for s in switches if s["output_gap_ms"] is not None]
        row["switch_gap_ms"] = float(np.median(gaps)) if gaps else None
        row["switch_request_to_out_ms"] = (float(np.median([s["request_to_first_out_ms"] for s in switches]))
                                           if switches else None)
        row["switch_over_bottleneck"] = (row["switch_gap_ms"] / row["b_bottleneck_ms"]
                                         if row["switch_gap_ms"] is not None else None)
    row["seconds"] = time.perf_counter() - t_model
    return row


# --- the mechanism alone: a synthetic model whose units sleep ------------------------------------
class SleepModel:
    """``sleep:UNITS:MS``: units that each sleep MS ms (no CPU used, so other processes on the
    machine cannot distort it): what the executor and the emulation add, and nothing else."""

    name = "synthetic"

    def __init__(self, path: str):
        from dataclasses import make_dataclass
        _, n, ms = path.split(":")
        self.path, self.sleep_s, n = path, float(ms) / 1000, int(n)
        unit = make_dataclass("Unit", ["index", "input", "output"])
        self.units = [unit(i, f"t{i}", f"t{i + 1}") for i in range(n)]
        self.shapes = {f"t{i}": (1, 16) for i in range(n + 1)}
        self.input_shape = self.output_shape = (1, 16)

    def plan(self, first: int, last: int):
        return SleepPlan(self.sleep_s, last - first + 1)


class SleepPlan:
    def __init__(self, sleep_s: float, units: int):
        self.sleep_s, self.units = sleep_s, units

    def run_timed(self, x, out=None, clock=time.perf_counter):
        times = []
        for _ in range(self.units):
            t0 = clock()
            time.sleep(self.sleep_s)
            times.append(clock() - t0)
        if out is not None:
            out[...] = x
        return (out if out is not None else x), times

    def run(self, x, out=None):
        return self.run_timed(x, out)[0]


def open_sleep_model(path: str) -> SleepModel:
    return SleepModel(path)


def bench_synthetic(spec: str, args, emu_platform, emu_root: str) -> dict:
    """The emulated-board comparisons and the switch cost on a SleepModel."""
    model = SleepModel(f"sleep:{spec}")
    n = len(model.units)
    run = (lambda configs: run_configs(model, emu_platform, configs, args.frames, args.warmup, emu_root,
                                       args.repeat, opener=open_sleep_model))
    alone = run([f"0-{n - 1}@big:1", f"0-{n - 1}@little:1"])
    row = {"model": f"sleep:{spec}", "emu_big_fps": alone[0]["fps"], "emu_little_fps": alone[1]["fps"]}
    row["emu_best_single_fps"] = max(row["emu_big_fps"], row["emu_little_fps"])
    row["emu_ideal_fps"] = row["emu_big_fps"] + row["emu_little_fps"]
    speed = {c.name: c.speed for c in emu_platform.clusters}
    ranked = [text for _, text in sorted(
        [(ms, two_stage(c, n, "big", "little")) for ms, c in ranked_cuts([1.0] * n, 1 / speed["big"], 1 / speed["little"])]
        + [(ms, two_stage(c, n, "little", "big")) for ms, c in ranked_cuts([1.0] * n, 1 / speed["little"], 1 / speed["big"])])]
    runs = run(ranked[:2])
    best = max(runs, key=lambda r: r["fps"])
    row.update({"emu_config": best["config"], "emu_fps": best["fps"],
                "emu_over_single": best["fps"] / row["emu_best_single_fps"],
                "emu_of_ideal": best["fps"] / row["emu_ideal_fps"], "b_bottleneck_ms": best["bottleneck_period_ms"],
                "overhead_pct": best["handoff_overhead_pct"] + best["profiling_overhead_pct"],
                "main_pct": best["main_overhead_pct"]})
    # the runner-up with the clusters in the same order: a moved cut (swapping clusters would make
    # each worker wait for the other's old frames before it can start its new role)
    order = (lambda text: [part.split("@")[1] for part in text.split(" | ")])
    other = next(t for t in ranked[1:] if order(t) == order(best["config"]))
    switches = switch_cost(model, emu_platform, best["config"], other, args.frames, args.warmup, emu_root,
                           opener=open_sleep_model)
    import numpy as np
    row["switches"] = switches
    row["switch_gap_ms"] = float(np.median([s["output_gap_ms"] for s in switches]))
    row["switch_request_to_out_ms"] = float(np.median([s["request_to_first_out_ms"] for s in switches]))
    row["switch_over_bottleneck"] = row["switch_gap_ms"] / row["b_bottleneck_ms"]
    return row


def verdicts(row: dict) -> dict:
    ok = {}
    for key, target in TARGETS.items():
        value = row.get(key)
        if value is None:
            continue
        ok[key] = value <= target if key in ("overhead_pct", "switch_over_bottleneck") else value >= target
    return ok


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def shares(values) -> str:
    return "/".join("-" if v is None else f"{v:.0%}" for v in values)


def print_table(rows: list[dict], args) -> None:
    cols = [("model", "model", "s"), ("a 2T", "a_single_2t_fps", ".1f"), ("1T", "single_1t_fps", ".1f"),
            ("b 1+1", "b_fps", ".1f"), ("b/a", "b_over_a", ".2f"),
            ("emu big", "emu_big_fps", ".1f"), ("emu lit", "emu_little_fps", ".1f"),
            ("emu pipe", "emu_fps", ".1f"), ("/single", "emu_over_single", ".2f"),
            ("/ideal", "emu_of_ideal", ".0%"), ("ort 2T", "ort_2t_fps", ".1f"), ("b/ort", "b_over_ort", ".2f"),
            ("ovh%", "overhead_pct", ".2f"), ("main%", "main_pct", ".1f"),
            ("bneck ms", "b_bottleneck_ms", ".1f"), ("gap ms", "switch_gap_ms", ".1f"),
            ("gap/bn", "switch_over_bottleneck", ".2f"), ("req->out", "switch_request_to_out_ms", ".0f")]
    table = [[h for h, _, _ in cols]]
    for r in rows:
        marks = verdicts(r)
        line = []
        for _, key, spec in cols:
            cell = str(r.get(key, "-")) if spec == "s" else fmt(r.get(key), spec)
            if key in marks and not marks[key]:
                cell += "!"
            line.append(cell)
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    print(f"fps at input {args.input_size}, best of {args.repeat} x {args.frames} timed frames; "
          f"'!' = misses its target {TARGETS}")
    for line in table:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
    print()
    for r in rows:
        if "b_config" not in r:
            print(f"{r['model']}: (c) {r['emu_config']} (units sleep: no CPU used, no contention)")
            continue
        print(f"{r['model']}: (b) {r['b_config']}  (c) {r['emu_config']}  "
              f"latency {fmt(r['latency_ms_median'])} ms  hand-off {fmt(r['handoff_pct'], '.2f')}% "
              f"profiling {fmt(r['profiling_pct'], '.2f')}% of the bottleneck; main "
              f"{fmt(r['main_ms_per_frame'], '.2f')} ms/frame; CPU share while computing: (b) "
              f"{shares(r['b_cpu_share'])}, (c) {shares(r['emu_cpu_share'])}, alone "
              f"{shares(r['emu_alone_cpu_share'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names (default: all five)")
    parser.add_argument("--input-size", type=int, default=224, metavar="N")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per window (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="windows per figure, the best kept (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames first (default 3)")
    parser.add_argument("--candidates", type=int, default=3, help="cuts tried per pipeline (default 3)")
    parser.add_argument("--synthetic", metavar="UNITS:MS", default="12:4",
                        help="also run (c) and (f) on a model of UNITS units that sleep MS ms each (default "
                             "12:4; 'none' to skip): the executor's own figures, free of CPU contention")
    parser.add_argument("--no-place-host", action="store_true",
                        help="leave this process where the scheduler puts it (default: off the bottleneck "
                             "stage's cores, as the daemon does: Pipeline.place_host)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON ('-': stdout)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)} (zoo: {', '.join(ZOO)})")
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs 2 CPUs (0 and 1)")
    global PLACE_HOST
    PLACE_HOST = not args.no_place_host

    from tunerd.platform.fakesysfs import make_emulated_tree
    from tunerd.platform.spec import resolve_platform
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # a fresh emulated cpufreq tree: the speeds are the spec's, whatever this host's /sys says
        emu_root = str(make_emulated_tree(EMULATED, tmp))
        emu = resolve_platform(EMULATED, sysfs_root=emu_root)
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} at start", file=sys.stderr)
        for name in models:
            rows.append(bench_model(name, args, emu, emu_root))
        if args.synthetic != "none":
            print(f"  sleep:{args.synthetic}: emulated board and switches", file=sys.stderr, flush=True)
            rows.append(bench_synthetic(args.synthetic, args, emu, emu_root))
    print_table(rows, args)
    report = {"input_size": args.input_size, "frames": args.frames, "warmup": args.warmup,
              "repeat": args.repeat,
              "load_average_start": load, "load_average_end": os.getloadavg(), "targets": TARGETS,
              "models": [dict(r, verdicts=verdicts(r)) for r in rows]}
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
