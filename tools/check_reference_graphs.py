#!/usr/bin/env python3
"""Load every model of the real-export set (tests/data/reference_graphs) and compare with onnxruntime.

    .venv/bin/python tools/check_reference_graphs.py [--size 32] [--json]

For each skeleton (seeded random weights, as the tests fill them): whether it loads, its node and
unit counts, and (without --load-only) the whole model's relative error (max |ours - ort| / max |ort|) against
onnxruntime on the original file, on the onnxruntime backend and on the numpy backend (or why the
numpy backend refuses it). Graphs with symbolic height and width run at --size, static ones at their
own size. The figures go to docs/BENCHMARKS.md ("Real exports").
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import reference_graphs as R  # noqa: E402


def check(name: str, size: int, tmp: Path, load_only: bool = False) -> dict:
    from tunerd.errors import TunerdError
    from tunerd.model.loader import load_model
    path = R.materialise(name, tmp)
    row = {"model": name}
    try:
        sess = R.ort_session(path)
        static = all(isinstance(d, int) for d in sess.get_inputs()[0].shape[2:])
        row["input"] = "static" if static else f"symbolic H, W at {size}"
        try:
            model = load_model(path, input_size=None if static else size, store=False)
        except TunerdError as err:
            row["load"] = f"fails: {err}"
            return row
        if load_only:
            row["load"] = "ok"
            return row
        from tunerd.backends import get_backend
        row.update(load="ok", nodes=len(model.graph.nodes), units=len(model.units),
                   ort_only=sum(1 for n in model.graph.nodes if not _numpy_runs(n, model)))
        x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)
        for backend in ("onnxruntime", "numpy"):
            try:
                get_backend(backend).check(model)
                out = model.use_backend(get_backend(backend)).run(x)
                row[backend] = float(np.abs(out - ref).max() / np.abs(ref).max())
            except TunerdError as err:
                row[backend] = f"refused: {err}"
        return row
    finally:
        path.unlink(missing_ok=True)


def _numpy_runs(node, model) -> bool:
    from tunerd.model.ops import numpy_reason
    return numpy_reason(node, model.graph.weights) is None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32, help="input H = W for graphs with symbolic H, W (default 32)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--load-only", action="store_true",
                   help="only whether each loads (runs on older tunerd too: PYTHONPATH at an older tree)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [check(name, args.size, Path(tmp), args.load_only) for name in R.names()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0

    def fmt(v):
        return f"{v:.1e}" if isinstance(v, float) else str(v)[:60]
    print(f"{'model':34s} {'input':22s} {'nodes':>5s} {'units':>5s}  {'onnxruntime':>11s}  numpy")
    for r in rows:
        if r.get("load") != "ok" or args.load_only:
            print(f"{r['model']:34s} {r.get('input', ''):22s} {fmt(r.get('load'))}")
            continue
        print(f"{r['model']:34s} {r['input']:22s} {r['nodes']:5d} {r['units']:5d}  {fmt(r['onnxruntime']):>11s}  "
              f"{fmt(r['numpy'])}")
    loads = sum(r.get("load") == "ok" for r in rows)
    if args.load_only:
        print(f"{loads} of {len(rows)} load")
        return 0
    ort_ok = sum(isinstance(r.get("onnxruntime"), float) and r["onnxruntime"] <= 1e-5 for r in rows)
    np_ok = sum(isinstance(r.get("numpy"), float) and r["numpy"] <= 1e-4 for r in rows)
    print(f"{loads} of {len(rows)} load; onnxruntime backend within 1e-5: {ort_ok}; numpy backend within 1e-4: {np_ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
