#!/usr/bin/env python3
"""Single-thread throughput: tunerd's numpy kernels vs onnxruntime, side by side in one run.

Networks: the four light ONNX graphs shipped with the onnx package (random weights, 224x224) and
zoo:mobilenet exported to ONNX. Both engines run the same file; runs alternate ours/ort so machine
noise hits both alike; we report medians, img/s and the ratio ours/ort. Also reports the memory a
second process adds when it maps the same model's weights (shared read-only mapping).

    python tools/bench_kernels.py [--frames 20] [--models alexnet,googlenet,...] [--json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from onnx_cases import light_with_random_weights  # noqa: E402

import tunerd  # noqa: E402
from tunerd.model.onnx_io import export_onnx  # noqa: E402

NETWORKS = {"alexnet": "bvlc_alexnet", "googlenet": "inception_v1", "resnet50": "resnet50",
            "squeezenet": "squeezenet", "mobilenet": None}


def ort_session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _child_mapping(path, queue):
    import psutil
    proc = psutil.Process()
    before = proc.memory_full_info()
    from tunerd.model.loader import Model
    model = Model.open(path)
    total = 0.0
    for w in model.graph.weights.values():       # touch every page
        total += float(np.asarray(w).ravel()[:: max(1, 1024 // w.itemsize)].sum())
    after = proc.memory_full_info()
    queue.put({"rss_added_mb": (after.rss - before.rss) / 2**20, "uss_added_mb": (after.uss - before.uss) / 2**20,
               "pss_added_mb": (after.pss - before.pss) / 2**20})


def second_process_memory(model) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_mapping, args=(str(model.path), q))
    p.start()
    result = q.get(timeout=120)
    p.join()
    result["weights_mb"] = model.weight_bytes / 2**20
    return result


def build(name: str, tmp: Path):
    """(model, path of the same network as ONNX) for one of NETWORKS."""
    light = NETWORKS[name]
    if light:
        path = light_with_random_weights(light, tmp)
        return tunerd.load_model(path, backend="numpy"), path
    model = tunerd.load_model(f"zoo:{name}", backend="numpy")
    path = tmp / f"{name}.onnx"
    export_onnx(model.graph, path)
    return model, path


def bench(name: str, frames: int, tmp: Path) -> dict:
    from threadpoolctl import threadpool_limits
    light = NETWORKS[name]
    model, path = build(name, tmp)
    sess = ort_session(path)
    feed_name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    plan = model.plan()
    ours, ort = [], []
    with threadpool_limits(limits=1):
        for _ in range(2):   # warm-up both
            plan.run(x)
            sess.run(None, {feed_name: x})
        for _ in range(frames):
            t0 = time.perf_counter()
            plan.run(x)
            t1 = time.perf_counter()
            sess.run(None, {feed_name: x})
            t2 = time.perf_counter()
            ours.append(t1 - t0)
            ort.append(t2 - t1)
    mo, mr = statistics.median(ours), statistics.median(ort)
    return {"network": name, "source": f"light_{light}.onnx" if light else "zoo:mobilenet (exported)",
            "frames": frames, "ours_ms": 1000 * mo, "ort_ms": 1000 * mr, "ours_fps": 1 / mo, "ort_fps": 1 / mr,
            "ratio": mr / mo, "memory": second_process_memory(model)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20, help="timed frames per engine (default 20)")
    ap.add_argument("--models", default=",".join(NETWORKS), help="comma-separated subset of " + ",".join(NETWORKS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        ap.error(f"unknown network(s) {unknown}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TUNERD_CACHE_DIR", str(Path(tmp) / "cache"))
        for name in names:
            print(f"[bench_kernels] {name} ...", file=sys.stderr, flush=True)
            results.append(bench(name, args.frames, Path(tmp)))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"single thread, 224x224, median of {args.frames} alternating runs")
    print(f"{'network':<11} {'ours img/s':>10} {'ort img/s':>10} {'ours/ort':>9}   {'weights':>8} {'2nd proc RSS+':>13} {'USS+':>7}")
    for r in results:
        m = r["memory"]
        print(f"{r['network']:<11} {r['ours_fps']:>10.2f} {r['ort_fps']:>10.2f} {r['ratio']:>8.2f}x   "
              f"{m['weights_mb']:>6.1f}MB {m['rss_added_mb']:>11.1f}MB {m['uss_added_mb']:>5.1f}MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
