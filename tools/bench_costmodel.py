#!/usr/bin/env python3
"""Accuracy of the calibrated cost model on this machine (prints figures; not a test).

Calibrates (a real, full run unless ``--calibration FILE`` is given), then times every unit of the
five zoo models and the four ONNX light graphs (random weights) on 1 and 2 cores, each in a child
process pinned as in calibration, and compares with the hints' predictions. The core counts are
measured side by side (the children take turns, a few frames each) so they see the same load.

Two statistics are printed side by side. "median": a unit's time is its median over all frames and
the network's time the median frame time. "clean": the same medians over the runs during which no
thread of the measuring process waited for a CPU (``/proc/self/task/*/schedstat``, see
``tunerd.costs.calibration_child.WaitClock``): what the machine does when nobody else runs. A unit
with fewer than three clean runs falls back to the median of its fastest tenth; a network with fewer
than three clean frames to the sum of its units. "clean" and "units" give the clean frames and the share of
clean unit runs.
Figures: the median absolute percentage error over a model's units ("unit MdAPE") and the error of
the predicted whole network (sum of predicted units) against the measured one ("net err").

``--backend`` picks whose kernels are calibrated and timed (numpy, the default, or onnxruntime). On
onnxruntime a unit's time comes from its runner's run_timed (a chain of one session per unit, whose
times add up to more than the fused range takes) and the network's from a plain run of the whole
range in the same turn; as the stage workers do (tunerd.pipeline.worker._attribute), each frame's
unit times are scaled to sum to that plain run, so a unit's "measured" time is its share of the
network as it really runs. "chain" gives the unit MdAPE against the unscaled chain times. The
per-unit waiting time is not known there: a unit counts as clean when its whole frame (timed and
plain run) was.

    .venv/bin/python tools/bench_costmodel.py [--backend numpy|onnxruntime] [--calibration FILE]
        [--save-calibration FILE] [--models zoo:alexnet,...] [--frames 15] [--cores 1,2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tunerd.costs.calibrate import calibrate  # noqa: E402
from tunerd.costs.calibration_child import Child, is_clean, robust_ms  # noqa: E402
from tunerd.costs.calibration_file import load_calibration, save_calibration  # noqa: E402
from tunerd.costs.hints import make_hints  # noqa: E402
from tunerd.model.loader import load_model  # noqa: E402
from tunerd.platform.spec import resolve_platform  # noqa: E402

ZOO = ["zoo:alexnet", "zoo:googlenet", "zoo:mobilenet", "zoo:resnet50", "zoo:squeezenet"]
LIGHT = ["bvlc_alexnet", "inception_v1", "resnet50", "squeezenet"]


def light_models(out_dir: Path) -> list[str]:
    try:
        from onnx_cases import light_with_random_weights
        return [str(light_with_random_weights(name, out_dir)) for name in LIGHT]
    except Exception as err:  # noqa: BLE001 - onnx missing: the zoo alone still says something
        print(f"(skipping ONNX light graphs: {err})", file=sys.stderr)
        return []


KEYS = ("unit_ms", "total_ms", "unit_waited_ms", "waited_ms", "run_ms", "run_waited_ms")


def measure(source: str, cores: list[int], cpus: list[int], frames: int, chunk: int,
            backend: str = "numpy") -> dict[int, dict]:
    """Per core count: unit ms and frame ms per frame, core counts taking turns."""
    children = {n: Child(cpus[:n], n) for n in cores}
    out = {n: {key: [] for key in KEYS} for n in cores}
    try:
        for n, child in children.items():     # load + warm up
            child.request({"kind": "model", "source": source, "runs": 0, "warmup": 2, "backend": backend})
        done = 0
        while done < frames:
            k = min(chunk, frames - done)
            for n, child in children.items():
                time.sleep(0.02)   # let the other child's idle BLAS threads go to sleep
                for rec in child.request({"kind": "model", "source": source, "runs": k, "warmup": 0,
                                          "backend": backend}):
                    for key in out[n]:
                        out[n][key].append(rec.get(key))
            done += k
    finally:
        for child in children.values():
            child.close()
    return out


def ape(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred) - np.asarray(meas)) / np.asarray(meas) * 100.0


def runner_figures(runs: dict, pred: np.ndarray) -> dict:
    """The statistics for a backend whose unit times come from run_timed and whose network time from
    a plain run (the module docstring): unit times scaled per frame to the plain run."""
    chain = np.array(runs["unit_ms"])
    plain = np.array(runs["run_ms"])
    units = chain * (plain / chain.sum(axis=1))[:, None]
    clean = np.array([is_clean(t, w) and is_clean(p, pw) for t, w, p, pw in
                      zip(runs["total_ms"], runs["waited_ms"], plain, runs["run_waited_ms"])])
    figures = {}
    for stat in ("median", "clean"):
        if stat == "median" or clean.sum() < 3:
            per_unit = np.median(units, axis=0) if stat == "median" else \
                np.array([robust_ms(units[:, u]) for u in range(units.shape[1])])
            raw = np.median(chain, axis=0)
            net = float(np.median(plain)) if stat == "median" else float(per_unit.sum())
        else:
            per_unit, raw = np.median(units[clean], axis=0), np.median(chain[clean], axis=0)
            net = float(np.median(plain[clean]))
        figures[stat] = {"unit_mdape": float(np.median(ape(pred, per_unit))),
                         "chain_unit_mdape": float(np.median(ape(pred, raw))),
                         "net_err": float(ape(pred.sum(), net)), "meas_ms": net,
                         "chain_sum_ms": float(raw.sum()), "unit_ms": per_unit.round(4).tolist()}
    figures["clean"]["clean_frames"] = int(clean.sum())
    figures["clean"]["clean_unit_share"] = float(clean.mean())
    return figures


def plan_figures(runs: dict, pred: np.ndarray) -> dict:
    """The statistics for numpy's plans, whose run_timed is the frame and reads the wait clock per unit."""
    units = np.array(runs["unit_ms"])
    waits = runs["unit_waited_ms"]
    totals = np.array(runs["total_ms"])
    figures = {}
    for stat in ("median", "clean"):
        if stat == "median":
            per_unit = np.median(units, axis=0)
            net = float(np.median(totals))
        else:
            per_unit = np.array([robust_ms(units[:, u], [w[u] for w in waits]) for u in range(units.shape[1])])
            clean = [t for t, w in zip(totals, runs["waited_ms"]) if is_clean(t, w)]
            # NOTE: on a loaded machine a whole frame is rarely clean; then the unloaded
            # frame time is estimated unit by unit
            net = float(np.median(clean)) if len(clean) >= 3 else float(per_unit.sum())
        figures[stat] = {"unit_mdape": float(np.median(ape(pred, per_unit))),
                         "net_err": float(ape(pred.sum(), net)), "meas_ms": float(net),
                         "unit_ms": per_unit.round(4).tolist()}
    figures["clean"]["clean_frames"] = int(sum(is_clean(float(t), w) for t, w in zip(totals, runs["waited_ms"])))
    figures["clean"]["clean_unit_share"] = float(np.mean(
        [[is_clean(t, w) for t, w in zip(ut, wt)] for ut, wt in zip(units.tolist(), waits)]))
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numpy", choices=("numpy", "onnxruntime"),
                    help="whose kernels to calibrate and time (default numpy)")
    ap.add_argument("--calibration", help="use this calibration file (of --backend) instead of calibrating now")
    ap.add_argument("--save-calibration", help="keep the calibration made now in this file")
    ap.add_argument("--platform", default="auto")
    ap.add_argument("--models", help="comma-separated sources (default: the zoo five + ONNX light four)")
    ap.add_argument("--frames", type=int, default=30, help="frames per model and core count")
    ap.add_argument("--chunk", type=int, default=3, help="frames per turn")
    ap.add_argument("--cores", default="1,2")
    ap.add_argument("--json", help="write all figures here")
    args = ap.parse_args(argv)

    platform = resolve_platform(args.platform)
    cluster = max(platform.clusters, key=lambda c: c.cores)
    cores = [int(c) for c in args.cores.split(",") if int(c) <= cluster.cores]
    t0 = time.time()
    if args.calibration:
        cal = load_calibration(args.calibration)
        if cal.backend != args.backend:
            ap.error(f"{args.calibration} is a calibration of the {cal.backend} backend, not {args.backend}")
    else:
        cal = calibrate(platform, quick=False, backend=args.backend)
        if args.save_calibration:
            save_calibration(cal, args.save_calibration)
    print(f"calibration ({cal.backend}: {cal.machine.get('backend', cal.backend)}): "
          f"{cal.platform.get('spec')} on {cal.machine.get('cpu', '?')}, {cal.date}, "
          f"fit {json.dumps(cal.fit)} ({time.time() - t0:.0f} s)")
    print(f"load average at start: {os.getloadavg()}")

    tmp = tempfile.TemporaryDirectory()
    sources = args.models.split(",") if args.models else ZOO + light_models(Path(tmp.name))
    rows = []
    header = (f"{'model':<18} {'units':>5} {'n':>2} | {'unit MdAPE':>10} {'net err':>8} | "
              f"{'unit MdAPE':>10} {'net err':>8} | {'pred ms':>9} {'meas ms':>9} {'clean':>8} {'units':>5}"
              + (f" | {'chain MdAPE':>11} {'chain ms':>9}" if args.backend != "numpy" else ""))
    print("\n" + " " * 29 + "| median of all runs    | median of clean runs  |")
    print(header)
    print("-" * len(header))
    for source in sources:
        model = load_model(source)
        hints = make_hints(model, calibration=cal, platform=platform, backend=args.backend)
        runs = measure(source, cores, list(cluster.cpus), args.frames, args.chunk, args.backend)
        name = model.name if source.startswith("zoo:") else "onnx:" + Path(source).stem
        for n in cores:
            pred = hints.ms(cluster.core_type, n)
            figures = plan_figures(runs[n], pred) if args.backend == "numpy" else runner_figures(runs[n], pred)
            rows.append({"model": name, "source": source, "cores": n, "units": len(pred),
                         "pred_ms": float(pred.sum()), "pred_unit_ms": pred.round(4).tolist(), **figures})
            m, f = figures["median"], figures["clean"]
            print(f"{name:<18} {len(pred):>5} {n:>2} | {m['unit_mdape']:>9.1f}% {m['net_err']:>7.1f}% | "
                  f"{f['unit_mdape']:>9.1f}% {f['net_err']:>7.1f}% | {pred.sum():>9.2f} {f['meas_ms']:>9.2f} "
                  f"{f['clean_frames']:>4}/{len(runs[n]['total_ms']):<3} {100 * f['clean_unit_share']:>4.0f}%"
                  + (f" | {f['chain_unit_mdape']:>10.1f}% {f['chain_sum_ms']:>9.2f}" if "chain_unit_mdape" in f else ""))
            sys.stdout.flush()
    for stat in ("median", "clean"):
        for n in cores:
            sel = [r[stat] for r in rows if r["cores"] == n]
            print(f"overall ({stat}, {n} core{'s' if n > 1 else ''}): median of per-model unit MdAPE "
                  f"{np.median([s['unit_mdape'] for s in sel]):.1f}%, worst {max(s['unit_mdape'] for s in sel):.1f}%; "
                  f"whole-network error median {np.median([s['net_err'] for s in sel]):.1f}%, "
                  f"worst {max(s['net_err'] for s in sel):.1f}%")
    print(f"load average at end: {os.getloadavg()}; total {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": args.backend, "calibration": cal.to_dict(),
                                               "rows": rows}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
