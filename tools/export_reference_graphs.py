#!/usr/bin/env python3
"""Export torchvision classification CNNs with both PyTorch ONNX exporters, as weightless skeletons.

Run by hand, never in CI: it needs torch and torchvision, which tunerd does not depend on. Install
them into a virtual environment of their own, outside the repository, e.g.

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch torchvision onnx onnxscript
    /work/torchenv/bin/python tools/export_reference_graphs.py            # all models, both exporters
    /work/torchenv/bin/python tools/export_reference_graphs.py -m resnet18 --exporter dynamo

Each model (random weights, eval mode, input 1x3x224x224) is exported twice:
- ``torchscript``: ``torch.onnx.export(..., dynamo=False, opset_version=17)`` with dynamic batch,
  height and width (``dynamic_axes``), as the tutorials of the last years taught;
- ``dynamo``: ``torch.onnx.export(..., dynamo=True, opset_version=18)``, today's default, with dynamic
  batch, height and width (``dynamic_shapes``) where torch.export can prove the model shape-generic,
  else static at STATIC_SIZE (the tests run a static graph at its own size, so a small one).

and written to tests/data/reference_graphs/NAME.EXPORTER.onnx.gz (gzip) as a *skeleton*: every floating-point
initializer of more than STRIP_ELEMENTS elements keeps its name, dtype and dims but loses its data and
is marked with ``doc_string = "tunerd:stripped"``; doc strings, value_info and metadata go too. The
tests (tests/reference_graphs.py) fill the stripped tensors with seeded random values again. A
summary (file sizes, node counts, op types) is printed, and written as JSON with ``--summary``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tests" / "data" / "reference_graphs"
STRIPPED = "tunerd:stripped"
STRIP_ELEMENTS = 64
STATIC_SIZE = 64

# name -> torchvision builder name; covers the op families of issue 16 (depthwise, SE, hard-swish,
# channel shuffle, grouped convs, dense concatenation, inception branches, LayerNorm + MatMul + GELU)
MODELS = {
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "efficientnet_b0": "efficientnet_b0",
    "shufflenet_v2": "shufflenet_v2_x0_5",
    "mnasnet": "mnasnet0_5",
    "regnet_y_400mf": "regnet_y_400mf",
    "resnet18": "resnet18",
    "resnext50": "resnext50_32x4d",
    "densenet121": "densenet121",
    "googlenet": "googlenet",
    "squeezenet": "squeezenet1_1",
    "convnext_tiny": "convnext_tiny",
}
EXPORTERS = ("torchscript", "dynamo")


def build(name: str):
    import torch
    import torchvision
    torch.manual_seed(0)
    kwargs = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=False)
    return getattr(torchvision.models, MODELS[name])(**kwargs).eval()


def export(model, exporter: str, path: Path) -> str:
    """Write the raw export to ``path``; returns how its input dims came out."""
    import torch
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch_size", 2: "height", 3: "width"},
                                            "logits": {0: "batch_size"}})
            return "dynamic batch, height, width"
        from torch.export import Dim
        dims = {"x": {0: Dim("batch", max=64), 2: Dim("height", min=32, max=1024),
                      3: Dim("width", min=32, max=1024)}}
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, dynamic_shapes=dims)
            how = "dynamic batch, height, width"
        except Exception as err:  # noqa: BLE001 - torch.export raises many kinds; fall back to static
            print(f"  dynamo with dynamic shapes failed ({type(err).__name__}); static {STATIC_SIZE}",
                  file=sys.stderr)
            small = torch.randn(1, 3, STATIC_SIZE, STATIC_SIZE)
            program = torch.onnx.export(model, (small,), dynamo=True, opset_version=18)
            how = f"static 1x3x{STATIC_SIZE}x{STATIC_SIZE}"
        program.save(str(path))
        return how


def skeleton(path: Path) -> dict:
    """Strip ``path`` in place to its skeleton; returns what it holds."""
    import onnx
    model = onnx.load(str(path), load_external_data=True)
    g = model.graph
    stripped = 0
    for t in g.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16) \
                and n > STRIP_ELEMENTS:
            for field in ("float_data", "double_data", "int32_data", "raw_data", "external_data"):
                t.ClearField(field)
            t.data_location = onnx.TensorProto.DEFAULT
            t.doc_string = STRIPPED
            stripped += 1
    del g.value_info[:]
    del model.metadata_props[:]
    g.doc_string = model.doc_string = ""
    for node in g.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()
    path.unlink()
    gz = path.with_name(path.name + ".gz")
    # NOTE: mtime 0, so an unchanged export is a byte-identical file
    with gzip.GzipFile(gz, "wb", compresslevel=9, mtime=0) as f:
        f.write(model.SerializeToString())
    return {"bytes": gz.stat().st_size, "nodes": len(g.node), "stripped": stripped,
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "ops": sorted({n.op_type for n in g.node})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", action="append", choices=sorted(MODELS), help="only these (repeatable)")
    p.add_argument("--exporter", action="append", choices=EXPORTERS, help="only these (repeatable)")
    p.add_argument("-o", "--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary, failed = {}, []
    for name in args.model or MODELS:
        net = build(name)
        for exporter in args.exporter or EXPORTERS:
            path = args.out_dir / f"{name}.{exporter}.onnx"
            print(f"{name} ({exporter}) ...", file=sys.stderr, flush=True)
            try:
                how = export(net, exporter, path)
            except Exception as err:  # noqa: BLE001 - report and go on with the next model
                print(f"  FAILED: {type(err).__name__}: {str(err)[:300]}", file=sys.stderr)
                failed.append(f"{name}.{exporter}")
                continue
            info = skeleton(path)
            info["input"] = how
            summary[path.name + ".gz"] = info
            print(f"  {info['bytes'] / 1024:.0f} KiB, {info['nodes']} nodes, opset {info['opset']}, {how}",
                  file=sys.stderr)
    total = sum(v["bytes"] for v in summary.values())
    print(f"{len(summary)} files, {total / 1024:.0f} KiB in all; failed: {failed or 'none'}", file=sys.stderr)
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
