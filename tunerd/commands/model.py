"""`tunerd model inspect|export`: look at a model's units, or write it as ONNX."""
from __future__ import annotations

import json

from ..model.loader import load_model


def register(sub) -> None:
    p = sub.add_parser("model", help="inspect a model's units or export it to ONNX",
                       description="Inspect a model's units (cut points, FLOPs, bytes) or export it to ONNX.")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    ins = msub.add_parser("inspect", help="table of units: nodes, FLOPs, weight bytes, bytes crossing each cut")
    ins.add_argument("source", metavar="SRC", help="zoo:NAME or a path to an .onnx file")
    ins.add_argument("--input-size", type=int, metavar="N", help="input height = width (default: the model's)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=run_inspect)

    exp = msub.add_parser("export", help="write the loaded (optimised) model as ONNX (opset 13, or the source's if newer)")
    exp.add_argument("source", metavar="SRC", help="zoo:NAME or a path to an .onnx file")
    exp.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="where to write the model")
    exp.add_argument("--input-size", type=int, metavar="N", help="input height = width (default: the model's)")
    exp.set_defaults(func=run_export)


def ort_only(model) -> list[str]:
    """Names of the nodes only the onnxruntime backend runs (no numpy kernel for them)."""
    from ..model.ops import numpy_reason
    return [n.name for n in model.graph.nodes if numpy_reason(n, model.graph.weights) is not None]


def inspect_dict(model) -> dict:
    only = set(ort_only(model))
    units = []
    for u in model.units:
        d = u.to_dict()
        d["onnxruntime_only"] = [n for n in u.nodes if n in only]
        units.append(d)
    return {"model": model.name, "source": model.source, "hash": model.hash,
            "input_shape": list(model.input_shape), "output_shape": list(model.output_shape),
            "nodes": len(model.graph.nodes), "flops": model.flops, "weight_bytes": model.weight_bytes,
            "onnxruntime_only": [n.name for n in model.graph.nodes if n.name in only], "units": units}


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}P{unit}"


def run_inspect(args) -> int:
    model = load_model(args.source, input_size=args.input_size)
    info = inspect_dict(model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{model.name}  input {model.input_shape}  {len(model.graph.nodes)} nodes  {len(model.units)} units  "
          f"{_human(model.flops, 'FLOP')}  weights {_human(model.weight_bytes, 'B')}  hash {model.hash[:12]}")
    rows = [("unit", "first node", "last node", "nodes", "FLOPs", "weights", "out bytes", "ort")]
    for u in info["units"]:
        rows.append((str(u["index"]), u["first_node"], u["last_node"], str(len(u["nodes"])), _human(u["flops"]),
                     _human(u["weight_bytes"], "B"), _human(u["out_bytes"], "B"),
                     "*" if u["onnxruntime_only"] else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(w) if i in (0, 3, 4, 5, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if info["onnxruntime_only"]:
        ops = {n.name: n.op for n in model.graph.nodes}
        print(f"* units with nodes only the onnxruntime backend runs (no numpy kernel): "
              f"{', '.join(f'{n} ({ops[n]})' for n in info['onnxruntime_only'])}")
    return 0


def run_export(args) -> int:
    from ..model.onnx_io import export_onnx
    model = load_model(args.source, input_size=args.input_size)
    proto = export_onnx(model.graph, args.output)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    print(f"wrote {args.output} ({model.name}, input {list(model.input_shape)}, opset {opset})")
    return 0
