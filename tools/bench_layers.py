#!/usr/bin/env python3
"""Where the time goes: tunerd's kernels vs onnxruntime layer class by layer class, single thread.

For one network (the same ONNX file in both engines, as tools/bench_kernels.py builds it) this
times every step of our execution plan and reads onnxruntime's own per-node profile over the same
frames (runs alternate, one frame each), then groups both by layer class: convolutions by
(kernel, output channels, input channels per group, output size, stride, depthwise), everything
else by op type. Per class it prints milliseconds per frame, GFLOP/s (multiply-adds counted as 2)
and the ratio ort/ours (above 1: we are faster). The last line is the share of our time the
classes below 0.8 take: that is where a kernel change pays.

``--floor`` adds, per class, the time our kernels' approach could not go below on this machine,
and from it the network's ceiling ratio (ort / sum of floors). The floor is deliberately
generous to us: only the arithmetic our kernels cannot avoid is timed, in isolation, with hot
operands, the fastest of 15 calls, and everything else (im2col copies, Winograd transforms,
padding, bias and activation passes, pooling, concat, elementwise ops) counts as free:
- a dense or grouped conv: the bare ``np.matmul`` (OpenBLAS sgemm) of its im2col GEMM, or the 16
  batched GEMMs of Winograd F(2x2, 3x3) for a 3x3 stride-1 conv if those are faster;
- a depthwise conv: the kh*kw multiply and kh*kw - 1 add passes over the output that a numpy
  shift-and-accumulate needs (numpy has no fused multiply-add ufunc);
- Gemm/MatMul: the bare matmul; every other op: zero.
A ceiling under 0.8 means no arrangement of numpy + OpenBLAS calls of this kind reaches the
target on that network; only a compiled kernel (a new dependency) could.

    python tools/bench_layers.py resnet50 [--frames 7] [--top 25] [--floor] [--json]
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import NETWORKS, build  # noqa: E402

from tunerd.model.plan import ExecutionPlan  # noqa: E402


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


def _best_seconds(fn, reps: int) -> float:
    """The fastest of ``reps`` timed calls: a floor is what a call cannot go below, and on a shared
    machine noise only ever adds time (a median let one busy moment inflate a floor, and every
    layer of that shape with it)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


FLOOR_REPS = 15


@functools.lru_cache(maxsize=None)
def conv_floor(m, cg, kh, kw, group, ho, wo, stride, reps) -> float:
    """Seconds of the arithmetic a numpy + OpenBLAS conv of this shape cannot avoid (see --floor)."""
    rng = np.random.default_rng(0)
    npix = ho * wo
    if group > 1 and cg == 1:
        # flat arrays and a scalar weight: no per-row loop overhead, whatever the layout
        out = rng.standard_normal(m * npix, dtype=np.float32)
        src = rng.standard_normal(m * npix, dtype=np.float32)
        tmp = np.empty_like(out)
        w = np.float32(0.5)

        def depthwise():
            np.multiply(src, w, out=out)
            for _ in range(kh * kw - 1):
                np.multiply(src, w, out=tmp)
                np.add(out, tmp, out=out)
        return _best_seconds(depthwise, reps)
    mg, k = m // group, cg * kh * kw
    a = rng.standard_normal((group, mg, k), dtype=np.float32)
    b = rng.standard_normal((group, k, npix), dtype=np.float32)
    c = np.empty((group, mg, npix), np.float32)
    best = _best_seconds(lambda: np.matmul(a, b, out=c), reps)
    if (kh, kw) == (3, 3) and stride == 1 and group == 1:
        tiles = -(-ho // 2) * -(-wo // 2)
        u = rng.standard_normal((16, m, cg), dtype=np.float32)
        v = rng.standard_normal((16, cg, tiles), dtype=np.float32)
        p = np.empty((16, m, tiles), np.float32)
        best = min(best, _best_seconds(lambda: np.matmul(u, v, out=p), reps))
    return best


def node_floor(node, graph, shapes, reps: int) -> float:
    if node.op == "Conv":
        m, cg, kh, kw = graph.weights[node.inputs[1]].shape
        ys = shapes[node.outputs[0]]
        stride = int((node.attrs.get("strides") or (1, 1))[0])
        return conv_floor(m, cg, kh, kw, int(node.attrs.get("group", 1)), ys[2], ys[3], stride, reps)
    if node.op in ("Gemm", "MatMul"):
        a, b = (shapes[i] for i in node.inputs[:2])
        trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        k, n = (b[1], b[0]) if trans_b else (b[-2], b[-1])
        return conv_floor(n, k, 1, 1, 1, int(np.prod(a[:-1])), 1, 1, reps)
    return 0.0


def run(name: str, frames: int, tmp: Path, floor: bool = False) -> dict:
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
    floors = collections.defaultdict(float)
    if floor:
        by_name = {n.name: n for n in model.graph.nodes}
        with threadpool_limits(limits=1):
            floor_times = [node_floor(by_name[n], model.graph, model.shapes, max(FLOOR_REPS, frames))
                           for n in plan.node_names]
        for key, t in our_classes(model, plan, [[t] for t in floor_times]).items():
            floors[key] = t[0]
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
                     "ratio": r[0] / o[0] if o[0] and r[0] else None,
                     **({"floor_ms": 1e3 * floors.get(key, 0.0)} if floor else {})})
    rows.sort(key=lambda r: -r["ours_ms"])
    total_ours = sum(r["ours_ms"] for r in rows)
    total_ort = sum(r["ort_ms"] for r in rows)
    slow = sum(r["ours_ms"] for r in rows if r["ratio"] is not None and r["ratio"] < 0.8)
    res = {"network": name, "frames": frames, "ours_ms": total_ours, "ort_ms": total_ort,
           "ratio": total_ort / total_ours, "share_below_0_8": slow / total_ours, "classes": rows}
    if floor:
        res["floor_ms"] = sum(r["floor_ms"] for r in rows)
        res["ceiling_ratio"] = total_ort / res["floor_ms"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("network", choices=sorted(NETWORKS))
    ap.add_argument("--frames", type=int, default=7, help="profiled frames per engine (default 7)")
    ap.add_argument("--top", type=int, default=25, help="classes to print, slowest of ours first (default 25)")
    ap.add_argument("--floor", action="store_true",
                    help="also time each class's floor and print the network's ceiling ratio (see above)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TUNERD_CACHE_DIR", str(Path(tmp) / "cache"))
        res = run(args.network, args.frames, Path(tmp), floor=args.floor)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['network']}: kernels ours {res['ours_ms']:.1f} ms, onnxruntime {res['ort_ms']:.1f} ms, "
          f"ort/ours {res['ratio']:.2f} (median of {res['frames']} frames, single thread; ORT layout "
          f"changes like ReorderInput count as their own class)")
    fl = args.floor
    print(f"{'class':<34} {'ours ms':>8} {'GF/s':>5} {'ort ms':>8} {'GF/s':>5} {'ort/ours':>9}"
          + (f" {'floor ms':>9}" if fl else ""))

    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"
    for r in res["classes"][: args.top]:
        print(f"{r['class']:<34} {r['ours_ms']:>8.2f} {num(r['ours_gflops'], '5.0f'):>5} {r['ort_ms']:>8.2f} "
              f"{num(r['ort_gflops'], '5.0f'):>5} {num(r['ratio'], '9.2f'):>9}"
              + (f" {r['floor_ms']:>9.2f}" if fl else ""))
    print(f"classes below 0.8x take {res['share_below_0_8']:.0%} of our kernel time")
    if fl:
        print(f"floor {res['floor_ms']:.1f} ms: ceiling ort/ours {res['ceiling_ratio']:.2f} with every copy, "
              f"transform, epilogue and non-conv op free")
    return 0


if __name__ == "__main__":
    sys.exit(main())
