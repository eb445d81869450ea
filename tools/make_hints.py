#!/usr/bin/env python3
"""Reference boards and shipped hints.

    .venv/bin/python tools/make_hints.py                 # regenerate hints/<model>.<board>.hints.json
                                                         # (every shipped board; tools/make_boards.py
                                                         # writes rk3588, sd855, tensor-g1, intel-hybrid)
    .venv/bin/python tools/make_hints.py --fit-board     # refit hikey970 + odroid-xu3 to Table I, then regenerate
    .venv/bin/python tools/make_hints.py --check         # print Table I vs the board files (no writing)

**Table I** (seed 002, ARM-CL 18.05): frames/s of each network on a whole 4-core cluster at its peak
frequency. Our prediction of it is ``1000 / sum of unit ms on (core type, 4)``.

NOTE: Table I's SqueezeNet is SqueezeNet v1.0 (the paper cites Iandola et al. 2016, which is v1.0,
and ARM-CL 18.05's ``graph_squeezenet`` example is v1.0: 7x7/96 conv1, 1.7 GFLOPs). ``zoo:squeezenet``
is v1.1 (3x3/64 conv1, 0.7 GFLOPs, 2.4x less work), so the fit and the Table I check use a v1.0 graph
built here (:func:`squeezenet_v1_0`); the zoo's v1.1 is predicted faster, as it should be.

**The fit** (``--fit-board``) keeps everything physical and shared where the software is the same:
the peak of a core is 8 FLOP/cycle (4-wide NEON FMA) at the cluster frequency; the parallel
coefficients are fixed (alpha 0.1 for convs, 0.2 depthwise, 0.3 the rest, memory 0.6); the
Exynos clusters' bandwidths are the seed's measurements (A15 3.44 GB/s, A7 0.49 GB/s). Fitted, shared
by all four clusters (one library, ARM-CL): the efficiency of each kind relative to a kxk conv, the
GEMM shape constants and the compute/memory overlap. Fitted per cluster: the conv efficiency, the
per-layer overhead and (Kirin only) the bandwidth, within bounds. Loss: squared log error, plus a
steep penalty beyond +-20%.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tunerd.costs import costmodel as cm  # noqa: E402

BOARDS_DIR = ROOT / "hints" / "boards"
HINTS_DIR = ROOT / "hints"
ZOO = ["alexnet", "googlenet", "mobilenet", "resnet50", "squeezenet"]
REFERENCE_BOARDS = ["hikey970", "odroid-xu3", "jetson-tx2"]
# today's platforms, written by tools/make_boards.py (issue 17); their hints are made here too
TODAY_BOARDS = ["rk3588", "sd855", "tensor-g1", "intel-hybrid"]

# Seed 002, Table I: frames/s on the whole 4-core cluster at peak frequency.
TABLE1 = {
    "A7": {"alexnet": 1.1, "googlenet": 0.9, "mobilenet": 1.5, "resnet50": 0.2, "squeezenet": 1.5},
    "A15": {"alexnet": 3.1, "googlenet": 3.4, "mobilenet": 5.7, "resnet50": 1.3, "squeezenet": 5.0},
    "A53": {"alexnet": 2.2, "googlenet": 3.0, "mobilenet": 6.5, "resnet50": 1.5, "squeezenet": 6.8},
    "A73": {"alexnet": 7.6, "googlenet": 7.1, "mobilenet": 17.7, "resnet50": 2.8, "squeezenet": 15.7},
}
TABLE1_BOARD = {"A7": "odroid-xu3", "A15": "odroid-xu3", "A53": "hikey970", "A73": "hikey970"}
FREQ_MHZ = {"A7": 1400, "A15": 2000, "A53": 1800, "A73": 2360}
# Seed 002, section IV-A: measured peak bandwidth of the Exynos 5422 clusters.
MEASURED_BW = {"A7": 0.49, "A15": 3.44}
BW_BOUNDS = {"A53": (0.5, 6.0), "A73": (1.0, 10.0)}
ALPHA = {"conv": 0.1, "conv1x1": 0.1, "depthwise": 0.2, "fc": 0.3, "pool": 0.3, "lrn": 0.3,
         "elementwise": 0.3, "memory": 0.3}
ALPHA_MEM = 0.6
PIPELINE = {"A7": "inorder", "A53": "inorder", "A15": "ooo", "A73": "ooo"}
CORES = 4


def squeezenet_v1_0():
    """SqueezeNet v1.0 (Iandola et al. 2016), the network of Table I's SqueezeNet row."""
    from tunerd.model import passes
    from tunerd.model.builder import GraphBuilder
    from tunerd.model.loader import Model

    def fire(b, x, name, s, e):
        sq = b.conv(x, s, 1, name=f"{name}/squeeze1x1")
        return b.concat([b.conv(sq, e, 1, name=f"{name}/expand1x1"), b.conv(sq, e, 3, name=f"{name}/expand3x3")],
                        name=f"{name}/concat")

    b = GraphBuilder("squeezenet_v1_0", (1, 3, 224, 224))
    x = b.max_pool(b.conv(b.input, 96, 7, stride=2, pad=0, name="conv1"), 3, 2, ceil=True, name="pool1")
    for i, (s, e) in zip((2, 3, 4), ((16, 64), (16, 64), (32, 128))):
        x = fire(b, x, f"fire{i}", s, e)
    x = b.max_pool(x, 3, 2, ceil=True, name="pool4")
    for i, (s, e) in zip((5, 6, 7, 8), ((32, 128), (48, 192), (48, 192), (64, 256))):
        x = fire(b, x, f"fire{i}", s, e)
    x = fire(b, b.max_pool(x, 3, 2, ceil=True, name="pool8"), "fire9", 64, 256)
    x = b.conv(b.dropout(x, name="drop9"), 1000, 1, name="conv10")
    x = b.op("Flatten", [b.global_avg_pool(x, name="pool10")], "pool10_flat", axis=1)
    return Model(passes.optimize(b.finish(b.softmax(x))), source="squeezenet_v1_0")


def table1_models() -> dict:
    """The five networks of Table I at 224x224 (SqueezeNet as v1.0, see the module docstring)."""
    from tunerd.model.loader import load_model
    models = {n: load_model(f"zoo:{n}", store=False) for n in ZOO if n != "squeezenet"}
    models["squeezenet"] = squeezenet_v1_0()
    return models


def network_table(models: dict) -> cm.FeatureTable:
    """All networks' layers in one table, "unit" = network index (in ZOO order)."""
    return cm.FeatureTable.from_groups([li for u in models[name].units for li in u.layers] for name in ZOO)


def predicted_fps(table: cm.FeatureTable, coeffs: cm.CoreCoeffs) -> np.ndarray:
    return 1000.0 / cm.unit_ms(table, coeffs, CORES)


# ------------------------------------------------------------------------------ fitting

def _sig(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _bounded(x, lo, hi):
    return lo + (hi - lo) * _sig(x)


def nelder_mead(f, x0, step=0.5, iters=400, tol=1e-9):
    n = len(x0)
    pts = [np.asarray(x0, float)] + [np.asarray(x0, float) + step * np.eye(n)[i] for i in range(n)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        c = np.mean(pts[:-1], axis=0)
        xr = c + (c - pts[-1])
        fr = f(xr)
        if fr < vals[0]:
            xe = c + 2 * (c - pts[-1])
            fe = f(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = c + 0.5 * (pts[-1] - c)
            fc = f(xc)
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:
                pts = [pts[0]] + [pts[0] + 0.5 * (p - pts[0]) for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    i = int(np.argmin(vals))
    return pts[i], vals[i]


def unpack_shared(q) -> dict:
    elem = float(_bounded(q[4], 0.002, 1.0))
    return {"rel": {"conv": 1.0, "conv1x1": float(_bounded(q[0], 0.2, 1.5)),
                    "depthwise": float(_bounded(q[1], 0.02, 1.0)), "fc": 1.0,
                    "pool": float(_bounded(q[2], 0.005, 1.0)), "lrn": float(_bounded(q[3], 0.002, 1.0)),
                    "elementwise": elem, "memory": elem},
            "shape": {"m0": float(_bounded(q[5], 0.0, 64.0)), "n0": float(_bounded(q[6], 0.0, 256.0)),
                      "k0": float(_bounded(q[7], 0.0, 256.0)), "dw_n0": 0.0},
            # NOTE: out-of-order cores (A15, A73) hide memory traffic under compute better than
            # in-order ones (A7, A53): one overlap each
            "overlap": {"ooo": float(_sig(q[8])), "inorder": float(_sig(q[9]))}}


def cluster_coeffs(core_type: str, p, shared: dict) -> cm.CoreCoeffs:
    eff = float(_bounded(p[0], 0.02, 0.8))
    overhead = float(_bounded(p[1], 0.0, 2000.0))
    bw = MEASURED_BW.get(core_type) or float(_bounded(p[2], *BW_BOUNDS[core_type]))
    return cm.CoreCoeffs(core_type, FREQ_MHZ[core_type] * 8 / 1000.0, bw / float(cm.speedup(CORES, ALPHA_MEM)),
                         eff={k: eff * r for k, r in shared["rel"].items()},
                         overhead_us={k: overhead for k in cm.KINDS}, alpha=dict(ALPHA), alpha_mem=ALPHA_MEM,
                         shape=dict(shared["shape"]), overlap=shared["overlap"][PIPELINE[core_type]])


def _loss(log_ratio) -> float:
    excess = np.maximum(0.0, np.abs(log_ratio) - np.log(1.2))
    return float(np.sum(log_ratio ** 2) + 100.0 * np.sum(excess ** 2))


def fit_cluster(table, core_type, shared):
    target = np.array([TABLE1[core_type][n] for n in ZOO])

    def f(p):
        return _loss(np.log(predicted_fps(table, cluster_coeffs(core_type, p, shared)) / target))
    best = None
    for start in ([-1.0, -2.0, 0.0], [0.0, -4.0, 1.0], [-2.5, 0.0, -1.0]):
        p, v = nelder_mead(f, np.array(start), iters=120)
        if best is None or v < best[1]:
            best = (p, v)
    return best


def fit_boards(iters: int = 150, verbose: bool = True):
    table = network_table(table1_models())

    def total(q):
        shared = unpack_shared(q)
        return sum(fit_cluster(table, ct, shared)[1] for ct in TABLE1)
    # starting point: a 1x1 conv as good as a kxk one, depthwise and pooling at a third, LRN and
    # elementwise at a tenth, GEMM dims saturating at 16 rows / 64 columns / 32 depth, half overlap
    q0 = np.array([0.0, -0.6, -0.6, -2.0, -2.0, -1.0, -1.0, -1.0, 0.0, 0.0])
    t0 = time.time()
    q, v = nelder_mead(total, q0, step=0.8, iters=iters)
    shared = unpack_shared(q)
    per = {ct: cluster_coeffs(ct, fit_cluster(table, ct, shared)[0], shared) for ct in TABLE1}
    if verbose:
        print(f"fit: loss {v:.4f} after {time.time() - t0:.0f} s", file=sys.stderr)
        for ct, c in per.items():
            print(f"  {ct}: conv eff {c.eff['conv']:.3f}, overhead {c.overhead_us['conv']:.0f} us, "
                  f"cluster bandwidth {c.bandwidth_gbs * float(cm.speedup(CORES, ALPHA_MEM)):.2f} GB/s, "
                  f"overlap {c.overlap:.2f}", file=sys.stderr)
    return shared, per, table


def costmodel_block(c: cm.CoreCoeffs) -> dict:
    d = c.to_dict()
    return {"eff": d["eff"], "overhead_us": round(d["overhead_us"]["conv"], 1), "alpha": d["alpha"],
            "alpha_mem": d["alpha_mem"], "overlap": d["overlap"], "shape": d["shape"]}


def tx2_clusters(per: dict) -> list[dict]:
    """Jetson TX2 clusters, derived from the fitted Table I clusters (no TX2 data to fit).

    - Peak: 2.0 GHz x 8 FLOP/cycle (4-wide NEON FMA, as assumed for every core here) for both.
    - Denver2 (wide out-of-order, A72/A73-class per clock in published benchmarks): the A73's
      efficiencies and overheads.
    - Cortex-A57 (the A15's out-of-order successor, A72's predecessor): efficiencies the geometric
      mean of the A15's and the A73's, overhead the A15's.
    - Bandwidth: the A73 cluster's fitted figure x 2, the ratio of the theoretical DRAM bandwidths
      (TX2 128-bit LPDDR4-3733, 59.7 GB/s; Kirin 970 4x16-bit LPDDR4X-3733, 29.9 GB/s).
    """
    a15, a73 = per["A15"], per["A73"]
    bw = round(a73.bandwidth_gbs * float(cm.speedup(CORES, a73.alpha_mem)) * 59.7 / 29.9, 3)
    denver = costmodel_block(a73)
    a57 = costmodel_block(a15)
    a57["eff"] = {k: round(float(np.sqrt(a15.eff[k] * a73.eff[k])), 6) for k in cm.KINDS}
    return [{"name": "little", "core_type": "A57", "cores": 4, "freq_mhz": 2000, "gflops_per_core": 16.0,
             "bandwidth_gbs": bw, "costmodel": a57},
            {"name": "big", "core_type": "Denver2", "cores": 2, "freq_mhz": 2000, "gflops_per_core": 16.0,
             "bandwidth_gbs": bw, "costmodel": denver}]


def dump_board(data: dict) -> str:
    """JSON with one line per costmodel table (readable diffs)."""
    lines = ["{"]
    keys = [k for k in data if k != "clusters"]
    for k in keys:
        lines.append(f" {json.dumps(k)}: {json.dumps(data[k])},")
    lines.append(' "clusters": [')
    for i, c in enumerate(data["clusters"]):
        head = {k: v for k, v in c.items() if k != "costmodel"}
        lines.append("  {" + json.dumps(head)[1:-1] + (',' if "costmodel" in c else ""))
        if "costmodel" in c:
            block = c["costmodel"]
            lines.append('   "costmodel": {')
            items = list(block.items())
            for j, (k, v) in enumerate(items):
                lines.append(f"    {json.dumps(k)}: {json.dumps(v)}{',' if j + 1 < len(items) else ''}")
            lines.append("   }")
        lines.append("  }" + ("," if i + 1 < len(data["clusters"]) else ""))
    lines.append(" ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == data
    return text


def write_fitted(per: dict) -> None:
    for board in ("hikey970", "odroid-xu3"):
        path = BOARDS_DIR / f"{board}.json"
        data = json.loads(path.read_text())
        for cluster in data["clusters"]:
            c = per.get(cluster["core_type"])
            if c is None:
                continue
            cluster["gflops_per_core"] = round(c.gflops, 3)
            cluster["bandwidth_gbs"] = round(c.bandwidth_gbs * float(cm.speedup(cluster["cores"], c.alpha_mem)), 3)
            cluster["costmodel"] = costmodel_block(c)
        path.write_text(dump_board(data))
        print(f"wrote {path}", file=sys.stderr)
    path = BOARDS_DIR / "jetson-tx2.json"
    data = {"name": "jetson-tx2",
            "description": ("NVIDIA Jetson TX2 (Tegra X2): 4x Cortex-A57 + 2x Denver2, both at 2.0 GHz. Not fitted "
                            "(no published per-cluster CNN throughput of the kind of Table I): peak 8 FLOP/cycle, "
                            "efficiencies scaled from the fitted A15/A73, bandwidth from the A73 fit x the DRAM "
                            "bandwidth ratio, interconnect assumed; see tools/make_hints.py tx2_clusters and "
                            "docs/COSTMODEL.md."),
            "interconnect_gbs": 4.0, "clusters": tx2_clusters(per)}
    path.write_text(dump_board(data))
    print(f"wrote {path}", file=sys.stderr)


def fitted_from_boards() -> dict:
    """The fitted Table I clusters as they are in the board files (for rewriting derived files)."""
    out = {}
    for board in ("hikey970", "odroid-xu3"):
        out.update(board_coeffs(board))
    return out


# ------------------------------------------------------------------------------ checking, hints

def board_coeffs(board: str) -> dict:
    from tunerd.platform.boards import load_board
    return cm.coeffs_from_board(load_board(str(BOARDS_DIR / f"{board}.json")))


def check_table1(table=None) -> list[tuple[str, str, float, float]]:
    """(core type, network, Table I fps, predicted fps) for the four Table I clusters."""
    table = table or network_table(table1_models())
    rows = []
    for ct, board in TABLE1_BOARD.items():
        fps = predicted_fps(table, board_coeffs(board)[ct])
        rows += [(ct, n, TABLE1[ct][n], float(f)) for n, f in zip(ZOO, fps)]
    return rows


def print_check(rows) -> None:
    print(f"{'cluster':<8} " + " ".join(f"{n:>22}" for n in ZOO))
    for ct in TABLE1:
        cells = [f"{t:5.1f} -> {p:5.2f} ({p / t:4.2f}x)" for c, n, t, p in rows if c == ct]
        print(f"{ct:<8} " + " ".join(f"{c:>22}" for c in cells))
    worst = max(abs(np.log(p / t)) for _, _, t, p in rows)
    print(f"worst ratio {np.exp(worst):.3f} (off by {100 * (np.exp(worst) - 1):.1f}%)")


def write_hints(models=ZOO, boards=REFERENCE_BOARDS + TODAY_BOARDS) -> None:
    from tunerd.costs.hints import predict_for_board, save_hints
    from tunerd.platform.boards import board_clusters, load_board
    for name in models:
        for board in boards:
            h = predict_for_board(f"zoo:{name}", str(BOARDS_DIR / f"{board}.json"))
            h.producer["name"] = board
            h.producer["file"] = f"hints/boards/{board}.json"
            path = save_hints(h, HINTS_DIR / f"{name}.{board}.hints.json")
            speed = {c.name: c.speed for c in board_clusters(load_board(str(BOARDS_DIR / f"{board}.json")))}
            best = max(((c["name"], h.fps(c["core_type"], c["cores"]) * speed[c["name"]]) for c in h.clusters),
                       key=lambda t: t[1])
            print(f"wrote {path.relative_to(ROOT)}: {h.n_units} units, best single cluster {best[0]} "
                  f"{best[1]:.2f} fps", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fit reference boards to Table I and write the shipped hints.")
    ap.add_argument("--fit-board", action="store_true", help="refit hikey970 and odroid-xu3 to Table I first")
    ap.add_argument("--iters", type=int, default=150, help="outer Nelder-Mead iterations of the fit")
    ap.add_argument("--check", action="store_true", help="only print Table I vs the board files")
    args = ap.parse_args(argv)
    if args.fit_board:
        shared, per, table = fit_boards(args.iters)
        print(json.dumps(shared, indent=1), file=sys.stderr)
        write_fitted(per)
    elif not args.check:
        write_fitted(fitted_from_boards())     # same figures, current formatting and derived TX2
    print_check(check_table1())
    if not args.check:
        write_hints()
    return 0


if __name__ == "__main__":
    sys.exit(main())
