#!/usr/bin/env python3
"""Board files of today's platforms: RK3588, a Snapdragon 855-class phone, a 2+2+4 Tensor-class phone
and an Intel hybrid laptop part (hints/boards/{rk3588,sd855,tensor-g1,intel-hybrid}.json).

    .venv/bin/python tools/make_boards.py            # fit, write the four board files, print the fit
    .venv/bin/python tools/make_boards.py --check    # print the fit of the files as they are
    .venv/bin/python tools/make_hints.py             # then regenerate the shipped hints

**The one fit** (RK3588's A55 and A76): Tencent/ncnn's ``benchmark/README.md``, section "Rockchip
RK3588 (Cortex-A76 2.4GHz x 4 + Cortex-A55 1.8GHz x 4)", is the only published run we found with all
five networks on each cluster alone at 1 and at 4 threads, in one run of one library (benchncnn,
fp32, ``powersave`` 1 = little cores, 2 = big cores). 20 figures. ncnn's squeezenet is v1.1 like
``zoo:squeezenet``; its alexnet and squeezenet take 227x227 inputs, so their times are scaled by
(224/227)^2 to our 224x224 (FLOPs go with the plane). Peaks: 8 FLOP/cycle for the A55 (one 128-bit
FMA per cycle), 16 for the A76 (two 128-bit FMA pipes; Arm's Cortex-A76 Software Optimization
Guide). Fitted, shared by the two clusters (one library): the efficiency of 1x1 conv, depthwise and
elementwise relative to a kxk conv; per cluster: the conv efficiency, the per-layer overhead, the
cluster bandwidth (0.3-12 GB/s) and the conv parallel coefficient (alpha; the 4-thread figures fix
it). GEMM shape constants, overlap, pooling and LRN efficiencies, alpha_mem and the other parallel
coefficients are the ARM-CL fit's (docs/COSTMODEL.md), not refitted. Residuals: docs/COSTMODEL.md.

**Derived, not fitted** (no per-cluster run of one library exists for them; every figure below is
our estimate and the files say so):

- sd855: silver = the fitted A55 at 1.78 GHz, gold and prime = the fitted A76 (Kryo 485 Gold is an
  A76 derivative) at 2.42 and 2.84 GHz, one core type ("A76"): the file gives both clusters the
  same FLOP/cycle, so the gold cluster runs at 2420/2840 of the prime's speed.
- tensor-g1 (2x X1 2.80 GHz, 2x A76 2.25 GHz, 4x A55 1.80 GHz): A55 and A76 as fitted; X1 has
  four 128-bit FMA pipes (32 FLOP/cycle peak; Arm's Cortex-X1 Software Optimization Guide) and we
  take its conv efficiency as 0.8 of the A76's (1.6x the A76 per clock on convolutions: an estimate
  between the doubled FMA width and the ~1.3x IPC Arm quotes).
- intel-hybrid (Alder Lake-P class: 4 P-cores 4.7 GHz, 8 E-cores 3.4 GHz; SMT threads are not
  cores, DESIGN.md): AVX2 peaks 32 FLOP/cycle (P: two 256-bit FMA ports) and 16 (E: two 128-bit
  FMA pipes); efficiencies the fitted A76's relative ones, conv efficiency 0.5 (P) and 0.45 (E),
  overhead 10 us, bandwidths 25 (P) and 15 GB/s (E) of LPDDR5-4800's 76.8 GB/s, interconnect
  (the shared L3 ring) 20 GB/s: all estimates.
- Interconnect of the ARM boards: 4 GB/s (assumed, as for the Jetson TX2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import make_hints as mh  # noqa: E402
from tunerd.costs import costmodel as cm  # noqa: E402

# ncnn benchmark/README.md, "Rockchip RK3588 (Cortex-A76 2.4GHz x 4 + Cortex-A55 1.8GHz x 4)":
# avg ms of benchncnn 8 THREADS POWERSAVE -1 1 (fp32). Keys: (core type, threads).
NCNN_RK3588_MS = {
    ("A76", 4): {"squeezenet": 7.60, "mobilenet": 11.05, "googlenet": 33.37, "alexnet": 29.09, "resnet50": 53.83},
    ("A76", 1): {"squeezenet": 25.07, "mobilenet": 41.19, "googlenet": 116.97, "alexnet": 93.55, "resnet50": 187.15},
    ("A55", 4): {"squeezenet": 25.71, "mobilenet": 39.89, "googlenet": 100.87, "alexnet": 86.22, "resnet50": 163.92},
    ("A55", 1): {"squeezenet": 83.53, "mobilenet": 131.87, "googlenet": 359.24, "alexnet": 319.40, "resnet50": 603.30},
}
INPUT_227 = {"alexnet", "squeezenet"}
RK3588_MHZ = {"A55": 1800, "A76": 2400}
FLOP_PER_CYCLE = {"A55": 8, "A76": 16, "X1": 32, "GoldenCove": 32, "Gracemont": 16}
BOUNDS = {"eff": (0.02, 1.5), "overhead": (0.0, 2000.0), "bw": (0.3, 12.0), "alpha": (0.0, 0.6)}
PER_CLUSTER = ("eff", "overhead", "bw", "alpha")
N_SHARED = 3
ARM_INTERCONNECT_GBS = 4.0


def target_ms() -> dict:
    """The ncnn figures at our 224x224 inputs."""
    return {key: {n: ms * ((224 / 227) ** 2 if n in INPUT_227 else 1.0) for n, ms in row.items()}
            for key, row in NCNN_RK3588_MS.items()}


def _shared(q, base: cm.CoreCoeffs) -> dict:
    """Efficiency of each kind relative to a kxk conv: 1x1, depthwise and elementwise (with memory)
    fitted, pooling and LRN the ARM-CL fit's (a few ms of each: ncnn's figures cannot see them)."""
    rel = {k: base.eff[k] / base.eff["conv"] for k in cm.KINDS}
    elem = float(mh._bounded(q[2], 0.002, 1.0))
    rel.update(conv1x1=float(mh._bounded(q[0], 0.2, 2.0)), depthwise=float(mh._bounded(q[1], 0.02, 1.0)),
               elementwise=elem, memory=elem)
    return rel


def coeffs(core_type: str, mhz: float, p, rel: dict, base: cm.CoreCoeffs) -> cm.CoreCoeffs:
    # NOTE: a bound reached through the sigmoid is 1e-14 away from it: round to 6 digits
    eff, overhead, bw, alpha = (round(float(mh._bounded(x, *BOUNDS[k])), 6) for x, k in zip(p, PER_CLUSTER))
    alpha_mem = base.alpha_mem
    alphas = dict(base.alpha, conv=alpha, conv1x1=alpha)
    return cm.CoreCoeffs(core_type, mhz * FLOP_PER_CYCLE[core_type] / 1000.0,
                         bw / float(cm.speedup(4, alpha_mem)), eff={k: eff * r for k, r in rel.items()},
                         overhead_us={k: overhead for k in cm.KINDS}, alpha=alphas, alpha_mem=alpha_mem,
                         shape=dict(base.shape), overlap=base.overlap)


def _log_ratios(table, c: cm.CoreCoeffs, core_type: str, targets: dict) -> np.ndarray:
    out = []
    for threads in (1, 4):
        ms = cm.unit_ms(table, c, threads)
        out += [np.log(ms[i] / targets[(core_type, threads)][n]) for i, n in enumerate(mh.ZOO)]
    return np.array(out)


def fit(table, verbose=True):
    """Nelder-Mead over the shared relative efficiencies and the per-cluster terms at once."""
    base = mh.board_coeffs("hikey970")["A73"]     # the ARM-CL fit's shape, alphas and overlap
    targets = target_ms()

    def unpack(x):
        rel = _shared(x[:N_SHARED], base)
        n = len(PER_CLUSTER)
        return {ct: coeffs(ct, RK3588_MHZ[ct], x[N_SHARED + n * i: N_SHARED + n * (i + 1)], rel, base)
                for i, ct in enumerate(("A55", "A76"))}

    def loss(x):
        per = unpack(x)
        return sum(mh._loss(_log_ratios(table, per[ct], ct, targets)) for ct in per)
    best = None
    rng = np.random.default_rng(17)
    starts = [np.array([0.0, -0.6, -2.0] + [0.0, -2.0, 0.0, -1.0] * 2)]
    starts += [starts[0] + rng.normal(0.0, 1.0, starts[0].shape) for _ in range(11)]
    for start in starts:
        x, v = start, None
        for step in (0.8, 0.3, 0.1):      # restarts of the simplex: Nelder-Mead stalls in 15 dimensions
            x, v = mh.nelder_mead(loss, x, step=step, iters=3000)
        if best is None or v < best[1]:
            best = (x, v)
    if verbose:
        print(f"fit loss {best[1]:.4f}", file=sys.stderr)
    return unpack(best[0])


def at_clock(c: cm.CoreCoeffs, core_type: str, mhz: float, **changes) -> cm.CoreCoeffs:
    """The same core's coefficients at another clock (peak = FLOP/cycle x clock)."""
    d = c.to_dict()
    d.update(core_type=core_type, gflops=mhz * FLOP_PER_CYCLE[core_type] / 1000.0, **changes)
    return cm.CoreCoeffs.from_dict(d)


def cluster(name: str, c: cm.CoreCoeffs, cores: int, mhz: float, bw: float | None = None, block=True) -> dict:
    """A board-file cluster; ``bw`` (GB/s, whole cluster) defaults to the coefficients' per-core
    bandwidth x S(cores, alpha_mem); ``block=False`` leaves the costmodel out (it takes its core
    type's reference)."""
    if bw is None:
        bw = c.bandwidth_gbs * float(cm.speedup(cores, c.alpha_mem))
    out = {"name": name, "core_type": c.core_type, "cores": cores, "freq_mhz": mhz,
           "gflops_per_core": round(mhz * FLOP_PER_CYCLE[c.core_type] / 1000.0, 4), "bandwidth_gbs": round(bw, 3)}
    if block:
        out["costmodel"] = mh.costmodel_block(c)
    return out


def boards(per: dict) -> dict[str, dict]:
    a55, a76 = per["A55"], per["A76"]
    x1 = at_clock(a76, "X1", 2800, eff={k: round(v * 0.8, 6) for k, v in a76.eff.items()})
    pcore = at_clock(a76, "GoldenCove", 4700, eff={k: round(v / a76.eff["conv"] * 0.5, 6) for k, v in a76.eff.items()},
                     overhead_us={k: 10.0 for k in cm.KINDS}, bandwidth_gbs=25.0 / float(cm.speedup(4, a76.alpha_mem)))
    ecore = at_clock(a76, "Gracemont", 3400, eff={k: round(v / a76.eff["conv"] * 0.45, 6) for k, v in a76.eff.items()},
                     overhead_us={k: 10.0 for k in cm.KINDS}, bandwidth_gbs=15.0 / float(cm.speedup(8, a76.alpha_mem)))
    fitted = "fitted to ncnn's published RK3588 per-cluster benchmark (1 and 4 threads); see tools/make_boards.py"
    return {
        "rk3588": {"name": "rk3588", "description": (
            "Rockchip RK3588: 4x Cortex-A55 @ 1.8 GHz + 4x Cortex-A76 @ 2.4 GHz (two cpufreq policies of two, "
            "one cluster here as discovery makes it). Cost coefficients " + fitted + "; interconnect assumed."),
            "interconnect_gbs": ARM_INTERCONNECT_GBS,
            "clusters": [cluster("little", a55, 4, 1800), cluster("big", a76, 4, 2400)]},
        "sd855": {"name": "sd855", "description": (
            "Snapdragon 855-class phone (Kryo 485): 4x silver (A55-class) @ 1.78 GHz, 3x gold @ 2.42 GHz and 1x prime "
            "@ 2.84 GHz, gold and prime one A76-class core type at two clocks. Not fitted: the A55 and A76 of the "
            "RK3588 fit at these clocks (estimate); see tools/make_boards.py and docs/COSTMODEL.md."),
            "interconnect_gbs": ARM_INTERCONNECT_GBS,
            "clusters": [cluster("silver", at_clock(a55, "A55", 1780), 4, 1780),
                         cluster("gold", at_clock(a76, "A76", 2420), 3, 2420, block=False),
                         cluster("prime", at_clock(a76, "A76", 2840), 1, 2840)]},
        "tensor-g1": {"name": "tensor-g1", "description": (
            "A 2+2+4 Tensor-class phone (Google Tensor G1): 2x Cortex-X1 @ 2.80 GHz, 2x Cortex-A76 @ 2.25 GHz, "
            "4x Cortex-A55 @ 1.80 GHz. Not fitted: A55 and A76 from the RK3588 fit, X1 estimated (32 FLOP/cycle, "
            "conv efficiency 0.8 of the A76's); see tools/make_boards.py and docs/COSTMODEL.md."),
            "interconnect_gbs": ARM_INTERCONNECT_GBS,
            "clusters": [cluster("little", a55, 4, 1800), cluster("mid", at_clock(a76, "A76", 2250), 2, 2250),
                         cluster("big", x1, 2, 2800)]},
        "intel-hybrid": {"name": "intel-hybrid", "description": (
            "An Intel hybrid laptop part (Alder Lake-P class, i7-1260P-like): 8 E-cores (Gracemont) @ 3.4 GHz and "
            "4 P-cores (Golden Cove) @ 4.7 GHz; a core is a physical core (SMT threads are not counted). Every cost "
            "figure is an estimate (AVX2 peaks; efficiencies, bandwidths, interconnect); see tools/make_boards.py "
            "and docs/COSTMODEL.md."),
            "interconnect_gbs": 20.0,
            "clusters": [cluster("e-core", ecore, 8, 3400, bw=15.0), cluster("p-core", pcore, 4, 4700, bw=25.0)]},
    }


def print_fit(table, per: dict) -> None:
    targets = target_ms()
    print(f"{'cluster':<12} " + " ".join(f"{n:>20}" for n in mh.ZOO))
    worst = 0.0
    for ct in ("A55", "A76"):
        for threads in (1, 4):
            ms = cm.unit_ms(table, per[ct], threads)
            cells = []
            for i, n in enumerate(mh.ZOO):
                t = targets[(ct, threads)][n]
                worst = max(worst, abs(np.log(ms[i] / t)))
                cells.append(f"{t:6.1f} -> {ms[i]:6.1f} ({ms[i] / t:4.2f})")
            print(f"{ct} x{threads:<8} " + " ".join(f"{c:>20}" for c in cells))
    print(f"ms (ncnn at 224 -> predicted, ratio); worst ratio {np.exp(worst):.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fit and write the board files of today's platforms.")
    ap.add_argument("--check", action="store_true", help="only print the fit of the RK3588 file as it is")
    args = ap.parse_args(argv)
    from tunerd.model.loader import load_model
    table = mh.network_table({n: load_model(f"zoo:{n}", store=False) for n in mh.ZOO})
    if args.check:
        print_fit(table, mh.board_coeffs("rk3588"))
        return 0
    per = fit(table)
    print_fit(table, per)
    for name, data in boards(per).items():
        path = mh.BOARDS_DIR / f"{name}.json"
        path.write_text(mh.dump_board(data))
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
