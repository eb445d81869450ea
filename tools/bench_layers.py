#!/usr/bin/env python3
"""Where the time goes: tunerd's kernels vs onnxruntime layer class by layer class, single thread.

For one network (the same ONNX file in both engines, as tools/bench_kernels.py builds it) this
times every step of our execution plan and reads onnxruntime's own per-node profile over the same
frames (runs alternate, one frame each), then groups both by layer class: convolutions by
(kernel, output channels, input channels per group, output size, stride, depthwise), everything
else by op type. Per class it prints milliseconds per frame, GFLOP/s (multiply-adds counted as 2)
and the ratio ort/ours (above 1: we are faster). The last line is the share of our time the
classes below 0.8 take: that is where a kernel change pays.

    python tools/bench_layers.py resnet50 [--frames 7] [--top 25] [--json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import NETWORKS, build  # noqa: E402

from tunerd.plan import ExecutionPlan  # noqa: E402


def conv_key(kernel, m, cg, ho, stride, depthwise) -> str:
    return f"conv{kernel}x{kernel}{' dw' if depthwise else ''} s{stride} {cg}->{m} @{ho}"


def align(key: str, ours: dict) -> str:
    """Our class for an onnxruntime conv class: its NCHWc kernels pad channel counts up to a
    multiple of the block (1000 -> 1008), so a class of ours with up to 15 fewer channels matches."""
    if key in ours or not key.startswith("conv"):
        return key
    head, m_ho = key.rsplit("->", 1)
    m, ho = m_ho.split(" @")
    head, cg = head.rsplit(" ", 1)
    for dm in range(16):
        for dc in range(16 if int(cg) > 1 else 1):
            cand = f"{head} {int(cg) - dc}->{int(m) - dm} @{ho}"
            if cand in ours:
                return cand
    return key


def our_classes(model, plan, step_times) -> dict:
    """{class: [seconds per frame, flops]} from our plan's per-step medians."""
    graph, shapes = model.graph, model.shapes
    by_name = {n.name: n for n in graph.nodes}
    out = collections.defaultdict(lambda: [0.0, 0.0])
    for name, times in zip(plan.node_names, step_times):
        node = by_name[name]
        t = float(np.median(times))
        if node.op == "Conv":
            m, cg, kh, kw = graph.weights[node.inputs[1]].shape
            ys = shapes[node.outputs[0]]
            group = int(node.attrs.get("group", 1))
            stride = int((node.attrs.get("strides") or (1, 1))[0])
            key = conv_key(kh, m, cg, ys[2], stride, group > 1 and cg == 1)
            flops = 2.0 * np.prod(ys) * cg * kh * kw
        else:
            key, flops = node.op, 0.0
        out[key][0] += t
        out[key][1] += flops
    return out


def ort_classes(events, frames) -> dict:
    """The same classes from onnxruntime's profile (fused and NCHWc-blocked nodes included)."""
    out = collections.defaultdict(lambda: [0.0, 0.0])
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        args = e["args"]
        op = args["op_name"]
        if "Conv" in op:
            ins = [list(d.values())[0] for d in args["input_type_shape"]]
            ys = list(args["output_type_shape"][0].values())[0]
            x, w = ins[0], ins[1]
            m, cg, kh, kw = w
            # NCHWc outputs are (N, C/8, H, W, 8): spatial size is at index 2 either way
            ho = ys[2]
            out_elems = float(np.prod(ys))
            depthwise = cg == 1 and m > 1 and len(x) >= 2 and x[1] * (x[-1] if len(x) == 5 else 1) == m
            stride = max(1, round((x[2] - 1) / max(ho - 1, 1))) if ho > 1 else 1
            key = conv_key(kh, m, cg, ho, stride, depthwise)
            flops = 2.0 * out_elems * cg * kh * kw
        else:
            # onnxruntime's fusions (FusedGemm: Gemm + activation) count as the op they replace
            key, flops = op[len("Fused"):] if op.startswith("Fused") else op, 0.0
        out[key][0] += e["dur"] / 1e6 / frames
        out[key][1] += flops / frames
    return out


def run(name: str, frames: int, tmp: Path) -> dict:
    from threadpoolctl import threadpool_limits
    import onnxruntime as ort
    model, path = build(name, tmp)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / f"ort_{name}")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    # a plan whose every step is a "unit", so run_timed reports each step's time
    plan = ExecutionPlan(model.graph, model.shapes, unit_ends=list(range(len(model.graph.nodes))))
    times = [[] for _ in plan.node_names]
    with threadpool_limits(limits=1):
        plan.run(x)
        sess.run(None, {feed: x})
        for _ in range(frames):
            sess.run(None, {feed: x})
            for j, t in enumerate(plan.run_timed(x)[1]):
                times[j].append(t)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    # onnxruntime profiles every run: keep the last ``frames`` (the warm-up run is dropped)
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    if len(starts) > frames:
        events = [e for e in events if e.get("ts", 0) >= starts[-frames]]
    ours = our_classes(model, plan, times)
    ort_ = collections.defaultdict(lambda: [0.0, 0.0])
    for key, (t, flops) in ort_classes(events, frames).items():
        a = ort_[align(key, ours)]
        a[0] += t
        a[1] += flops
    rows = []
    for key in set(ours) | set(ort_):
        o, r = ours.get(key, [0.0, 0.0]), ort_.get(key, [0.0, 0.0])
        rows.append({"class": key, "ours_ms": 1e3 * o[0], "ort_ms": 1e3 * r[0],
                     "ours_gflops": o[1] / o[0] / 1e9 if o[0] and o[1] else None,
                     "ort_gflops": r[1] / r[0] / 1e9 if r[0] and r[1] else None,
                     "ratio": r[0] / o[0] if o[0] and r[0] else None})
    rows.sort(key=lambda r: -r["ours_ms"])
    total_ours = sum(r["ours_ms"] for r in rows)
    total_ort = sum(r["ort_ms"] for r in rows)
    slow = sum(r["ours_ms"] for r in rows if r["ratio"] is not None and r["ratio"] < 0.8)
    return {"network": name, "frames": frames, "ours_ms": total_ours, "ort_ms": total_ort,
            "ratio": total_ort / total_ours, "share_below_0_8": slow / total_ours, "classes": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("network", choices=sorted(NETWORKS))
    ap.add_argument("--frames", type=int, default=7, help="profiled frames per engine (default 7)")
    ap.add_argument("--top", type=int, default=25, help="classes to print, slowest of ours first (default 25)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TUNERD_CACHE_DIR", str(Path(tmp) / "cache"))
        res = run(args.network, args.frames, Path(tmp))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['network']}: kernels ours {res['ours_ms']:.1f} ms, onnxruntime {res['ort_ms']:.1f} ms, "
          f"ort/ours {res['ratio']:.2f} (median of {res['frames']} frames, single thread; ORT layout "
          f"changes like ReorderInput count as their own class)")
    print(f"{'class':<34} {'ours ms':>8} {'GF/s':>5} {'ort ms':>8} {'GF/s':>5} {'ort/ours':>9}")

    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"
    for r in res["classes"][: args.top]:
        print(f"{r['class']:<34} {r['ours_ms']:>8.2f} {num(r['ours_gflops'], '5.0f'):>5} {r['ort_ms']:>8.2f} "
              f"{num(r['ort_gflops'], '5.0f'):>5} {num(r['ratio'], '9.2f'):>9}")
    print(f"classes below 0.8x take {res['share_below_0_8']:.0%} of our kernel time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
